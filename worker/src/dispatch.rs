//! One job → one push per category, each through the device's routes in order (agent, then
//! WNS), retried by the policy, and every step recorded with a guarded write-back.

use crate::{
    gateway::{Gateways, PushPayload, PushResult, Route, classify::Verdict},
    group::{GroupCommit, Limits},
    reports::{ReportGroups, observe_report_latency},
};
use bson::{DateTime, oid::ObjectId};
use futures::{
    FutureExt, StreamExt,
    future::{BoxFuture, join_all},
    stream::FuturesUnordered,
};
use refresh_events::{Announcer, announce::AnnounceError};
use refresh_shared::{
    Category,
    batch::DeviceOutcome,
    broker::{BrokerError, Publisher},
    deadline::{DEADLINE_MESSAGE_VERSION, ReportDeadline},
    device::{Gateway, Refreshable},
    job::{CategoryState, Lane, PushMade, RefreshJob},
    metric,
    retry::{RetryPolicy, WaitEnd},
    store::{CategoryUpdate, Claim, Device, Store, StoreError, Transition},
    turns::Turns,
};
use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Why a job's processing stopped before every category was settled.
#[derive(Debug, thiserror::Error)]
pub enum Halt {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A job's retry could not be parked in a retry queue: the job is handed back.
    #[error("could not park the job in a retry queue: {0}")]
    Park(BrokerError),
    /// A message the job's progress depends on (a report deadline, a repush) was not taken by
    /// the broker: the delivery is handed back and tried again.
    #[error("could not publish {what}: {error}")]
    Publish {
        what: &'static str,
        error: BrokerError,
    },
    /// The broker did not take a publish of an expansion, which resumes from its checkpoint.
    #[error("the broker did not take a publish: {0}")]
    Broker(#[from] BrokerError),
    #[error("worker is shutting down")]
    Shutdown,
    /// A dependency stayed away for longer than a delivery may be held.
    #[error("held for WORKER_HOLD_LIMIT_MS while the database was unavailable: {0}")]
    HeldTooLong(StoreError),
    /// Given up on for good (a webhook delivery after its last retry tier): dead-lettered.
    #[error("{0}")]
    GaveUp(String),
    /// Announcing a webhook event failed for a reason other than an outage.
    #[error("could not announce a webhook event: {0}")]
    Announce(AnnounceError),
    /// Halted after gateways took pushes that could not be recorded: a copy of the job that
    /// carries them took the delivery's place, so the delivery itself is done with.
    #[error("handed on to a copy that records the pushes made: {0}")]
    HandedOn(Box<Halt>),
}

/// How [`Dispatcher::outlast`] ended, short of shutdown.
enum Outlasted<T, E> {
    Done(T),
    /// An error that is not an outage.
    Failed(E),
    /// The outage lasted past `WORKER_HOLD_LIMIT_MS`; its last error.
    Spent(E),
}

/// What finished in a job's set of concurrent work.
enum Step {
    Ended(Category, Result<Ended, Halt>),
    Recorded(Result<(), Unrecorded>),
}

/// Why pushes a gateway took were not recorded.
struct Unrecorded {
    halt: Halt,
    /// Those whose report deadline is published, so that a copy of the job may record them.
    /// (Without one, they are pushed again by whoever takes the job over.)
    deadline_sent: Vec<PushMade>,
}

/// How one category's processing in this delivery ended.
enum Ended {
    /// Pushed, not yet recorded: recorded together with the job's other categories that
    /// finish at the same time.
    Pushed(PushMade),
    /// Failed, expired, or already settled by someone else.
    Settled,
    /// In-process retries are spent: the category waits in the next retry queue.
    Deferred,
}

pub struct Dispatcher {
    pub store: Store,
    pub gateways: Gateways,
    pub push_retry: RetryPolicy,
    /// Parks jobs in the retry queues.
    pub retry_publisher: Arc<Publisher>,
    pub job_max_age: Duration,
    /// Further pushes of a category not reported by its deadline.
    pub repush_limit: u32,
    /// `REPORT_DEADLINE_SECS`, for the reason an unreported category gives.
    pub report_deadline: Duration,
    /// Longest a delivery waits out a database outage before it is handed back.
    pub hold_limit: Duration,
    pub shutdown: CancellationToken,
    /// One delivery at a time per job in this process.
    pub in_flight: Turns,
    /// Tells webhook subscribers what ended.
    pub announcer: Announcer,
    /// Applies device reports in groups.
    pub reports: ReportGroups,
    /// Writes jobs' category transitions in groups.
    pub transitions: TransitionGroups,
}

/// Category transitions of many jobs being written together.
pub type TransitionGroups = GroupCommit<Transition, Result<bool, StoreError>>;

/// Transitions written in one group at most: a worker's interactive and bulk slots' worth.
const TRANSITION_GROUP: usize = 256;
/// Groups of transitions written at once.
const TRANSITION_FLUSHES: usize = 4;

/// Starts writing transitions in groups ([`Store::transitions`]).
pub fn transition_groups(store: Store) -> TransitionGroups {
    let limits = Limits {
        max_items: TRANSITION_GROUP,
        max_weight: TRANSITION_GROUP,
        flushes: TRANSITION_FLUSHES,
    };
    GroupCommit::of_store(limits, store, |store, transitions| {
        async move { store.transitions(&transitions).await }.boxed()
    })
}

impl Dispatcher {
    /// A guarded transition of a job's categories ([`Store::transition`]), written together
    /// with the transitions other jobs are making now.
    pub async fn transition(
        &self,
        job: ObjectId,
        categories: &[Category],
        update: &CategoryUpdate,
    ) -> Result<bool, StoreError> {
        let transition = Transition {
            job,
            categories: categories.to_vec(),
            update: update.clone(),
        };
        self.transitions
            .submit(transition, 1)
            .await
            .unwrap_or_else(|stopped| Err(stopped.into()))
    }

    /// Processes a job to the end (a bulk job's outcome recorded for its batch). Safe to call
    /// again for the same job (after a redelivery, a halt, or on another worker while this one
    /// still runs): settled categories are skipped, a category another delivery is pushing is
    /// left to it while that one is alive, and nothing is pushed twice once a gateway took it.
    pub async fn process(&self, job: &RefreshJob) -> Result<(), Halt> {
        let _turn = self.in_flight.turn(job.job_id).await;
        let held = Held::default();
        tokio::select! {
            processed = self.push_all(job, &held) => processed?,
            never = self.keep_alive(job, &held) => match never {},
        }
        if job.lane == Lane::Bulk {
            self.durably(|| self.store.record_outcome(job.job_id))
                .await?;
        }
        let (organization, job) = (job.organization_id, job.job_id);
        self.announce(|| self.announcer.job_delivered(organization, job))
            .await
    }

    /// Announces to webhook subscribers what of the job ended (its categories reported, the
    /// job itself, its batch), waiting out an outage of the database or the broker for up to
    /// `WORKER_HOLD_LIMIT_MS`: each announcement is made again until it is marked made.
    pub async fn announce_job(&self, organization: ObjectId, job: ObjectId) -> Result<(), Halt> {
        self.announce(|| self.announcer.job(organization, job))
            .await
    }

    /// Announces the batch's end, if it ended, as [`Dispatcher::announce_job`] does a job's.
    pub async fn announce_batch(&self, batch: ObjectId) -> Result<(), Halt> {
        self.announce(|| self.announcer.batch(batch)).await
    }

    async fn announce<F, Fut>(&self, announcement: F) -> Result<(), Halt>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), AnnounceError>>,
    {
        match self
            .outlast(
                "an announcement",
                announcement,
                AnnounceError::is_unavailable,
            )
            .await?
        {
            Outlasted::Done(()) => Ok(()),
            Outlasted::Failed(error) | Outlasted::Spent(error) => Err(Halt::Announce(error)),
        }
    }

    /// Runs `work` until it succeeds, waiting out the errors `unavailable` says will pass (the
    /// database or the broker away) for up to `WORKER_HOLD_LIMIT_MS`: the one hold every
    /// write, publish and announcement of a delivery goes through.
    async fn outlast<T, E, F, Fut>(
        &self,
        what: &'static str,
        work: F,
        unavailable: impl Fn(&E) -> bool,
    ) -> Result<Outlasted<T, E>, Halt>
    where
        E: std::fmt::Display,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut schedule = RetryPolicy::hold(self.hold_limit).schedule();
        loop {
            match work().await {
                Ok(done) => return Ok(Outlasted::Done(done)),
                Err(error) if unavailable(&error) => {
                    tracing::warn!(%error, what, "a dependency is unavailable, holding");
                    match schedule.wait(None, &self.shutdown).await {
                        Ok(_) => {}
                        Err(WaitEnd::Spent) => return Ok(Outlasted::Spent(error)),
                        Err(WaitEnd::Cancelled) => return Err(Halt::Shutdown),
                    }
                }
                Err(error) => return Ok(Outlasted::Failed(error)),
            }
        }
    }

    /// Writes a heartbeat on the categories this delivery took, every [`HEARTBEAT`] while it
    /// runs: their `pushing` is then never taken for abandoned by another delivery, however
    /// long a push, a gateway's pause or the recording of a push takes. (Deliveries shorter
    /// than a heartbeat, nearly all of them, write none.)
    async fn keep_alive(&self, job: &RefreshJob, held: &Held) -> Infallible {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            let categories = held.categories();
            if categories.is_empty() {
                continue;
            }
            if let Err(error) = self.store.touch_claims(job.job_id, &categories).await {
                tracing::debug!(job_id = %job.job_id, %error, "could not write a heartbeat");
            }
        }
    }

    async fn push_all(&self, job: &RefreshJob, held: &Held) -> Result<(), Halt> {
        if !job.pushed.is_empty() {
            // An earlier delivery's pushes: recorded, never made again.
            if let Err(halt) = self.settle_pushed(job, &job.pushed).await {
                return self.hand_on(job, job.pushed.clone(), halt).await;
            }
        }
        let to_push: Vec<Category> = job.to_push().collect();
        if to_push.is_empty() {
            return Ok(());
        }
        let (device, to_push, fresh) = match self.target(job, to_push).await? {
            Target::Push {
                device,
                categories,
                fresh,
            } => (device, categories, fresh),
            Target::Fail(reason) => return self.fail_all(job, &reason).await,
            Target::Nothing => return Ok(()),
        };
        // One write claims every category when none is settled or taken elsewhere (the usual
        // case); otherwise each category claims its own.
        let claim = claim_update(CategoryState::claimable(job.repush > 0));
        let claimed = self.transition(job.job_id, &to_push, &claim).await?;
        if claimed {
            held.take(&to_push);
        }
        let (to_push, fresh) = if claimed || fresh.is_empty() {
            (to_push, fresh)
        } else {
            self.release_settled(job, to_push, fresh).await?
        };
        if to_push.is_empty() {
            return Ok(());
        }
        let (device, fresh) = (&*device, fresh.as_slice());
        // Every category, and every recording of pushes, is polled in one set: a future that
        // holds a pooled database connection must never sit unpolled while its job awaits
        // another connection (with every job doing so, the pool deadlocks).
        let mut steps: FuturesUnordered<BoxFuture<'_, Step>> = to_push
            .iter()
            .map(|&category| {
                let taken = Taken {
                    whole: claimed,
                    fresh,
                };
                let ended = self.refresh_category(job, device, category, taken, held);
                async move { Step::Ended(category, ended.await) }.boxed()
            })
            .collect();
        let (mut deferred, mut halted, mut unrecorded) = (Vec::new(), None, Vec::new());
        while let Some(first) = steps.next().await {
            // Record together the pushes that have finished by now, never waiting for a slower
            // sibling; a halted category does not stop the others from being recorded.
            let mut pushed = Vec::new();
            let ready = std::iter::once(first)
                .chain(std::iter::from_fn(|| steps.next().now_or_never().flatten()));
            for step in ready.collect::<Vec<_>>() {
                match step {
                    Step::Ended(_, Ok(Ended::Pushed(push))) => pushed.push(push),
                    Step::Ended(category, Ok(Ended::Deferred)) => deferred.push(category),
                    Step::Ended(_, Ok(Ended::Settled)) | Step::Recorded(Ok(())) => {}
                    Step::Ended(_, Err(halt)) => halted = halted.or(Some(halt)),
                    Step::Recorded(Err(Unrecorded {
                        halt,
                        deadline_sent,
                    })) => {
                        halted = halted.or(Some(halt));
                        unrecorded.extend(deadline_sent);
                    }
                }
            }
            if !pushed.is_empty() {
                steps.push(
                    async move { Step::Recorded(self.record_pushed(job, &pushed).await) }.boxed(),
                );
            }
        }
        if let Some(halt) = halted {
            if unrecorded.is_empty() {
                return Err(halt);
            }
            return self.hand_on(job, unrecorded, halt).await;
        }
        if deferred.is_empty() {
            return Ok(());
        }
        let round = usize::try_from(job.attempt).unwrap_or(usize::MAX);
        let next = RefreshJob {
            categories: deferred,
            attempt: job.attempt + 1,
            pushed: Vec::new(),
            claim_unless_reported_after: None,
            ..job.clone()
        };
        // Confirmed before the original is acked: the job is never in neither queue.
        self.retry_publisher
            .publish_delayed(&next, round)
            .await
            .map_err(Halt::Park)?;
        Ok(())
    }

    /// The device to push `to_push` to, and which of them to push. A batch's job makes its
    /// claim on the device first ([`RefreshJob::claim_unless_reported_after`]): a category
    /// another job holds, or the device reported recently, is taken out of the job, and a job
    /// left with none ends coalesced, counted in its batch.
    async fn target(&self, job: &RefreshJob, to_push: Vec<Category>) -> Result<Target, Halt> {
        let (organization, device_id, job_id) = (job.organization_id, job.device_id, job.job_id);
        let Some(after) = job.claim_unless_reported_after else {
            let device = self.store.device(organization, device_id).await?;
            return Ok(Target::of(device, to_push, Vec::new()));
        };
        let since = DateTime::from_time_0_3(after);
        let claimed = (self.store)
            .claim_for_job(organization, device_id, &to_push, job_id, since)
            .await?;
        let Some((device, Claim { ours, kept, theirs })) = claimed else {
            return Ok(Target::of(None, to_push, Vec::new()));
        };
        // (A device that takes no commands was claimed nothing, and fails below.)
        if theirs.is_empty() {
            return Ok(Target::of(Some(device), to_push, ours));
        }
        if ours.is_empty() && kept.is_empty() {
            match self.store.coalesce_job(job_id, &theirs).await? {
                Some(batch) => {
                    (self.store)
                        .count_outcome(batch, DeviceOutcome::Coalesced)
                        .await?;
                    tracing::info!(%job_id, %batch, "every category is another job's: coalesced");
                }
                // Another delivery of the job took some (or ended it so already): they are
                // left to it, the rest dropped.
                None => self.store.drop_categories(job_id, &theirs).await?,
            }
            return Ok(Target::Nothing);
        }
        self.store.drop_categories(job_id, &theirs).await?;
        let categories = to_push
            .into_iter()
            .filter(|category| !theirs.contains(category))
            .collect();
        Ok(Target::of(Some(device), categories, ours))
    }

    /// The job's categories were not all taken after this delivery claimed some on the
    /// device: those the job has settled (a canceled batch's job, or a later delivery of a
    /// first message) are released on the device in one write and not gone on with; the
    /// rest are left to be taken one by one. Returns what is left, and its fresh claims.
    async fn release_settled(
        &self,
        job: &RefreshJob,
        to_push: Vec<Category>,
        fresh: Vec<Category>,
    ) -> Result<(Vec<Category>, Vec<Category>), Halt> {
        // A job no longer recorded has nothing open: every fresh claim goes.
        let record = self.store.job_by_id(job.job_id).await?;
        let open = |category: &Category| {
            let recorded = record.as_ref().and_then(|r| r.categories.get(category));
            recorded.is_some_and(|c| {
                c.state == CategoryState::Pushing
                    || CategoryState::claimable(job.repush > 0).contains(&c.state)
            })
        };
        let (fresh, settled): (Vec<Category>, Vec<Category>) = fresh.into_iter().partition(open);
        if !settled.is_empty() {
            let (organization, device) = (job.organization_id, job.device_id);
            release(self, organization, device, &settled, job.job_id, None).await?;
        }
        let to_push = to_push
            .into_iter()
            .filter(|category| !settled.contains(category))
            .collect();
        Ok((to_push, fresh))
    }

    /// Runs a store write until it succeeds, waiting out database outages for up to
    /// `WORKER_HOLD_LIMIT_MS`; fails on other store errors, a longer outage, or shutdown.
    pub async fn durably<T, F, Fut>(&self, write: F) -> Result<T, Halt>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        match self
            .outlast("a result", write, StoreError::is_unavailable)
            .await?
        {
            Outlasted::Done(done) => Ok(done),
            Outlasted::Failed(error) => Err(Halt::Store(error)),
            Outlasted::Spent(error) => Err(Halt::HeldTooLong(error)),
        }
    }

    /// Ends every category of `job` not ended yet as failed, for `reason`.
    pub async fn fail_all(&self, job: &RefreshJob, reason: &str) -> Result<(), Halt> {
        let results = join_all(job.categories.iter().map(|&category| async move {
            let mut attempt = Attempt::new(self, job, category);
            attempt
                .settle(CategoryState::Failed, None, Some(reason))
                .await
        }))
        .await;
        results.into_iter().try_for_each(|ended| ended.map(drop))
    }

    /// Publishes with `publish`, waiting out a broker that is away (down, failing over to
    /// another node, or being reconnected to by another task) for up to
    /// `WORKER_HOLD_LIMIT_MS`, as [`Dispatcher::durably`] does for the database: what is
    /// published here is what a push already made depends on, and handing the delivery back
    /// instead would leave that push unrecorded.
    pub async fn publish<F, Fut>(&self, what: &'static str, publish: F) -> Result<(), Halt>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), BrokerError>>,
    {
        match self
            .outlast(what, publish, BrokerError::is_unavailable)
            .await?
        {
            Outlasted::Done(()) => Ok(()),
            Outlasted::Failed(error) | Outlasted::Spent(error) => {
                Err(Halt::Publish { what, error })
            }
        }
    }

    /// Replaces a delivery that halted after gateways took `pushes` it could not record
    /// (their deadlines are published) with a copy of the job that carries them: handed back
    /// as it is, its next delivery would find those categories `pushing`, take them for
    /// abandoned and push them again. When the broker does not take the copy either, the
    /// delivery is handed back after all.
    async fn hand_on(
        &self,
        job: &RefreshJob,
        pushes: Vec<PushMade>,
        halt: Halt,
    ) -> Result<(), Halt> {
        let copy = RefreshJob {
            pushed: pushes,
            claim_unless_reported_after: None,
            ..job.clone()
        };
        let publisher = &self.retry_publisher;
        match self
            .publish("a job with pushes to record", || publisher.publish(&copy))
            .await
        {
            Ok(()) => Err(Halt::HandedOn(Box::new(halt))),
            Err(unpublished) => {
                tracing::warn!(job_id = %job.job_id, error = %unpublished, "pushes made could not be handed on: the job is handed back, and they may be made again");
                Err(halt)
            }
        }
    }

    /// Records `categories` of `job` as moved by `outcome`: each write covers them all, and
    /// falls back to one category at a time when some were settled or claimed elsewhere.
    async fn settle(
        &self,
        job: &RefreshJob,
        categories: &[Category],
        outcome: &Outcome<'_>,
    ) -> Result<(), Halt> {
        // An ending frees the device's claim, the device first: whoever sees the job settled
        // also sees the device up to date. A push does not: the category stays outstanding
        // until the device reports it. Every write outlasts a database outage: giving up here
        // would forget an outcome (a push already made) and redo it.
        let store = &self.store;
        let (organization, device, job_id) = (job.organization_id, job.device_id, job.job_id);
        if outcome.to.is_terminal() {
            release(self, organization, device, categories, job_id, None).await?;
        }
        let update = CategoryUpdate {
            attempts: outcome.attempts,
            gateway: outcome.gateway,
            last_error: outcome.error.map(str::to_owned),
            pushed_at: outcome.pushed_at,
            ..CategoryUpdate::to(outcome.to)
        };
        let applied = self
            .durably(|| self.transition(job_id, categories, &update))
            .await?;
        let (mut recorded, mut missed) = (Vec::new(), Vec::new());
        match (applied, categories) {
            (true, _) => recorded = categories.to_vec(),
            (false, [category]) => missed.push(*category),
            (false, _) => {
                for category in categories {
                    let single = std::slice::from_ref(category);
                    if self
                        .durably(|| self.transition(job_id, single, &update))
                        .await?
                    {
                        recorded.push(*category);
                    } else {
                        missed.push(*category);
                    }
                }
            }
        }
        if let (CategoryState::Pushed, Some(pushed_at)) = (outcome.to, outcome.pushed_at) {
            // Not recorded as pushed: the device may have reported it already. The push
            // happened all the same, and counts.
            for category in missed {
                let reported_at = self
                    .durably(|| store.record_push_of_reported(job_id, category, &update))
                    .await?;
                if let Some(reported_at) = reported_at {
                    observe_report_latency(pushed_at, reported_at);
                    recorded.push(category);
                }
            }
        }
        for category in recorded {
            settled(job, category, outcome);
        }
        Ok(())
    }

    /// Records pushes that finished together: first their report deadline, then one write per
    /// gateway and attempt count, so the usual job (every category pushed at the first try)
    /// costs one publish and one write.
    async fn record_pushed(&self, job: &RefreshJob, pushed: &[PushMade]) -> Result<(), Unrecorded> {
        // The deadline before the record: a category recorded `pushed` always has one coming.
        // (Should the record fail, the deadline finds the category `pushing` and looks again
        // later, while a copy of the job carries the pushes to be recorded.)
        let deadline = ReportDeadline {
            version: DEADLINE_MESSAGE_VERSION,
            job_id: job.job_id,
            organization_id: job.organization_id,
            device_id: job.device_id,
            lane: job.lane,
            categories: pushed.iter().map(|p| p.category).collect(),
            repush: job.repush,
            trace: job.trace,
        };
        let publisher = &self.retry_publisher;
        self.publish("a report deadline", || {
            publisher.publish_deadline(&deadline)
        })
        .await
        .map_err(|halt| Unrecorded {
            halt,
            deadline_sent: Vec::new(),
        })?;
        self.settle_pushed(job, pushed)
            .await
            .map_err(|halt| Unrecorded {
                halt,
                deadline_sent: pushed.to_vec(),
            })
    }

    /// Records pushes whose deadline is published: one write per gateway and attempt count.
    async fn settle_pushed(&self, job: &RefreshJob, pushed: &[PushMade]) -> Result<(), Halt> {
        let mut groups: Vec<((Gateway, u32, DateTime), Vec<Category>)> = Vec::new();
        for push in pushed {
            let key = (
                push.gateway,
                push.attempts,
                DateTime::from_time_0_3(push.at),
            );
            match groups
                .iter_mut()
                .find(|(k, _)| (k.0, k.1) == (key.0, key.1))
            {
                Some((_, categories)) => categories.push(push.category),
                None => groups.push((key, vec![push.category])),
            }
        }
        for ((gateway, attempts, at), categories) in groups {
            let outcome = Outcome {
                to: CategoryState::Pushed,
                gateway: Some(gateway),
                attempts,
                error: None,
                pushed_at: Some(at),
            };
            self.settle(job, &categories, &outcome).await?;
        }
        Ok(())
    }

    async fn refresh_category(
        &self,
        job: &RefreshJob,
        device: &Device,
        category: Category,
        taken: Taken<'_>,
        held: &Held,
    ) -> Result<Ended, Halt> {
        let mut attempt = Attempt::new(self, job, category);
        let claimable = CategoryState::claimable(job.repush > 0);
        if !taken.whole {
            let taken_alone =
                attempt.claim(claimable).await? || self.take_over_abandoned(&mut attempt).await?;
            if !taken_alone {
                tracing::debug!(job_id = %job.job_id, %category, "settled, or pushed by another copy of the job: skipped");
                if taken.fresh.contains(&category) {
                    // Claimed on the device just now for a category the job has settled
                    // (this is a later delivery of its first message): never left held.
                    let (organization, device) = (job.organization_id, job.device_id);
                    let single = std::slice::from_ref(&category);
                    release(self, organization, device, single, job.job_id, None).await?;
                }
                return Ok(Ended::Settled);
            }
            held.take(&[category]);
        }
        let age = OffsetDateTime::now_utc() - job.requested_at;
        if age > self.job_max_age {
            let reason = format!(
                "not pushed within {}s of the request",
                self.job_max_age.as_secs()
            );
            return attempt
                .settle(CategoryState::Expired, None, Some(&reason))
                .await;
        }
        let routes = push_routes(device);
        let Some((&first, fallbacks)) = routes.split_first() else {
            let reason = "device has no push route (no agent, no live WNS channel)";
            return attempt
                .settle(CategoryState::Failed, None, Some(reason))
                .await;
        };
        let expires_at = job.requested_at + self.job_max_age;
        let payload = PushPayload::new(job.job_id, job.device_id, category, expires_at, job.trace);
        self.push_until_settled(&mut attempt, first, fallbacks, &payload)
            .await
    }

    /// `attempt`'s category could not be claimed: it is settled, or `pushing` for another
    /// delivery of the job. That one may be alive (a worker that lost only its channel to a
    /// broker node goes on pushing, with a heartbeat on the category every [`HEARTBEAT`]) or
    /// gone. Waits, reading the job, until the category leaves `pushing` (then it is claimed
    /// as usual, or was settled: false) or its heartbeat stays unchanged for
    /// [`ABANDONED_AFTER`], timed by this process's own clock so that clocks of different
    /// machines never compare (then the claim is taken over).
    async fn take_over_abandoned(&self, attempt: &mut Attempt<'_>) -> Result<bool, Halt> {
        let (job, category) = (attempt.job.job_id, attempt.category);
        let claimable = CategoryState::claimable(attempt.job.repush > 0);
        let mut unchanged_since: Option<(Option<DateTime>, Instant)> = None;
        loop {
            let Some(record) = self.store.job_by_id(job).await? else {
                return Ok(false);
            };
            let Some(current) = record.categories.get(&category) else {
                return Ok(false);
            };
            if current.state != CategoryState::Pushing {
                return Ok(claimable.contains(&current.state) && attempt.claim(claimable).await?);
            }
            match unchanged_since {
                Some((alive_at, since)) if alive_at == current.alive_at => {
                    if since.elapsed() >= ABANDONED_AFTER
                        && self.store.take_over_push(job, category, alive_at).await?
                    {
                        tracing::info!(job_id = %job, %category, "took over a push another delivery left");
                        return Ok(true);
                    }
                }
                _ => unchanged_since = Some((current.alive_at, Instant::now())),
            }
            tokio::select! {
                () = tokio::time::sleep(TAKEOVER_POLL) => {}
                () = self.shutdown.cancelled() => return Err(Halt::Shutdown),
            }
        }
    }

    /// Pushes through `route`, then the `fallbacks` in order when the device is unreachable
    /// through one, retrying by the policy within this delivery's budget, until the category is
    /// pushed, ends, or goes to a retry queue.
    async fn push_until_settled(
        &self,
        attempt: &mut Attempt<'_>,
        mut route: Route<'_>,
        fallbacks: &[Route<'_>],
        payload: &PushPayload,
    ) -> Result<Ended, Halt> {
        let (job, category) = (attempt.job, attempt.category);
        let mut next_routes = fallbacks.iter().copied();
        let mut schedule = self.push_retry.schedule();
        loop {
            if let Some(pause) = self.gateways.hold(route, payload) {
                // A pause longer than this delivery's in-process budget is waited out in the
                // retry queues, never in a worker slot.
                if !schedule.fits(pause) {
                    let detail = format!(
                        "the {} gateway asked for a pause of {} s for this device",
                        route.gateway(),
                        pause.as_secs()
                    );
                    return self.out_of_time(attempt, route.gateway(), &detail).await;
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = self.shutdown.cancelled() => return Err(Halt::Shutdown),
                }
            }
            let PushResult { verdict, detail } = self.gateways.push(route, payload).await;
            attempt.made += 1;
            let gateway = Some(route.gateway());
            let retry_after = match verdict {
                Verdict::Pushed => {
                    return Ok(Ended::Pushed(PushMade {
                        category,
                        gateway: route.gateway(),
                        attempts: attempt.made,
                        at: OffsetDateTime::now_utc(),
                    }));
                }
                Verdict::DeviceUnreachable => match next_routes.next() {
                    Some(next) => {
                        tracing::info!(job_id = %job.job_id, %category, %detail, "falling back to the next route");
                        route = next;
                        continue;
                    }
                    None => None,
                },
                Verdict::Retry { after } => after,
                Verdict::ChannelDead => {
                    self.store
                        .mark_wns_channel_dead(job.organization_id, job.device_id)
                        .await?;
                    let reason = format!("{detail}: WNS channel is gone, the device must re-enrol");
                    return attempt
                        .settle(CategoryState::Failed, gateway, Some(&reason))
                        .await;
                }
                // A 401 that survived a token renewal reaches here as Permanent.
                Verdict::Permanent | Verdict::RenewToken => {
                    return attempt
                        .settle(CategoryState::Failed, gateway, Some(&detail))
                        .await;
                }
            };
            // Never a wait past the in-process budget, whatever the gateway asked for.
            let Some(delay) = schedule.next_delay(retry_after) else {
                return self.out_of_time(attempt, route.gateway(), &detail).await;
            };
            // Recorded before the wait, so the job shows why it waits.
            attempt.record_retry(gateway, &detail).await?;
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => return Err(Halt::Shutdown),
            }
            if !attempt.claim(&[CategoryState::Retrying]).await? {
                return Ok(Ended::Settled);
            }
        }
    }

    /// The in-process retries of a category are spent: it waits in the next retry queue, or,
    /// after the last one, fails.
    async fn out_of_time(
        &self,
        attempt: &mut Attempt<'_>,
        gateway: Gateway,
        detail: &str,
    ) -> Result<Ended, Halt> {
        let round = usize::try_from(attempt.job.attempt).unwrap_or(usize::MAX);
        if round < self.retry_publisher.topology().retry_rounds() {
            attempt.record_retry(Some(gateway), detail).await?;
            return Ok(Ended::Deferred);
        }
        let reason = format!("gave up after {} rounds of retries: {detail}", round + 1);
        attempt
            .settle(CategoryState::Failed, Some(gateway), Some(&reason))
            .await
    }
}

/// One category of one job, and the pushes made for it.
struct Attempt<'a> {
    dispatcher: &'a Dispatcher,
    job: &'a RefreshJob,
    category: Category,
    /// Pushes not yet added to the stored `attempts`.
    made: u32,
}

impl<'a> Attempt<'a> {
    fn new(dispatcher: &'a Dispatcher, job: &'a RefreshJob, category: Category) -> Self {
        Attempt {
            dispatcher,
            job,
            category,
            made: 0,
        }
    }

    async fn write(&mut self, update: CategoryUpdate) -> Result<bool, StoreError> {
        let applied = self
            .dispatcher
            .transition(self.job.job_id, &[self.category], &update)
            .await?;
        self.made = 0;
        Ok(applied)
    }

    /// Moves the category to `pushing` if it is in one of the `from` states; false when it is
    /// settled, or another copy of the job is pushing it.
    async fn claim(&mut self, from: &'static [CategoryState]) -> Result<bool, StoreError> {
        self.write(claim_update(from)).await
    }

    async fn record_retry(
        &mut self,
        gateway: Option<Gateway>,
        detail: &str,
    ) -> Result<(), StoreError> {
        let update = CategoryUpdate {
            attempts: self.made,
            gateway,
            last_error: Some(detail.to_owned()),
            ..CategoryUpdate::to(CategoryState::Retrying)
        };
        self.write(update).await?;
        metrics::counter!(metric::PUSH_RETRIES).increment(1);
        Ok(())
    }

    async fn settle(
        &mut self,
        to: CategoryState,
        gateway: Option<Gateway>,
        error: Option<&str>,
    ) -> Result<Ended, Halt> {
        let outcome = Outcome {
            to,
            gateway,
            attempts: self.made,
            error,
            pushed_at: None,
        };
        self.dispatcher
            .settle(self.job, &[self.category], &outcome)
            .await?;
        self.made = 0;
        Ok(Ended::Settled)
    }
}

/// How categories ended (or were pushed), to be recorded.
struct Outcome<'a> {
    to: CategoryState,
    gateway: Option<Gateway>,
    /// Pushes not yet added to the stored `attempts`.
    attempts: u32,
    error: Option<&'a str>,
    /// When the gateway took the push, for `pushed`.
    pushed_at: Option<DateTime>,
}

/// Where a delivery is to push, once its job's claim on the device is made.
enum Target {
    /// These categories of the job, to this device; `fresh`: those of them this delivery
    /// claimed on the device itself.
    Push {
        device: Box<Device>,
        categories: Vec<Category>,
        fresh: Vec<Category>,
    },
    /// Every category fails, for this reason.
    Fail(String),
    /// Nothing: the categories are other jobs'.
    Nothing,
}

impl Target {
    /// Pushing `categories` to `device`, if it takes commands.
    fn of(device: Option<Device>, categories: Vec<Category>, fresh: Vec<Category>) -> Target {
        match device {
            Some(device) if device.state.refreshable() == Refreshable::Yes => Target::Push {
                device: Box::new(device),
                categories,
                fresh,
            },
            Some(device) => {
                Target::Fail(format!("device is {} and takes no commands", device.state))
            }
            None => Target::Fail("device no longer exists".to_owned()),
        }
    }
}

/// What a delivery took of a category before pushing it.
#[derive(Clone, Copy)]
struct Taken<'a> {
    /// The job's categories, all in one write: this one among them.
    whole: bool,
    /// The categories this delivery claimed on the device.
    fresh: &'a [Category],
}

/// The categories a delivery took to push (claimed or took over), for its heartbeat.
#[derive(Default)]
struct Held(std::sync::Mutex<Vec<Category>>);

impl Held {
    fn take(&self, categories: &[Category]) {
        let mut held = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for category in categories {
            if !held.contains(category) {
                held.push(*category);
            }
        }
    }

    fn categories(&self) -> Vec<Category> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// How often a delivery that runs long writes a heartbeat on the categories it took.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a `pushing` category's heartbeat must stay unchanged before it counts as
/// abandoned by the delivery that took it: several missed heartbeats, so a slow database
/// write or a busy process never looks like a dead one.
const ABANDONED_AFTER: Duration = Duration::from_secs(5);
/// How often a delivery looks at a push another delivery may still be making.
const TAKEOVER_POLL: Duration = Duration::from_millis(250);

/// Frees `job`'s claim on `categories` of the device (they are no longer outstanding), with
/// `reported_at` as their refresh time when the device reported them
/// ([`refresh_shared::store::Store::release_claims`]).
pub async fn release(
    dispatcher: &Dispatcher,
    organization: ObjectId,
    device: ObjectId,
    categories: &[Category],
    job: ObjectId,
    reported_at: Option<DateTime>,
) -> Result<(), Halt> {
    let store = &dispatcher.store;
    dispatcher
        .durably(|| store.release_claims(organization, device, categories, job, reported_at))
        .await
}

/// How `device` can be reached, in the order to try: its agent, then its live WNS channel.
fn push_routes(device: &Device) -> Vec<Route<'_>> {
    let agent = device.push.agent.then_some(Route::Agent);
    let wns = device
        .push
        .live_wns_channel()
        .map(|channel_uri| Route::Wns { channel_uri });
    agent.into_iter().chain(wns).collect()
}

/// Moves categories to `pushing` if each is in one of the `from` states.
fn claim_update(from: &'static [CategoryState]) -> CategoryUpdate {
    CategoryUpdate {
        from,
        ..CategoryUpdate::to(CategoryState::Pushing)
    }
}

/// Counts and logs a category's recorded end.
fn settled(job: &RefreshJob, category: Category, outcome: &Outcome<'_>) {
    let state = outcome.to.as_str();
    metrics::counter!(
        metric::CATEGORIES,
        "outcome" => state,
        "gateway" => outcome.gateway.map_or("none", Gateway::as_str),
    )
    .increment(1);
    match outcome.error {
        Some(error) => {
            tracing::warn!(job_id = %job.job_id, %category, state, %error, "category settled")
        }
        None => tracing::info!(job_id = %job.job_id, %category, state, "category settled"),
    }
}
