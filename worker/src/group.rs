//! Group commit: many deliveries' writes made as one.
//!
//! Each caller hands in one item and waits for its own result; a gatherer task takes what has
//! gathered and hands it to `flush` as one group. A group closes when it is full (`max_items`
//! or `max_weight`) or when a flush slot is free and no more items are at hand: under load,
//! items gather while the slots are busy, so groups grow with the load; on a quiet system an
//! item is flushed at once, never held back waiting for company. Nothing is acknowledged
//! before its group's flush returned: callers answer their deliveries only after that.

use futures::{FutureExt, future::BoxFuture};
use refresh_shared::store::{Store, StoreError};
use std::sync::Arc;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Hands items to the gatherer; cloned by every caller.
pub struct GroupCommit<I, O> {
    items: mpsc::Sender<Pending<I, O>>,
}

struct Pending<I, O> {
    item: I,
    weight: usize,
    answer: oneshot::Sender<O>,
}

/// How groups are formed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most items in one group.
    pub max_items: usize,
    /// Most total weight in one group (say, bytes); an item heavier on its own goes alone.
    pub max_weight: usize,
    /// Groups flushed at once.
    pub flushes: usize,
}

/// Writes a group; answers one output per item, in the items' order.
pub type Flush<I, O> = Arc<dyn Fn(Vec<I>) -> BoxFuture<'static, Vec<O>> + Send + Sync>;

/// One store call writing a whole group: an answer per item, or an error of the call as a
/// whole.
pub type StoreWrite<I, T> =
    fn(Store, Vec<I>) -> BoxFuture<'static, Result<Vec<Result<T, StoreError>>, StoreError>>;

/// Why an item got no result.
#[derive(Debug, thiserror::Error)]
#[error("the group commit stopped")]
pub struct Stopped;

impl From<Stopped> for StoreError {
    /// Only a bug stops a group (its write panicked): a refusal, not an outage to wait out.
    fn from(stopped: Stopped) -> StoreError {
        StoreError::Refused {
            code: 0,
            message: stopped.to_string(),
        }
    }
}

impl<I: Send + 'static, O: Send + 'static> GroupCommit<I, O> {
    /// Starts the gatherer; it ends when every handle is dropped.
    pub fn start(limits: Limits, flush: Flush<I, O>) -> GroupCommit<I, O> {
        let (items, waiting) = mpsc::channel(limits.max_items.max(1));
        tokio::spawn(gather(waiting, limits, flush));
        GroupCommit { items }
    }

    /// Writes `item` with whatever else is being written now; `weight` counts towards the
    /// group's `max_weight`.
    pub async fn submit(&self, item: I, weight: usize) -> Result<O, Stopped> {
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            item,
            weight,
            answer,
        };
        self.items.send(pending).await.map_err(|_| Stopped)?;
        answered.await.map_err(|_| Stopped)
    }
}

impl<I: Send + 'static, T: Send + 'static> GroupCommit<I, Result<T, StoreError>> {
    /// Starts a group commit whose groups are each written by one `write` of `store`; an error
    /// of that write as a whole is every item's answer.
    pub fn of_store(limits: Limits, store: Store, write: StoreWrite<I, T>) -> Self {
        let flush: Flush<I, Result<T, StoreError>> = Arc::new(move |items: Vec<I>| {
            let count = items.len();
            write(store.clone(), items)
                .map(move |written| {
                    written.unwrap_or_else(|error| (0..count).map(|_| Err(error.clone())).collect())
                })
                .boxed()
        });
        GroupCommit::start(limits, flush)
    }
}

async fn gather<I: Send + 'static, O: Send + 'static>(
    mut waiting: mpsc::Receiver<Pending<I, O>>,
    limits: Limits,
    flush: Flush<I, O>,
) {
    let slots = Arc::new(Semaphore::new(limits.flushes.max(1)));
    // An item that did not fit the last group opens the next one.
    let mut carried: Option<Pending<I, O>> = None;
    loop {
        let first = match carried.take() {
            Some(first) => first,
            None => match waiting.recv().await {
                Some(first) => first,
                None => return,
            },
        };
        let mut weight = first.weight;
        let mut group = vec![first];
        let full = |group: &Vec<Pending<I, O>>, weight: usize| {
            group.len() >= limits.max_items || weight >= limits.max_weight
        };
        // Gather while every slot is busy, then take what is at hand without waiting.
        let slot = loop {
            if full(&group, weight) {
                break None;
            }
            tokio::select! {
                biased;
                slot = Arc::clone(&slots).acquire_owned() => break Some(slot),
                next = waiting.recv() => match next {
                    Some(next) if weight + next.weight > limits.max_weight => {
                        carried = Some(next);
                        break None;
                    }
                    Some(next) => {
                        weight += next.weight;
                        group.push(next);
                    }
                    None => break None,
                },
            }
        };
        while carried.is_none() && !full(&group, weight) {
            match waiting.try_recv() {
                Ok(next) if weight + next.weight > limits.max_weight => carried = Some(next),
                Ok(next) => {
                    weight += next.weight;
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        let slot = match slot {
            Some(slot) => slot,
            None => Arc::clone(&slots).acquire_owned().await,
        };
        // The semaphore is never closed.
        let Ok(slot) = slot else { return };
        let flush = Arc::clone(&flush);
        tokio::spawn(async move {
            let (items, answers): (Vec<I>, Vec<oneshot::Sender<O>>) = group
                .into_iter()
                .map(|pending| (pending.item, pending.answer))
                .unzip();
            let outputs = flush(items).await;
            // A caller that stopped waiting (its delivery dropped at shutdown) misses nothing:
            // its delivery was not answered and comes back.
            for (answer, output) in answers.into_iter().zip(outputs) {
                let _ = answer.send(output);
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{FutureExt, future::join_all};
    use std::sync::Mutex;

    fn recording(sizes: Arc<Mutex<Vec<usize>>>) -> Flush<u32, u32> {
        Arc::new(move |items: Vec<u32>| {
            let sizes = Arc::clone(&sizes);
            async move {
                sizes.lock().unwrap().push(items.len());
                tokio::task::yield_now().await;
                items.into_iter().map(|item| item * 10).collect()
            }
            .boxed()
        })
    }

    #[tokio::test]
    async fn every_item_gets_its_own_answer_and_groups_respect_their_limits() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let limits = Limits {
            max_items: 8,
            max_weight: 100,
            flushes: 1,
        };
        let group = Arc::new(GroupCommit::start(limits, recording(Arc::clone(&sizes))));
        let answers = join_all((0..100u32).map(|item| {
            let group = Arc::clone(&group);
            async move { group.submit(item, 1).await.unwrap() }
        }))
        .await;
        assert_eq!(
            answers,
            (0..100u32).map(|item| item * 10).collect::<Vec<_>>()
        );
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 100);
        assert!(sizes.iter().all(|&size| size <= 8), "{sizes:?}");
        // With one flush slot and 100 callers at once, items gathered behind the first flush.
        assert!(sizes.iter().any(|&size| size > 1), "{sizes:?}");
    }

    #[tokio::test]
    async fn a_heavy_item_goes_alone_and_a_quiet_item_is_not_held_back() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let limits = Limits {
            max_items: 8,
            max_weight: 10,
            flushes: 1,
        };
        let group = Arc::new(GroupCommit::start(limits, recording(Arc::clone(&sizes))));
        // Alone, an item is flushed as soon as it is handed in.
        assert_eq!(group.submit(1, 1).await.unwrap(), 10);
        let answers = join_all([(2, 6), (3, 6), (4, 50), (5, 1)].map(|(item, weight)| {
            let group = Arc::clone(&group);
            async move { group.submit(item, weight).await.unwrap() }
        }))
        .await;
        assert_eq!(answers, [20, 30, 40, 50]);
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes[0], 1);
        assert_eq!(sizes.iter().sum::<usize>(), 5);
        // 6 + 6 > 10 and 50 > 10: no group holds more than its weight, except an item alone.
        assert!(sizes.len() >= 4, "{sizes:?}");
    }
}
