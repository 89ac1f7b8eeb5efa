//! Canceling: a job's or a whole batch's categories that have not ended become `canceled`
//! (a state no worker claims from, so no queued or retried message pushes them again), the
//! devices' claims on them are freed, and the batch counts the jobs' outcomes.

use super::{BatchRecord, JobRecord, Store, StoreError, tenant};
use crate::{
    Category,
    batch::DeviceOutcome,
    job::{CategoryState, Lane},
    store::CategoryUpdate,
};
use bson::{DateTime, doc, oid::ObjectId};
use futures::TryStreamExt;
use serde::Deserialize;

/// Jobs (and their devices) changed in one write when a batch is canceled.
const CANCEL_CHUNK: usize = 1_000;

/// What a batch cancel did.
#[derive(Debug)]
pub struct BatchCanceled {
    /// The batch as it is afterwards.
    pub batch: BatchRecord,
    /// Whether this call canceled it (false: it had ended, or was canceled, before).
    pub now: bool,
    /// Jobs of the batch this call canceled.
    pub jobs: u64,
}

/// A job of a batch with a category still open, as the sweep reads it.
#[derive(Deserialize)]
struct OpenJob {
    #[serde(rename = "_id")]
    id: ObjectId,
    device: ObjectId,
}

impl Store {
    /// Cancels every category of `organization`'s job `id` that has not ended, each in a
    /// guarded write (one that ends meanwhile keeps its end), frees the device's claims on
    /// them, and counts the job's outcome in its batch. The job as it is afterwards and the
    /// categories this call canceled (none: it had ended already); `None` when the
    /// organization has no such job.
    pub async fn cancel_job(
        &self,
        organization: ObjectId,
        id: ObjectId,
    ) -> Result<Option<(JobRecord, Vec<Category>)>, StoreError> {
        let Some(job) = self.job(organization, id).await? else {
            return Ok(None);
        };
        let cancel = CategoryUpdate::to(CategoryState::Canceled);
        let mut canceled = Vec::new();
        for (&category, record) in &job.categories {
            if !record.state.is_terminal()
                && self
                    .transition(id, std::slice::from_ref(&category), &cancel)
                    .await?
            {
                canceled.push(category);
            }
        }
        if canceled.is_empty() {
            return Ok(Some((job, canceled)));
        }
        self.release_claims(organization, job.device, &canceled, id, None)
            .await?;
        if job.lane == Lane::Bulk {
            self.record_outcome(id).await?;
        }
        let after = self.job(organization, id).await?;
        Ok(after.map(|job| (job, canceled)))
    }

    /// Cancels `organization`'s batch `id` unless it has ended: its expansion stops at the
    /// next chunk (whose checkpoint is then refused), and every job it made so far is
    /// canceled. `None` when the organization has no such batch.
    pub async fn cancel_batch(
        &self,
        organization: ObjectId,
        id: ObjectId,
    ) -> Result<Option<BatchCanceled>, StoreError> {
        let open = doc! {
            "_id": id,
            "finishedAt": { "$exists": false },
            "failure": { "$exists": false },
            "canceledAt": { "$exists": false },
        };
        let marked = self
            .batches
            .update_one(
                tenant(organization, open),
                doc! { "$set": { "canceledAt": DateTime::now() } },
            )
            .await?;
        let now = marked.matched_count == 1;
        let Some(batch) = self.batch(organization, id).await? else {
            return Ok(None);
        };
        if !now {
            return Ok(Some(BatchCanceled {
                batch,
                now,
                jobs: 0,
            }));
        }
        let jobs = self.cancel_batch_jobs(&batch).await?;
        let batch = self.batch(organization, id).await?.unwrap_or(batch);
        Ok(Some(BatchCanceled { batch, now, jobs }))
    }

    /// Cancels what is open in every job `batch` has made, frees the devices' claims on it,
    /// records those jobs' outcome (`canceled`) and recounts the batch. Called when the batch
    /// is canceled, and again by its expander when it finds out (its last chunk's jobs may
    /// have been made after the first sweep). Returns how many jobs it canceled.
    pub async fn cancel_batch_jobs(&self, batch: &BatchRecord) -> Result<u64, StoreError> {
        let open: Vec<&str> = CategoryState::Canceled
            .allowed_sources()
            .iter()
            .map(|state| state.as_str())
            .collect();
        let mut canceled: Vec<ObjectId> = Vec::new();
        for category in &batch.categories {
            let state = format!("categories.{category}.state");
            let filter = tenant(
                batch.organization,
                doc! { "batch": batch.id, &state: { "$in": &open } },
            );
            let found: Vec<OpenJob> = self
                .jobs
                .clone_with_type::<OpenJob>()
                .find(filter)
                .projection(doc! { "_id": 1, "device": 1 })
                .await?
                .try_collect()
                .await?;
            for chunk in found.chunks(CANCEL_CHUNK) {
                let ids: Vec<ObjectId> = chunk.iter().map(|job| job.id).collect();
                let devices: Vec<ObjectId> = chunk.iter().map(|job| job.device).collect();
                self.jobs
                    .update_many(
                        doc! { "_id": { "$in": &ids }, &state: { "$in": &open } },
                        doc! { "$set": { &state: CategoryState::Canceled.as_str(), "updatedAt": DateTime::now() } },
                    )
                    .await?;
                // Only the claims these jobs hold: a device refreshed since by another job
                // keeps that job's claim.
                self.devices
                    .update_many(
                        tenant(
                            batch.organization,
                            doc! {
                                "_id": { "$in": &devices },
                                format!("lastRefreshJob.{category}"): { "$in": &ids },
                            },
                        ),
                        doc! { "$pull": { "refreshInfoNeeded": category.as_str() } },
                    )
                    .await?;
                canceled.extend(ids);
            }
        }
        canceled.sort_unstable();
        canceled.dedup();
        // Each has a canceled category and none open now: its outcome is `canceled`.
        for chunk in canceled.chunks(CANCEL_CHUNK) {
            self.jobs
                .update_many(
                    doc! { "_id": { "$in": chunk }, "outcome": { "$exists": false } },
                    doc! { "$set": { "outcome": DeviceOutcome::Canceled.as_str() } },
                )
                .await?;
        }
        self.recount_outcomes(batch).await?;
        Ok(canceled.len() as u64)
    }
}
