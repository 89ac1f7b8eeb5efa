//! Turns a batch into jobs on the bulk lane, chunk by chunk, resuming from the batch's
//! checkpoint: whoever holds the batch's expansion message expands it, and if that process dies
//! the broker hands the message to the next worker, which carries on where the last checkpoint
//! says.
//!
//! Per chunk: look the devices up (a filter's from one query the whole expansion walks),
//! record their jobs (one insert), publish them with pipelined confirms, then checkpoint: a
//! handful of round trips per chunk, and no write per device. Each job claims its categories on its device when it first runs
//! (`RefreshJob::claim_unless_reported_after`): a category another job holds, or reported
//! recently, is left to it, and a job left with none ends as coalesced. A chunk interrupted
//! before its checkpoint is done again: its jobs already recorded are found by (batch, device)
//! and published again only for categories no worker has taken, and a second copy of a job
//! never pushes what the first is pushing (`CategoryState::claimable`).

use crate::dispatch::Halt;
use bson::oid::ObjectId;
use futures::{TryStreamExt, future::join_all};
use refresh_shared::{
    batch::Skip,
    broker::Publisher,
    device::Refreshable,
    job::{Lane, RefreshJob},
    metric,
    store::{
        BatchRecord, ChunkProgress, Device, DeviceWalk, Expansion, JobRecord, Store, skip_cutoff,
    },
    trace::TraceParent,
};
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};
use tokio_util::sync::CancellationToken;

pub struct Expander {
    pub store: Store,
    pub publisher: Arc<Publisher>,
    pub chunk_size: usize,
    pub refresh_skip_window: Duration,
    pub shutdown: CancellationToken,
}

/// One entry of a chunk: what the batch named, and the device it found.
struct Entry {
    key: String,
    device: Option<Device>,
}

/// What to do with one device's job.
struct Planned {
    job: JobRecord,
    categories: Vec<refresh_shared::Category>,
}

impl Expander {
    /// Expands `batch_id` from its checkpoint to the end, its jobs in the batch request's
    /// `trace`. Safe to call again after a halt.
    pub async fn expand(&self, batch_id: ObjectId, trace: Option<TraceParent>) -> Result<(), Halt> {
        let Some(batch) = self.store.batch_by_id(batch_id).await? else {
            tracing::warn!(%batch_id, "batch to expand no longer exists");
            return Ok(());
        };
        if batch.expansion.done || batch.failure.is_some() || batch.canceled_at.is_some() {
            return Ok(());
        }
        // Started before: the first chunk may have been half done by a process that died.
        let mut resuming = batch.started_at.is_some();
        self.store.start_batch(batch.id).await?;
        let mut expansion = batch.expansion.clone();
        let mut matches = None;
        tracing::info!(%batch_id, chunks_done = expansion.chunks, total = batch.total, "expanding");
        loop {
            if self.shutdown.is_cancelled() {
                return Err(Halt::Shutdown);
            }
            let chunk_started = std::time::Instant::now();
            let (entries, mut progress, last) =
                self.next_chunk(&batch, &expansion, &mut matches).await?;
            let looked_up = chunk_started.elapsed();
            self.expand_chunk(&batch, entries, resuming, &mut progress, trace)
                .await?;
            resuming = false;
            tracing::debug!(?looked_up, took = ?chunk_started.elapsed(), "chunk expanded");
            let recorded = self
                .store
                .checkpoint_batch(batch.id, expansion.chunks, &progress, last)
                .await?;
            if !recorded {
                return self.checkpoint_refused(batch_id).await;
            }
            metrics::counter!(metric::BATCH_DEVICES_EXPANDED)
                .increment(progress.accepted + progress.skipped.total());
            expansion.chunks += 1;
            expansion.next_index = progress.next_index;
            expansion.after = progress.after.or(expansion.after);
            if last {
                let expanded = if batch.filter.is_some() {
                    self.store.settle_batch_total(batch.id).await?
                } else {
                    self.store.batch_by_id(batch.id).await?
                };
                // Every job may have settled while the expansion was still running.
                if let Some(expanded) = expanded {
                    self.store.finish_if_settled(&expanded).await?;
                }
                tracing::info!(%batch_id, chunks = expansion.chunks, "batch expanded");
                return Ok(());
            }
        }
    }

    /// The batch's checkpoint was not this expander's to write: the batch was canceled (then
    /// the chunk just published is canceled too, as the cancel could not see it), or another
    /// expander got there first (then the batch is left to it).
    async fn checkpoint_refused(&self, batch_id: ObjectId) -> Result<(), Halt> {
        match self.store.batch_by_id(batch_id).await? {
            Some(batch) if batch.canceled_at.is_some() => {
                let jobs = self.store.cancel_batch_jobs(&batch).await?;
                tracing::info!(%batch_id, jobs, "batch canceled: expansion stopped");
            }
            _ => {
                tracing::warn!(%batch_id, "another expander checkpointed this batch first; leaving it to that one");
            }
        }
        Ok(())
    }

    /// The next chunk after the checkpoint, the checkpoint after it, and whether it is the last.
    /// A filter's devices come from `matches`, the walk this expansion opened at its first
    /// chunk ([`Store::devices_matching`]).
    async fn next_chunk(
        &self,
        batch: &BatchRecord,
        expansion: &Expansion,
        matches: &mut Option<DeviceWalk>,
    ) -> Result<(Vec<Entry>, ChunkProgress, bool), Halt> {
        let mut progress = ChunkProgress::default();
        if batch.filter.is_none() {
            let keys = self
                .store
                .batch_device_ids(batch.id, expansion.next_index, self.chunk_size)
                .await?;
            let lookup: Vec<String> = keys.iter().flat_map(|key| key_variants(key)).collect();
            let devices = self
                .store
                .devices_by_keys(batch.organization, &lookup)
                .await?;
            let entries = keys
                .iter()
                .map(|key| {
                    let variants = key_variants(key);
                    let device = devices
                        .iter()
                        .find(|device| device.lookup_keys.iter().any(|k| variants.contains(k)));
                    Entry {
                        key: key.to_owned(),
                        device: device.cloned(),
                    }
                })
                .collect();
            progress.next_index = expansion.next_index + keys.len() as u64;
            let last = keys.is_empty() || progress.next_index >= batch.total;
            Ok((entries, progress, last))
        } else {
            let matches = match matches {
                Some(matches) => matches,
                None => {
                    let filter = batch.filter.clone().unwrap_or_default();
                    let page = u32::try_from(self.chunk_size).unwrap_or(u32::MAX);
                    let after = expansion.after;
                    let walk =
                        self.store
                            .devices_matching(batch.organization, &filter, after, page);
                    matches.insert(walk.await?)
                }
            };
            let mut devices = Vec::with_capacity(self.chunk_size);
            while devices.len() < self.chunk_size {
                match matches.try_next().await? {
                    Some(device) => devices.push(device),
                    None => break,
                }
            }
            let last = devices.len() < self.chunk_size;
            progress.after = devices.last().map(|device| device.id);
            let entries = devices
                .into_iter()
                .map(|device| Entry {
                    key: device.id.to_hex(),
                    device: Some(device),
                })
                .collect();
            Ok((entries, progress, last))
        }
    }

    /// Records and publishes one chunk's jobs. `resuming`: the chunk may have been half done
    /// before, so jobs it already made are looked for. (A device named again in a later chunk
    /// needs no such search: it gets a second job, which coalesces into the first when it
    /// runs, as a request for a device already refreshing does.)
    async fn expand_chunk(
        &self,
        batch: &BatchRecord,
        entries: Vec<Entry>,
        resuming: bool,
        progress: &mut ChunkProgress,
        trace: Option<TraceParent>,
    ) -> Result<(), Halt> {
        let existing = if resuming {
            self.jobs_of_earlier_run(batch, &entries).await?
        } else {
            HashMap::new()
        };
        let (planned, new_jobs) = plan(batch, entries, &existing, progress);
        self.store.insert_jobs(&new_jobs).await?;
        // A category reported within the skip window, or the batch's `maxAgeSecs`, is not
        // claimed when the job runs.
        let cutoff = skip_cutoff(batch.stale_after(self.refresh_skip_window)).to_time_0_3();
        let messages: Vec<RefreshJob> = planned
            .into_iter()
            .map(|Planned { job, categories }| RefreshJob {
                claim_unless_reported_after: Some(cutoff),
                ..job.message(categories, trace)
            })
            .collect();
        // All at once on one channel: the confirms are pipelined, never awaited one by one.
        let published = join_all(messages.iter().map(|job| self.publisher.publish(job))).await;
        published.into_iter().collect::<Result<Vec<()>, _>>()?;
        progress.accepted += messages.len() as u64;
        metrics::counter!(metric::JOBS_ACCEPTED, "lane" => Lane::Bulk.as_str())
            .increment(messages.len() as u64);
        Ok(())
    }

    /// The jobs an interrupted run made for the devices of `entries`, by device.
    async fn jobs_of_earlier_run(
        &self,
        batch: &BatchRecord,
        entries: &[Entry],
    ) -> Result<HashMap<ObjectId, JobRecord>, Halt> {
        let found: Vec<ObjectId> = entries
            .iter()
            .filter_map(|entry| entry.device.as_ref().map(|d| d.id))
            .collect();
        let jobs = self
            .store
            .batch_jobs_for(batch.organization, batch.id, &found)
            .await?;
        Ok(jobs.into_iter().map(|job| (job.device, job)).collect())
    }
}

/// What a batch entry may match in `lookupKeys`: itself, and for an id in uppercase hex also its
/// lowercase form (ids are stored in lowercase).
fn key_variants(key: &str) -> Vec<String> {
    let lowercase = key.to_ascii_lowercase();
    if ObjectId::parse_str(key).is_ok() && lowercase != key {
        vec![key.to_owned(), lowercase]
    } else {
        vec![key.to_owned()]
    }
}

/// What a chunk's entries become: the jobs to publish (new ones, and an interrupted run's own
/// jobs for what no worker took yet), and which of them are new and must be recorded first.
/// Skipped entries, and an interrupted run's jobs with nothing left to publish, are counted in
/// `progress`.
fn plan(
    batch: &BatchRecord,
    entries: Vec<Entry>,
    existing: &HashMap<ObjectId, JobRecord>,
    progress: &mut ChunkProgress,
) -> (Vec<Planned>, Vec<JobRecord>) {
    let mut seen = HashSet::new();
    let mut planned = Vec::new();
    let mut new_jobs = Vec::new();
    for Entry { key, device } in entries {
        let Some(device) = device else {
            progress.skipped.add(Skip::NotFound);
            continue;
        };
        match device.state.refreshable() {
            Refreshable::Yes => {}
            Refreshable::NotActive => {
                progress.skipped.add(Skip::NotActive);
                continue;
            }
            Refreshable::Gone => {
                progress.skipped.add(Skip::NotFound);
                continue;
            }
        }
        if !seen.insert(device.id) {
            // Named twice in this chunk (by id and by serial, say).
            progress.skipped.add(Skip::Coalesced);
            continue;
        }
        match existing.get(&device.id) {
            // This entry's own job, from an interrupted run: only what no worker took yet.
            Some(job) if job.batch_key.as_deref() == Some(key.as_str()) => {
                let categories = job.queued_categories();
                if categories.is_empty() {
                    progress.accepted += 1;
                } else {
                    planned.push(Planned {
                        job: job.clone(),
                        categories,
                    });
                }
            }
            // Named earlier in the batch under another key.
            Some(_) => progress.skipped.add(Skip::Coalesced),
            None => {
                let mut job =
                    JobRecord::new(batch.organization, device.id, &batch.categories, Lane::Bulk);
                job.batch = Some(batch.id);
                job.batch_key = Some(key);
                planned.push(Planned {
                    categories: batch.categories.clone(),
                    job: job.clone(),
                });
                new_jobs.push(job);
            }
        }
    }
    (planned, new_jobs)
}
