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
    pub action: AuditAction,
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
    pub result: AuditResult,
    /// The job or batch the caller was given (none: every category was fresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<ObjectId>,
}

/// What was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// One device.
    Refresh,
    /// A batch.
    BulkRefresh,
}

/// What the caller got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditResult {
    /// A new job or batch.
    Accepted,
    /// Another job's id: it already had every category asked for.
    Coalesced,
    /// The answer an earlier request with the same `Idempotency-Key` got.
    Replayed,
    /// No job: the device had reported every category asked for within `maxAgeSecs`.
    Fresh,
}

impl Store {
    /// Stores `events` in one write.
    pub async fn audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        self.audit_events.insert_many(events).await?;
        Ok(())
    }
}
