//! `audit_events`: who asked for what refresh, from where, and what they got.

use super::{Store, StoreError};
use crate::Category;
use bson::{DateTime, oid::ObjectId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub at: DateTime,
    /// `refresh` (one device) or `bulk_refresh` (a batch).
    pub action: String,
    pub organization: ObjectId,
    pub token: ObjectId,
    /// The device refreshed (single requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<ObjectId>,
    /// How many devices a batch named or matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<u64>,
    pub categories: Vec<Category>,
    /// The TCP peer of the request (a proxy in front shows up as itself).
    pub client_addr: String,
    /// `accepted`, `coalesced` (answered with another job) or `replayed` (Idempotency-Key).
    pub result: String,
    /// The job or batch the caller was given.
    pub answer: ObjectId,
}

impl Store {
    /// Stores `events` in one write.
    pub async fn audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        self.audit_events.insert_many(events).await?;
        Ok(())
    }
}
