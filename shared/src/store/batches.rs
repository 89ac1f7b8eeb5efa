//! `refresh_batches`: one document per bulk refresh, with the expansion's checkpoint and counts.

use super::{Store, StoreError, rfc3339, tenant};
use crate::{
    Category,
    batch::{DeviceFilter, DeviceOutcome, Skip},
};
use bson::{DateTime, doc, oid::ObjectId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRecord {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub organization: ObjectId,
    /// The token that submitted it.
    pub token: ObjectId,
    pub categories: Vec<Category>,
    /// The devices named, de-duplicated, in the order given (absent for a filter batch, and in
    /// reads that leave the list out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<DeviceFilter>,
    /// Devices the batch covers: the ids named, or the filter's matches (counted at submission,
    /// set to what the expansion found once it is done).
    pub total: u64,
    pub created_at: DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime>,
    /// Set when the batch could not be queued for expansion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    #[serde(default)]
    pub expansion: Expansion,
    /// Devices that got a job.
    #[serde(default)]
    pub accepted: u64,
    #[serde(default)]
    pub skipped: Skipped,
    /// The outcome counts, frozen once the batch finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<BTreeMap<DeviceOutcome, u64>>,
}

/// Where the expansion is: everything before the checkpoint has its jobs recorded and published.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Expansion {
    /// Chunks done; each checkpoint requires the previous count, so two expanders of one batch
    /// can never both record a chunk.
    pub chunks: u64,
    /// Next index into `deviceIds`.
    pub next_index: u64,
    /// Last device id handed out (filter batches walk devices in id order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<ObjectId>,
    pub done: bool,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    pub not_found: u64,
    pub not_active: u64,
    pub coalesced: u64,
}

impl Skipped {
    pub fn add(&mut self, skip: Skip) {
        match skip {
            Skip::NotFound => self.not_found += 1,
            Skip::NotActive => self.not_active += 1,
            Skip::Coalesced => self.coalesced += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.not_found + self.not_active + self.coalesced
    }
}

/// What one expanded chunk adds to the batch.
#[derive(Debug, Default)]
pub struct ChunkProgress {
    pub accepted: u64,
    pub skipped: Skipped,
    pub next_index: u64,
    pub after: Option<ObjectId>,
}

impl BatchRecord {
    pub fn new(
        organization: ObjectId,
        token: ObjectId,
        categories: Vec<Category>,
        device_ids: Option<Vec<String>>,
        filter: Option<DeviceFilter>,
        total: u64,
    ) -> BatchRecord {
        BatchRecord {
            id: ObjectId::new(),
            organization,
            token,
            categories,
            device_ids,
            filter,
            total,
            created_at: DateTime::now(),
            started_at: None,
            finished_at: None,
            failure: None,
            expansion: Expansion::default(),
            accepted: 0,
            skipped: Skipped::default(),
            outcomes: None,
        }
    }
}

impl Store {
    pub async fn insert_batch(&self, batch: &BatchRecord) -> Result<(), StoreError> {
        self.batches.insert_one(batch).await?;
        Ok(())
    }

    /// The whole batch, device list included: for its expander.
    pub async fn batch_by_id(&self, id: ObjectId) -> Result<Option<BatchRecord>, StoreError> {
        Ok(self.batches.find_one(doc! { "_id": id }).await?)
    }

    /// A batch of `organization` without its device list: for the status call.
    pub async fn batch(
        &self,
        organization: ObjectId,
        id: ObjectId,
    ) -> Result<Option<BatchRecord>, StoreError> {
        Ok(self
            .batches
            .find_one(tenant(organization, doc! { "_id": id }))
            .projection(doc! { "deviceIds": 0 })
            .await?)
    }

    pub async fn fail_batch(&self, id: ObjectId, reason: &str) -> Result<(), StoreError> {
        self.batches
            .update_one(doc! { "_id": id }, doc! { "$set": { "failure": reason } })
            .await?;
        Ok(())
    }

    /// Stamps the start of the expansion (the first time only).
    pub async fn start_batch(&self, id: ObjectId) -> Result<(), StoreError> {
        self.batches
            .update_one(
                doc! { "_id": id, "startedAt": { "$exists": false } },
                doc! { "$set": { "startedAt": DateTime::now() } },
            )
            .await?;
        Ok(())
    }

    /// Records one expanded chunk, if the checkpoint is still the one this expander started
    /// from. Returns false when another expander got there first.
    pub async fn checkpoint_batch(
        &self,
        id: ObjectId,
        chunks_done: u64,
        progress: &ChunkProgress,
        done: bool,
    ) -> Result<bool, StoreError> {
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let mut set = doc! {
            "expansion.chunks": to_i64(chunks_done + 1),
            "expansion.nextIndex": to_i64(progress.next_index),
            "expansion.done": done,
        };
        if let Some(after) = progress.after {
            set.insert("expansion.after", after);
        }
        let update = doc! {
            "$set": set,
            "$inc": {
                "accepted": to_i64(progress.accepted),
                "skipped.notFound": to_i64(progress.skipped.not_found),
                "skipped.notActive": to_i64(progress.skipped.not_active),
                "skipped.coalesced": to_i64(progress.skipped.coalesced),
            },
        };
        let filter = doc! { "_id": id, "expansion.chunks": to_i64(chunks_done) };
        let result = self.batches.update_one(filter, update).await?;
        Ok(result.matched_count == 1)
    }

    /// A filter batch's total becomes what its expansion actually found.
    pub async fn settle_batch_total(&self, id: ObjectId) -> Result<(), StoreError> {
        let Some(batch) = self.batch_by_id(id).await? else {
            return Ok(());
        };
        let found = batch.accepted + batch.skipped.total();
        self.batches
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "total": i64::try_from(found).unwrap_or(i64::MAX) } },
            )
            .await?;
        Ok(())
    }

    /// The batch as the status call shows it; freezes its counts the first time it reads as
    /// finished, so later reads need no aggregation.
    pub async fn batch_view(&self, batch: BatchRecord) -> Result<BatchView, StoreError> {
        let (outcomes, finished_at) = match (&batch.outcomes, batch.finished_at) {
            (Some(outcomes), finished_at) => (outcomes.clone(), finished_at),
            (None, _) => {
                let (outcomes, last) = self.batch_outcomes(batch.organization, batch.id).await?;
                let settled: u64 = outcomes.values().sum();
                let finished = batch.expansion.done && settled >= batch.accepted;
                let finished_at = finished.then(|| last.unwrap_or_else(DateTime::now));
                if let Some(at) = finished_at {
                    let frozen: bson::Document = outcomes
                        .iter()
                        .map(|(outcome, n)| {
                            (outcome.as_str().to_owned(), i64::try_from(*n).unwrap_or(0).into())
                        })
                        .collect();
                    self.batches
                        .update_one(
                            doc! { "_id": batch.id },
                            doc! { "$set": { "outcomes": frozen, "finishedAt": at } },
                        )
                        .await?;
                }
                (outcomes, finished_at)
            }
        };
        Ok(BatchView::new(&batch, &outcomes, finished_at))
    }
}

/// A batch as `GET …/refresh-batches/{batchId}` and `refreshctl bulk` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchView {
    pub id: String,
    pub organization_id: String,
    /// `expanding` (jobs still being made), `running`, `completed`, or `failed` (not queued).
    pub state: String,
    pub categories: Vec<Category>,
    pub total: u64,
    /// Share of `total` settled or skipped, 0 to 1.
    pub progress: f64,
    pub counts: BatchCounts,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where each of a batch's devices is; the numbers add up to `total`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BatchCounts {
    /// Not yet expanded into a job.
    pub pending: u64,
    /// Has a job that is not finished.
    pub queued: u64,
    pub pushed: u64,
    pub partial: u64,
    pub failed: u64,
    pub expired: u64,
    pub skipped: Skipped,
}

impl BatchCounts {
    pub fn sum(&self) -> u64 {
        self.pending
            + self.queued
            + self.pushed
            + self.partial
            + self.failed
            + self.expired
            + self.skipped.total()
    }
}

impl BatchView {
    fn new(
        batch: &BatchRecord,
        outcomes: &BTreeMap<DeviceOutcome, u64>,
        finished_at: Option<DateTime>,
    ) -> BatchView {
        let outcome = |o| outcomes.get(&o).copied().unwrap_or(0);
        let settled: u64 = outcomes.values().sum();
        let counts = BatchCounts {
            pending: batch
                .total
                .saturating_sub(batch.accepted + batch.skipped.total()),
            queued: batch.accepted.saturating_sub(settled),
            pushed: outcome(DeviceOutcome::Pushed),
            partial: outcome(DeviceOutcome::Partial),
            failed: outcome(DeviceOutcome::Failed),
            expired: outcome(DeviceOutcome::Expired),
            skipped: batch.skipped,
        };
        let done = settled + batch.skipped.total();
        let state = if batch.failure.is_some() {
            "failed"
        } else if finished_at.is_some() {
            "completed"
        } else if batch.expansion.done {
            "running"
        } else {
            "expanding"
        };
        BatchView {
            id: batch.id.to_hex(),
            organization_id: batch.organization.to_hex(),
            state: state.to_owned(),
            categories: batch.categories.clone(),
            total: batch.total,
            progress: if batch.total == 0 {
                1.0
            } else {
                done as f64 / batch.total as f64
            },
            counts,
            created_at: rfc3339(batch.created_at),
            started_at: batch.started_at.map(rfc3339),
            finished_at: finished_at.map(rfc3339),
            error: batch.failure.clone(),
        }
    }
}
