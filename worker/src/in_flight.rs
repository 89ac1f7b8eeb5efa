//! The jobs this process is working on, one delivery at a time per job.
//!
//! When a channel is lost, the deliveries in flight on it keep running (their pushes and
//! write-backs still count) while the broker hands the same messages out again. A copy that
//! reaches this process waits here for the first to finish, then finds those categories settled:
//! a copy elsewhere waits by reading the job until they leave `pushing` (see
//! `Dispatcher::process`), which within one process this lock makes unnecessary.

use bson::oid::ObjectId;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub struct InFlight {
    jobs: Mutex<HashMap<ObjectId, Arc<AsyncMutex<()>>>>,
}

/// This delivery's turn at a job, until dropped.
pub struct JobTurn<'a> {
    in_flight: &'a InFlight,
    job: ObjectId,
    turn: Option<OwnedMutexGuard<()>>,
}

impl InFlight {
    /// Waits until no other delivery of `job` is being worked on in this process.
    pub async fn turn(&self, job: ObjectId) -> JobTurn<'_> {
        let lock = Arc::clone(self.lock().entry(job).or_default());
        let turn = lock.lock_owned().await;
        JobTurn {
            in_flight: self,
            job,
            turn: Some(turn),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Arc<AsyncMutex<()>>>> {
        // Nothing is left half-updated by a panic while this is held: keep using it.
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for JobTurn<'_> {
    fn drop(&mut self) {
        drop(self.turn.take());
        let mut jobs = self.in_flight.lock();
        // Only the map holds the lock now: no delivery of this job has it or waits for it.
        if jobs
            .get(&self.job)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            jobs.remove(&self.job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_delivery_of_a_job_waits_for_the_first_and_others_do_not() {
        let in_flight = InFlight::default();
        let (job, other) = (ObjectId::new(), ObjectId::new());
        let first = in_flight.turn(job).await;
        let unrelated = tokio::time::timeout(Duration::from_secs(1), in_flight.turn(other))
            .await
            .expect("another job is not held back");
        let waiting = tokio::time::timeout(Duration::from_millis(100), in_flight.turn(job)).await;
        assert!(waiting.is_err(), "the copy waits while the first runs");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), in_flight.turn(job))
            .await
            .expect("the copy runs once the first is done");
        drop(second);
        drop(unrelated);
        assert_eq!(in_flight.len(), 0, "finished jobs are forgotten");
    }
}
