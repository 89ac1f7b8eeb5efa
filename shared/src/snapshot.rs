//! A value read from a dependency at most once per `max_age`, however many callers ask: the
//! probes and `/metrics` are unauthenticated, and each read costs the broker a channel and a
//! dozen queue declares, or the database a ping. Callers arriving during a read wait for it and
//! share its result.

use std::{
    future::Future,
    time::{Duration, Instant},
};
use tokio::sync::Mutex;

pub struct Snapshot<T> {
    max_age: Duration,
    taken: Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Snapshot<T> {
    pub fn new(max_age: Duration) -> Snapshot<T> {
        Snapshot {
            max_age,
            taken: Mutex::new(None),
        }
    }

    /// The last value if it is younger than `max_age`, else what `read` returns now.
    pub async fn get<Fut: Future<Output = T>>(&self, read: impl FnOnce() -> Fut) -> T {
        let mut taken = self.taken.lock().await;
        if let Some((at, value)) = taken.as_ref()
            && at.elapsed() < self.max_age
        {
            return value.clone();
        }
        let value = read().await;
        *taken = Some((Instant::now(), value.clone()));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_read_until_it_is_too_old() {
        let snapshot = Snapshot::new(Duration::from_millis(200));
        let reads = AtomicUsize::new(0);
        let read = || async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            reads.fetch_add(1, Ordering::SeqCst)
        };
        let seen = futures::future::join_all((0..100).map(|_| snapshot.get(read))).await;
        assert!(seen.iter().all(|&value| value == 0), "{seen:?}");
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(snapshot.get(read).await, 1, "read again once too old");
    }
}
