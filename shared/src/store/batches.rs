//! `refresh_batches`: one document per bulk refresh, with the expansion's checkpoint and counts.

use super::{Store, StoreError, tenant};
use crate::{
    Category,
    batch::{DeviceFilter, DeviceOutcome, Skip},
};
use bson::{DateTime, doc, oid::ObjectId};
use futures::TryStreamExt;
use mongodb::options::ReturnDocument;
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, time::Duration};
use strum::EnumIter;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchRecord {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub organization: ObjectId,
    /// The token that submitted it.
    pub token: ObjectId,
    pub categories: Vec<Category>,
    /// The devices matching this are refreshed; without it, the devices named, kept in pages in
    /// `refresh_batch_devices` (a list in this document would make every count update rewrite
    /// megabytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<DeviceFilter>,
    /// `maxAgeSecs`: a category a device reported within this long (when its job would be made)
    /// is not refreshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
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
    /// When the caller canceled it: its expansion stops, its jobs are canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canceled_at: Option<DateTime>,
    #[serde(default)]
    pub expansion: Expansion,
    /// Devices that got a job.
    #[serde(default)]
    pub accepted: u64,
    #[serde(default)]
    pub skipped: Skipped,
    /// How many devices' jobs ended each way, counted as each job settles.
    #[serde(default)]
    pub outcomes: BTreeMap<DeviceOutcome, u64>,
    /// When the last of its jobs settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_settled_at: Option<DateTime>,
    /// Whether `refresh.batch.finished` was handed to its subscribers' deliveries.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub announced: bool,
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
    /// How long ago a report must be for a category to be refreshed ([`super::stale_after`]).
    pub fn stale_after(&self, skip_window: Duration) -> Duration {
        super::stale_after(skip_window, self.max_age_secs.map(Duration::from_secs))
    }

    pub fn new(
        organization: ObjectId,
        token: ObjectId,
        categories: Vec<Category>,
        filter: Option<DeviceFilter>,
        max_age: Option<Duration>,
        total: u64,
    ) -> BatchRecord {
        BatchRecord {
            id: ObjectId::new(),
            organization,
            token,
            categories,
            filter,
            max_age_secs: max_age.map(|age| age.as_secs()),
            total,
            created_at: DateTime::now(),
            started_at: None,
            finished_at: None,
            failure: None,
            canceled_at: None,
            expansion: Expansion::default(),
            accepted: 0,
            skipped: Skipped::default(),
            outcomes: BTreeMap::new(),
            last_settled_at: None,
            announced: false,
        }
    }
}

/// One page of the devices a batch names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevicePage {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub batch: ObjectId,
    pub page: u64,
    pub keys: Vec<String>,
}

/// Device ids per page of `refresh_batch_devices`.
const DEVICE_PAGE_SIZE: usize = 1_000;

impl Store {
    /// Records a batch and, for a batch of named devices, their ids (first, so that a batch that
    /// exists always has its whole list).
    pub async fn insert_batch(
        &self,
        batch: &BatchRecord,
        device_ids: &[String],
    ) -> Result<(), StoreError> {
        let pages: Vec<DevicePage> = device_ids
            .chunks(DEVICE_PAGE_SIZE)
            .zip(0..)
            .map(|(keys, page)| DevicePage {
                id: ObjectId::new(),
                batch: batch.id,
                page,
                keys: keys.to_vec(),
            })
            .collect();
        if !pages.is_empty() {
            self.batch_devices.insert_many(&pages).await?;
        }
        self.batches.insert_one(batch).await?;
        Ok(())
    }

    /// Up to `count` of the devices `batch` names, from the `from`-th on.
    pub async fn batch_device_ids(
        &self,
        batch: ObjectId,
        from: u64,
        count: usize,
    ) -> Result<Vec<String>, StoreError> {
        let page_size = DEVICE_PAGE_SIZE as u64;
        let first = from / page_size;
        let last = (from + count as u64).div_ceil(page_size);
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let pages: Vec<DevicePage> = self
            .batch_devices
            .find(doc! { "batch": batch, "page": { "$gte": to_i64(first), "$lt": to_i64(last) } })
            .sort(doc! { "page": 1 })
            .await?
            .try_collect()
            .await?;
        let skip = usize::try_from(from - first * page_size).unwrap_or(usize::MAX);
        Ok(pages
            .into_iter()
            .flat_map(|page| page.keys)
            .skip(skip)
            .take(count)
            .collect())
    }

    /// The batch by id: for its expander.
    /// Records that the batch's end was handed to its subscribers' deliveries.
    pub async fn mark_batch_announced(&self, id: ObjectId) -> Result<(), StoreError> {
        self.batches
            .update_one(doc! { "_id": id }, doc! { "$set": { "announced": true } })
            .await?;
        Ok(())
    }

    pub async fn batch_by_id(&self, id: ObjectId) -> Result<Option<BatchRecord>, StoreError> {
        Ok(self.batches.find_one(doc! { "_id": id }).await?)
    }

    /// A batch of `organization`: for the status call.
    pub async fn batch(
        &self,
        organization: ObjectId,
        id: ObjectId,
    ) -> Result<Option<BatchRecord>, StoreError> {
        Ok(self
            .batches
            .find_one(tenant(organization, doc! { "_id": id }))
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
    /// from and the batch is not canceled. Returns false when another expander got there
    /// first, or the batch was canceled.
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
        let filter = doc! {
            "_id": id,
            "expansion.chunks": to_i64(chunks_done),
            "canceledAt": { "$exists": false },
        };
        let result = self.batches.update_one(filter, update).await?;
        Ok(result.matched_count == 1)
    }

    /// A filter batch's total becomes what its expansion actually found; returns the batch
    /// with that total.
    pub async fn settle_batch_total(
        &self,
        id: ObjectId,
    ) -> Result<Option<BatchRecord>, StoreError> {
        let Some(mut batch) = self.batch_by_id(id).await? else {
            return Ok(None);
        };
        batch.total = batch.accepted + batch.skipped.total();
        self.batches
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "total": i64::try_from(batch.total).unwrap_or(i64::MAX) } },
            )
            .await?;
        Ok(Some(batch))
    }

    /// Counts one settled job of `batch`: called once per job, by whoever recorded its outcome.
    pub async fn count_outcome(
        &self,
        batch: ObjectId,
        outcome: DeviceOutcome,
    ) -> Result<(), StoreError> {
        let counted = self
            .batches
            .find_one_and_update(
                doc! { "_id": batch },
                doc! {
                    "$inc": { format!("outcomes.{}", outcome.as_str()): 1_i64 },
                    "$max": { "lastSettledAt": DateTime::now() },
                },
            )
            .return_document(ReturnDocument::After)
            .await?;
        if let Some(counted) = counted {
            self.finish_if_settled(&counted).await?;
        }
        Ok(())
    }

    /// Records when `batch` finished, if it has: every device expanded and every job's outcome
    /// counted. Called by whoever changed those (the expander's last checkpoint, each count);
    /// counts only grow, so a snapshot that shows the batch finished stays right, and the write
    /// is made once. Returns when it finished, if it has.
    pub async fn finish_if_settled(
        &self,
        batch: &BatchRecord,
    ) -> Result<Option<DateTime>, StoreError> {
        let settled: u64 = batch.outcomes.values().sum();
        if batch.finished_at.is_some() || !batch.expansion.done || settled < batch.accepted {
            return Ok(batch.finished_at);
        }
        let at = batch.last_settled_at.unwrap_or_else(DateTime::now);
        self.batches
            .update_one(
                doc! { "_id": batch.id, "finishedAt": { "$exists": false } },
                doc! { "$set": { "finishedAt": at } },
            )
            .await?;
        Ok(Some(at))
    }

    /// Sets `batch`'s outcome counts (and when its last job settled) to what its jobs say;
    /// returns them.
    pub(super) async fn recount_outcomes(
        &self,
        batch: &BatchRecord,
    ) -> Result<(BTreeMap<DeviceOutcome, u64>, Option<DateTime>), StoreError> {
        let (outcomes, last) = self.batch_outcomes(batch.organization, batch.id).await?;
        let counts: bson::Document = outcomes
            .iter()
            .map(|(outcome, n)| {
                (
                    outcome.as_str().to_owned(),
                    i64::try_from(*n).unwrap_or(0).into(),
                )
            })
            .collect();
        let mut set = doc! { "outcomes": counts };
        if let Some(last) = last {
            set.insert("lastSettledAt", last);
        }
        self.batches
            .update_one(doc! { "_id": batch.id }, doc! { "$set": set })
            .await?;
        Ok((outcomes, last))
    }

    /// `batch` with its counts made right, for the status call. They are kept as jobs settle
    /// (and its end recorded by the worker that counts the last); if a batch looks stuck (every
    /// job expanded, fewer settled than accepted, nothing settled for a while) they are
    /// repaired from the jobs, in case a worker died between recording a job's outcome and
    /// counting it.
    pub async fn repaired_batch(&self, mut batch: BatchRecord) -> Result<BatchRecord, StoreError> {
        let settled: u64 = batch.outcomes.values().sum();
        let quiet_since = batch
            .last_settled_at
            .or(batch.started_at)
            .unwrap_or(batch.created_at);
        let quiet_for = DateTime::now().timestamp_millis() - quiet_since.timestamp_millis();
        let stuck = batch.finished_at.is_none()
            && batch.expansion.done
            && settled < batch.accepted
            && quiet_for > RECOUNT_AFTER_QUIET_MS;
        if stuck {
            let (outcomes, last) = self.recount_outcomes(&batch).await?;
            batch.outcomes = outcomes;
            batch.last_settled_at = last.or(batch.last_settled_at);
            // The repair may be what completes it.
            batch.finished_at = self.finish_if_settled(&batch).await?;
        }
        Ok(batch)
    }
}

/// How long a batch with unsettled jobs may see none settle before its counts are recounted.
const RECOUNT_AFTER_QUIET_MS: i64 = 60_000;

/// Where a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, EnumIter)]
#[serde(rename_all = "lowercase")]
pub enum BatchState {
    /// Jobs are still being made.
    Expanding,
    /// Every job is made; some have not settled.
    Running,
    /// Every device settled or skipped.
    Completed,
    /// Not queued.
    Failed,
    /// Canceled by the caller before it completed.
    Canceled,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Expanding => "expanding",
            BatchState::Running => "running",
            BatchState::Completed => "completed",
            BatchState::Failed => "failed",
            BatchState::Canceled => "canceled",
        }
    }

    /// Whether the batch has ended, one way or the other.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            BatchState::Completed | BatchState::Failed | BatchState::Canceled
        )
    }
}

impl BatchRecord {
    /// Where the batch is: derived from what it recorded, never stored.
    pub fn state(&self) -> BatchState {
        if self.failure.is_some() {
            BatchState::Failed
        } else if self.canceled_at.is_some() {
            BatchState::Canceled
        } else if self.finished_at.is_some() {
            BatchState::Completed
        } else if self.expansion.done {
            BatchState::Running
        } else {
            BatchState::Expanding
        }
    }
}
