//! The audit trail: one record per accepted refresh or batch.

use crate::{auth::Authenticated, state::AppState};
use bson::{DateTime, oid::ObjectId};
use refresh_shared::{Category, store::AuditEvent};
use std::net::SocketAddr;

/// What was accepted, for whom.
pub struct Accepted<'a> {
    pub action: &'static str,
    pub caller: &'a Authenticated,
    pub client: SocketAddr,
    pub device: Option<ObjectId>,
    pub devices: Option<u64>,
    pub categories: &'a [Category],
    pub result: &'static str,
    pub answer: ObjectId,
}

/// Writes the audit record. The request has already succeeded, so a failed write does not fail
/// it: the record goes to the error log in full instead, where it is not lost.
pub async fn record(state: &AppState, accepted: Accepted<'_>) {
    let event = AuditEvent {
        id: ObjectId::new(),
        at: DateTime::now(),
        action: accepted.action.to_owned(),
        organization: accepted.caller.organization,
        token: accepted.caller.token_id,
        device: accepted.device,
        devices: accepted.devices,
        categories: accepted.categories.to_vec(),
        client_addr: accepted.client.to_string(),
        result: accepted.result.to_owned(),
        answer: accepted.answer,
    };
    if let Err(error) = state.store.audit(&event).await {
        tracing::error!(%error, event = ?event, "audit record not stored");
    }
}
