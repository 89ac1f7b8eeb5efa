//! The audit trail: one record per accepted refresh or batch.
//!
//! Records are written off the request path: a request hands its record to [`AuditLog`] and
//! answers; one task stores whatever has queued up in a single write. Under load that is one
//! insert per few hundred requests instead of one each. On shutdown the queue is written out
//! before the api exits; a record that cannot be stored goes to the error log in full.

use crate::{auth::Authenticated, state::AppState};
use bson::{DateTime, oid::ObjectId};
use refresh_shared::{
    Category,
    store::{AuditAction, AuditEvent, AuditResult, Store},
};
use std::net::SocketAddr;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// Records waiting to be written; a request waits for room rather than drop its record.
const QUEUE: usize = 10_000;
/// Records per write.
const BATCH: usize = 500;

/// What was accepted, for whom.
pub struct Accepted<'a> {
    pub action: AuditAction,
    pub caller: &'a Authenticated,
    pub client: SocketAddr,
    pub device: Option<ObjectId>,
    pub devices: Option<u64>,
    pub categories: &'a [Category],
    pub result: AuditResult,
    pub answer: Option<ObjectId>,
}

pub struct AuditLog {
    queue: mpsc::Sender<AuditEvent>,
}

/// The task that writes the queued records; [`AuditWriter::finish`] writes out the rest.
pub struct AuditWriter {
    closing: CancellationToken,
    task: JoinHandle<()>,
}

impl AuditLog {
    pub fn start(store: Store) -> (AuditLog, AuditWriter) {
        let (queue, queued) = mpsc::channel(QUEUE);
        let closing = CancellationToken::new();
        let task = tokio::spawn(write_batches(store, queued, closing.clone()));
        (AuditLog { queue }, AuditWriter { closing, task })
    }
}

impl AuditWriter {
    /// Stops taking records and waits until the queued ones are written.
    pub async fn finish(self) {
        self.closing.cancel();
        let _ = self.task.await;
    }
}

/// Queues the audit record. The request has already succeeded, so nothing here fails it.
pub async fn record(state: &AppState, accepted: Accepted<'_>) {
    let event = AuditEvent {
        id: ObjectId::new(),
        at: DateTime::now(),
        action: accepted.action,
        organization: accepted.caller.organization,
        token: accepted.caller.token_id,
        device: accepted.device,
        devices: accepted.devices,
        categories: accepted.categories.to_vec(),
        client_addr: accepted.client.to_string(),
        result: accepted.result,
        answer: accepted.answer,
    };
    if let Err(refused) = state.audit.queue.send(event).await {
        tracing::error!(event = ?refused.0, "audit record not stored: the api is shutting down");
    }
}

async fn write_batches(
    store: Store,
    mut queued: mpsc::Receiver<AuditEvent>,
    closing: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let received = tokio::select! {
            received = queued.recv_many(&mut batch, BATCH) => received,
            () = closing.cancelled() => {
                // Take no more; what is queued is still written below.
                queued.close();
                queued.recv_many(&mut batch, BATCH).await
            }
        };
        if received == 0 {
            return;
        }
        if let Err(error) = store.audit(&batch).await {
            for event in &batch {
                tracing::error!(%error, ?event, "audit record not stored");
            }
        }
        batch.clear();
    }
}
