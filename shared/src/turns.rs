//! One task at a time per job (or batch) in this process: turns taken by id, each waited for
//! until the one before is done, and forgotten when nobody holds or waits for them.
//!
//! The worker takes one per job delivery: when a channel is lost, the deliveries in flight on
//! it keep running (their pushes and write-backs still count) while the broker hands the same
//! messages out again; a copy that reaches this process waits for the first to finish, then
//! finds those categories settled (a copy elsewhere waits by reading the job until they leave
//! `pushing`, see the worker's `Dispatcher::process`). Announcing an event takes one on the job
//! or batch, so two tasks that end it at once announce it once.

use bson::oid::ObjectId;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub struct Turns {
    ids: Mutex<HashMap<ObjectId, Arc<AsyncMutex<()>>>>,
}

/// A turn at an id, until dropped.
pub struct Turn<'a> {
    turns: &'a Turns,
    id: ObjectId,
    turn: Option<OwnedMutexGuard<()>>,
}

impl Turns {
    /// Waits until nothing else in this process has a turn at `id`.
    pub async fn turn(&self, id: ObjectId) -> Turn<'_> {
        let lock = Arc::clone(self.lock().entry(id).or_default());
        let turn = lock.lock_owned().await;
        Turn {
            turns: self,
            id,
            turn: Some(turn),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Arc<AsyncMutex<()>>>> {
        // Nothing is left half-updated by a panic while this is held: keep using it.
        self.ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.turn.take());
        let mut ids = self.turns.lock();
        // Only the map holds the lock now: nobody has a turn at this id or waits for one.
        if ids
            .get(&self.id)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            ids.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_delivery_of_a_job_waits_for_the_first_and_others_do_not() {
        let turns = Turns::default();
        let (job, other) = (ObjectId::new(), ObjectId::new());
        let first = turns.turn(job).await;
        let unrelated = tokio::time::timeout(Duration::from_secs(1), turns.turn(other))
            .await
            .expect("another job is not held back");
        let waiting = tokio::time::timeout(Duration::from_millis(100), turns.turn(job)).await;
        assert!(waiting.is_err(), "the copy waits while the first runs");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), turns.turn(job))
            .await
            .expect("the copy runs once the first is done");
        drop(second);
        drop(unrelated);
        assert_eq!(turns.len(), 0, "finished jobs are forgotten");
    }
}
