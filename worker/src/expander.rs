//! Turns a batch into jobs on the bulk lane, chunk by chunk, resuming from the batch's
//! checkpoint: whoever holds the batch's expansion message expands it, and if that process dies
//! the broker hands the message to the next worker, which carries on where the last checkpoint
//! says.
//!
//! Per chunk: look the devices up (a filter's from one query the whole expansion walks),
//! record their jobs (one insert), publish them with pipelined confirms, then checkpoint: a
//! handful of round trips per chunk, and no write per device. A chunk is looked up and recorded
//! while the one before it is published and checkpointed. Each job claims its categories on its
//! device when it first runs (`RefreshJob::claim_unless_reported_after`): a category another job
//! holds, or reported recently, is left to it, and a job left with none ends as coalesced. The
//! chunks interrupted before their checkpoint are done again: their jobs already recorded are
//! found by (batch, device) and published again only for categories no worker has taken, and a
//! second copy of a job never pushes what the first is pushing (`CategoryState::claimable`).

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

/// How many chunks an expansion has between recorded and checkpointed: one being published
/// while the next is recorded. A resumed expansion looks for jobs already made in as many.
const CHUNKS_IN_FLIGHT: u32 = 2;

/// A chunk whose jobs are recorded, to be published and checkpointed.
struct Recorded {
    messages: Vec<RefreshJob>,
    progress: ChunkProgress,
    last: bool,
}

/// What became of a recorded chunk.
enum Published {
    /// There was none.
    Nothing,
    /// Published and checkpointed.
    Checkpointed { last: bool },
    /// Published, but its checkpoint was not this expander's to write.
    Refused,
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
        // Started before: the chunks a process that died had in flight may be half done.
        let mut resuming = if batch.started_at.is_some() {
            CHUNKS_IN_FLIGHT
        } else {
            0
        };
        self.store.start_batch(batch.id).await?;
        // Where the next lookup starts: a chunk ahead of the checkpoint while one is published.
        let mut walked = batch.expansion.clone();
        let mut chunks_done = batch.expansion.chunks;
        let mut matches = None;
        let mut recorded: Option<Recorded> = None;
        tracing::info!(%batch_id, chunks_done, total = batch.total, "expanding");
        loop {
            if self.shutdown.is_cancelled() {
                return Err(Halt::Shutdown);
            }
            let walk_on = recorded.as_ref().is_none_or(|chunk| !chunk.last);
            // The next chunk is looked up and recorded in the database while the one before is
            // published to the broker and checkpointed: each waits on a different server.
            let next = async {
                if !walk_on {
                    return Ok(None);
                }
                let chunk = self
                    .record_chunk(&batch, &walked, &mut matches, resuming > 0, trace)
                    .await?;
                Ok::<_, Halt>(Some(chunk))
            };
            let previous = async {
                match recorded.take() {
                    Some(chunk) => self.publish_chunk(&batch, chunks_done, chunk).await,
                    None => Ok(Published::Nothing),
                }
            };
            let (next, previous) = tokio::join!(next, previous);
            match previous? {
                Published::Nothing => {}
                // The chunk recorded meanwhile is not published: its jobs are canceled with the
                // batch, or found by the expander that checkpointed first, which looks for jobs
                // already made in as many chunks as one run has in flight.
                Published::Refused => return self.checkpoint_refused(batch_id).await,
                Published::Checkpointed { last } => {
                    chunks_done += 1;
                    if last {
                        return self.finish_expansion(&batch, chunks_done).await;
                    }
                }
            }
            if let Some(chunk) = next? {
                resuming = resuming.saturating_sub(1);
                walked.next_index = chunk.progress.next_index;
                walked.after = chunk.progress.after.or(walked.after);
                recorded = Some(chunk);
            }
        }
    }

    /// Every chunk is checkpointed: a filter's total is now known, and the batch may be done
    /// already (every job may have settled while the expansion was still running).
    async fn finish_expansion(&self, batch: &BatchRecord, chunks: u64) -> Result<(), Halt> {
        let expanded = if batch.filter.is_some() {
            self.store.settle_batch_total(batch.id).await?
        } else {
            self.store.batch_by_id(batch.id).await?
        };
        if let Some(expanded) = expanded {
            self.store.finish_if_settled(&expanded).await?;
        }
        tracing::info!(batch_id = %batch.id, chunks, "batch expanded");
        Ok(())
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

    /// Looks up the chunk after `walked` and records its jobs. `resuming`: the chunk may have
    /// been half done before, so jobs it already made are looked for. (A device named again in
    /// a later chunk needs no such search: it gets a second job, which coalesces into the first
    /// when it runs, as a request for a device already refreshing does.)
    async fn record_chunk(
        &self,
        batch: &BatchRecord,
        walked: &Expansion,
        matches: &mut Option<DeviceWalk>,
        resuming: bool,
        trace: Option<TraceParent>,
    ) -> Result<Recorded, Halt> {
        let started = std::time::Instant::now();
        let (entries, mut progress, last) = self.next_chunk(batch, walked, matches).await?;
        let looked_up = started.elapsed();
        let existing = if resuming {
            self.jobs_of_earlier_run(batch, &entries).await?
        } else {
            HashMap::new()
        };
        let (planned, new_jobs) = plan(batch, entries, &existing, &mut progress);
        self.store.insert_jobs(&new_jobs).await?;
        // A category reported within the skip window, or the batch's `maxAgeSecs`, is not
        // claimed when the job runs.
        let cutoff = skip_cutoff(batch.stale_after(self.refresh_skip_window)).to_time_0_3();
        let messages = planned
            .into_iter()
            .map(|Planned { job, categories }| RefreshJob {
                claim_unless_reported_after: Some(cutoff),
                ..job.message(categories, trace)
            })
            .collect();
        tracing::debug!(?looked_up, took = ?started.elapsed(), "chunk recorded");
        Ok(Recorded {
            messages,
            progress,
            last,
        })
    }

    /// Publishes a recorded chunk's jobs, then checkpoints it as the one after `chunks_done`.
    async fn publish_chunk(
        &self,
        batch: &BatchRecord,
        chunks_done: u64,
        chunk: Recorded,
    ) -> Result<Published, Halt> {
        let Recorded {
            messages,
            mut progress,
            last,
        } = chunk;
        // All at once on one channel: the confirms are pipelined, never awaited one by one.
        let published = join_all(messages.iter().map(|job| self.publisher.publish(job))).await;
        published.into_iter().collect::<Result<Vec<()>, _>>()?;
        progress.accepted += messages.len() as u64;
        metrics::counter!(metric::JOBS_ACCEPTED, "lane" => Lane::Bulk.as_str())
            .increment(messages.len() as u64);
        let recorded = self
            .store
            .checkpoint_batch(batch.id, chunks_done, &progress, last)
            .await?;
        if !recorded {
            return Ok(Published::Refused);
        }
        metrics::counter!(metric::BATCH_DEVICES_EXPANDED)
            .increment(progress.accepted + progress.skipped.total());
        Ok(Published::Checkpointed { last })
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
