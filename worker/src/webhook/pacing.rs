//! Per-endpoint pacing: at most so many attempts to one endpoint at once in this worker, so
//! that a receiver that is slow, or never answers, holds a bounded share of the delivery
//! slots and every other endpoint's deliveries go on.

use bson::oid::ObjectId;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Endpoints remembered before those with nothing in flight are forgotten.
const REMEMBERED: usize = 4_096;

pub struct EndpointPacing {
    per_endpoint: usize,
    endpoints: Mutex<HashMap<ObjectId, Arc<Semaphore>>>,
}

impl EndpointPacing {
    pub fn new(per_endpoint: usize) -> EndpointPacing {
        EndpointPacing {
            per_endpoint,
            endpoints: Mutex::default(),
        }
    }

    /// A turn to call `endpoint`, waited for at most `wait`; none when its attempts in flight
    /// stayed at the limit that long.
    pub async fn turn(&self, endpoint: ObjectId, wait: Duration) -> Option<OwnedSemaphorePermit> {
        let semaphore = self.semaphore(endpoint);
        tokio::time::timeout(wait, semaphore.acquire_owned())
            .await
            .ok()?
            .ok()
    }

    fn semaphore(&self, endpoint: ObjectId) -> Arc<Semaphore> {
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if endpoints.len() >= REMEMBERED && !endpoints.contains_key(&endpoint) {
            let idle = self.per_endpoint;
            endpoints.retain(|_, semaphore| semaphore.available_permits() < idle);
        }
        let semaphore = endpoints
            .entry(endpoint)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_endpoint)));
        Arc::clone(semaphore)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_endpoint_gives_no_turn_while_another_gets_one() {
        let pacing = EndpointPacing::new(2);
        let (busy, free) = (ObjectId::new(), ObjectId::new());
        let wait = Duration::from_millis(20);
        let first = pacing.turn(busy, wait).await;
        let second = pacing.turn(busy, wait).await;
        assert!(first.is_some() && second.is_some());
        assert!(pacing.turn(busy, wait).await.is_none(), "a third at once");
        assert!(pacing.turn(free, wait).await.is_some());
        drop(first);
        assert!(
            pacing.turn(busy, wait).await.is_some(),
            "freed by the first"
        );
    }
}
