use super::{DUPLICATE_KEY, Store, StoreError, newest_first, tenant};
use crate::{
    Category,
    batch::DeviceOutcome,
    device::Gateway,
    job::{CategoryState, JobState, Lane, MESSAGE_VERSION, RefreshJob},
    report::ReportSource,
    trace::TraceParent,
};
use bson::{Bson, DateTime, Document, doc, oid::ObjectId};
use futures::{TryStreamExt, future::join_all};
use mongodb::{
    error::{ErrorKind, PartialBulkWriteResult},
    options::{UpdateOneModel, WriteModel},
    results::VerboseBulkWriteResult,
};
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, HashMap},
    sync::atomic::Ordering,
};
use time::OffsetDateTime;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub organization: ObjectId,
    pub device: ObjectId,
    pub created_at: DateTime,
    pub updated_at: DateTime,
    pub lane: Lane,
    pub categories: BTreeMap<Category, CategoryRecord>,
    /// The batch this job was expanded from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<ObjectId>,
    /// The entry of the batch's `deviceIds` (or the device id, for a filter) that made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_key: Option<String>,
    /// Set (batch jobs only) once every category is settled: what the batch counts it as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<DeviceOutcome>,
    /// The webhook events of this job handed to its subscribers' deliveries, by key
    /// ([`Announced`]): an event is announced until it is in here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub announced: Vec<String>,
}

/// What of a job or batch has been announced to webhook subscribers, as its `announced` list
/// keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// The job, or the batch, finished.
    Finished,
    /// The job's category was reported.
    Reported(Category),
}

impl Announced {
    pub fn key(self) -> &'static str {
        match self {
            Announced::Finished => "finished",
            Announced::Reported(category) => category.as_str(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CategoryRecord {
    pub state: CategoryState,
    pub attempts: u32,
    pub gateway: Option<Gateway>,
    pub last_error: Option<String>,
    /// When a gateway last took a wake-up for it.
    pub pushed_at: Option<DateTime>,
    /// When the worker applied the device's report of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<DateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_source: Option<ReportSource>,
    /// The last heartbeat of a delivery that took it to push, when that delivery ran long:
    /// while it changes, the category's `pushing` is nobody else's to take over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alive_at: Option<DateTime>,
    /// Set while a delivery has taken it to push and not yet recorded how that went. A report
    /// that comes first leaves it set: the category's entry is not whole until the push is
    /// recorded, and its announcement waits for that (see `refresh_events::announce`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub push_unrecorded: bool,
}

impl JobRecord {
    pub fn new(
        organization: ObjectId,
        device: ObjectId,
        categories: &[Category],
        lane: Lane,
    ) -> JobRecord {
        let now = DateTime::now();
        JobRecord {
            id: ObjectId::new(),
            organization,
            device,
            created_at: now,
            updated_at: now,
            lane,
            batch: None,
            batch_key: None,
            outcome: None,
            announced: Vec::new(),
            categories: categories
                .iter()
                .map(|&category| {
                    let record = CategoryRecord {
                        state: CategoryState::Queued,
                        attempts: 0,
                        gateway: None,
                        last_error: None,
                        pushed_at: None,
                        reported_at: None,
                        report_source: None,
                        alive_at: None,
                        push_unrecorded: false,
                    };
                    (category, record)
                })
                .collect(),
        }
    }

    pub fn state(&self) -> JobState {
        JobState::derive(self.categories.values().map(|c| c.state))
    }

    /// The message that hands this job's `categories` to a worker for the first time, in the
    /// trace of the request that made it.
    pub fn message(&self, categories: Vec<Category>, trace: Option<TraceParent>) -> RefreshJob {
        RefreshJob {
            version: MESSAGE_VERSION,
            job_id: self.id,
            organization_id: self.organization,
            device_id: self.device,
            categories,
            requested_at: OffsetDateTime::now_utc(),
            lane: self.lane,
            attempt: 0,
            repush: 0,
            pushed: Vec::new(),
            claim_unless_reported_after: None,
            trace,
        }
    }

    /// The categories no worker has taken yet.
    pub fn queued_categories(&self) -> Vec<Category> {
        self.categories
            .iter()
            .filter(|(_, record)| record.state == CategoryState::Queued)
            .map(|(&category, _)| category)
            .collect()
    }
}

/// Whether every write error of an unordered `insert_many` is a duplicate key.
fn only_duplicates(error: &mongodb::error::Error) -> bool {
    match &*error.kind {
        mongodb::error::ErrorKind::InsertMany(failed) => {
            failed.write_concern_error.is_none()
                && failed
                    .write_errors
                    .as_ref()
                    .is_some_and(|errors| errors.iter().all(|e| e.code == DUPLICATE_KEY))
        }
        _ => false,
    }
}

/// Adds to a job's `filter` that each of `categories` is `queued`, and returns the `$unset`
/// fields that take them out of the job.
fn unset_while_queued(filter: &mut Document, categories: &[Category]) -> Document {
    let mut fields = Document::new();
    for category in categories {
        let field = format!("categories.{category}");
        filter.insert(format!("{field}.state"), CategoryState::Queued.as_str());
        fields.insert(field, "");
    }
    fields
}

/// How long ago a category's last report must be for it to be refreshed: the skip window, or
/// the request's `maxAgeSecs` when longer (it never undercuts the window).
pub fn stale_after(
    skip_window: std::time::Duration,
    max_age: Option<std::time::Duration>,
) -> std::time::Duration {
    max_age.map_or(skip_window, |age| age.max(skip_window))
}

/// A category reported after the returned instant is not pushed again (the skip window).
pub fn skip_cutoff(window: std::time::Duration) -> DateTime {
    let window = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    DateTime::from_millis(DateTime::now().timestamp_millis().saturating_sub(window))
}

/// One guarded move of a category's state, with what the attempt learnt.
#[derive(Debug, Clone)]
pub struct CategoryUpdate {
    pub to: CategoryState,
    /// The states the move is allowed from (by default, all of `to`'s allowed sources).
    pub from: &'static [CategoryState],
    /// Push attempts this write accounts for (added to `attempts`).
    pub attempts: u32,
    pub gateway: Option<Gateway>,
    pub last_error: Option<String>,
    /// When the gateway took the push this write records.
    pub pushed_at: Option<DateTime>,
}

impl CategoryUpdate {
    pub fn to(to: CategoryState) -> CategoryUpdate {
        CategoryUpdate {
            to,
            from: to.allowed_sources(),
            attempts: 0,
            gateway: None,
            last_error: None,
            pushed_at: None,
        }
    }
}

/// One guarded move of a job's categories ([`Store::transition`]), as a group takes it.
#[derive(Debug, Clone)]
pub struct Transition {
    pub job: ObjectId,
    pub categories: Vec<Category>,
    pub update: CategoryUpdate,
}

impl Store {
    /// Inserts a new job. A duplicate of its id can only be this insert itself, landed on an
    /// attempt whose answer was lost and then retried by the driver (a server that does not
    /// recognise retried writes refuses the retry as a duplicate): that is success.
    pub async fn insert_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        match self.jobs.insert_one(job).await {
            Err(error) if !StoreError::is_duplicate_key(&error) => Err(error.into()),
            _ => Ok(()),
        }
    }

    /// Inserts new jobs, unordered: as for [`Store::insert_job`], ids already there are this
    /// insert's own earlier attempt, and every other job is still inserted.
    pub async fn insert_jobs(&self, jobs: &[JobRecord]) -> Result<(), StoreError> {
        if jobs.is_empty() {
            return Ok(());
        }
        match self.jobs.insert_many(jobs).ordered(false).await {
            Err(error) if !only_duplicates(&error) => Err(error.into()),
            _ => Ok(()),
        }
    }

    /// Removes a job that was never published.
    pub async fn delete_job(&self, id: ObjectId) -> Result<(), StoreError> {
        self.jobs.delete_one(doc! { "_id": id }).await?;
        Ok(())
    }

    /// The jobs `batch` already made for any of `devices`.
    pub async fn batch_jobs_for(
        &self,
        organization: ObjectId,
        batch: ObjectId,
        devices: &[ObjectId],
    ) -> Result<Vec<JobRecord>, StoreError> {
        let filter = tenant(
            organization,
            doc! { "batch": batch, "device": { "$in": devices } },
        );
        Ok(self.jobs.find(filter).await?.try_collect().await?)
    }

    /// Records a batch job's outcome once every category is settled, and counts it in its
    /// batch; a no-op before that, for jobs outside batches, and when already recorded (the
    /// write is conditional, so a redelivery never counts a job twice).
    pub async fn record_outcome(&self, id: ObjectId) -> Result<(), StoreError> {
        match self.job_by_id(id).await? {
            Some(job) => self.record_outcome_of(&job).await,
            None => Ok(()),
        }
    }

    /// [`Store::record_outcome`] of a job as just read.
    pub async fn record_outcome_of(&self, job: &JobRecord) -> Result<(), StoreError> {
        let (Some(batch), None) = (job.batch, job.outcome) else {
            return Ok(());
        };
        let Some(outcome) = DeviceOutcome::of(job.categories.values().map(|c| c.state)) else {
            return Ok(());
        };
        let recorded = self
            .jobs
            .update_one(
                doc! { "_id": job.id, "outcome": { "$exists": false } },
                doc! { "$set": { "outcome": outcome.as_str() } },
            )
            .await?;
        if recorded.modified_count == 1 {
            self.count_outcome(batch, outcome).await?;
        }
        Ok(())
    }

    /// How many of `batch`'s jobs ended each way, and when the last of them was written, counted
    /// from the jobs themselves.
    pub async fn batch_outcomes(
        &self,
        organization: ObjectId,
        batch: ObjectId,
    ) -> Result<(BTreeMap<DeviceOutcome, u64>, Option<DateTime>), StoreError> {
        let pipeline = [
            doc! { "$match": tenant(organization, doc! { "batch": batch, "outcome": { "$exists": true } }) },
            doc! { "$group": { "_id": "$outcome", "n": { "$sum": 1 }, "last": { "$max": "$updatedAt" } } },
        ];
        #[derive(Deserialize)]
        struct Group {
            #[serde(rename = "_id")]
            outcome: DeviceOutcome,
            n: i64,
            last: Option<DateTime>,
        }
        let mut groups = self.jobs.aggregate(pipeline).with_type::<Group>().await?;
        let (mut counts, mut last) = (BTreeMap::new(), None);
        while let Some(group) = groups.try_next().await? {
            counts.insert(group.outcome, u64::try_from(group.n).unwrap_or(0));
            last = last.max(group.last);
        }
        Ok((counts, last))
    }

    /// Takes `categories` out of a job, those still `queued` (another job holds them, or the
    /// device reported them recently): in one write when all are, else one at a time, so
    /// that a category a delivery of the job already took stays.
    pub async fn drop_categories(
        &self,
        id: ObjectId,
        categories: &[Category],
    ) -> Result<(), StoreError> {
        if self.drop_queued(id, categories).await? || categories.len() < 2 {
            return Ok(());
        }
        for category in categories {
            self.drop_queued(id, std::slice::from_ref(category)).await?;
        }
        Ok(())
    }

    /// Unsets `categories` of job `id` if every one is `queued`; whether it did.
    async fn drop_queued(&self, id: ObjectId, categories: &[Category]) -> Result<bool, StoreError> {
        let mut filter = doc! { "_id": id };
        let fields = unset_while_queued(&mut filter, categories);
        let result = self
            .jobs
            .update_one(filter, doc! { "$unset": fields })
            .await?;
        Ok(result.matched_count == 1)
    }

    /// Ends a batch's job that got none of its `categories` when it first ran (each another
    /// job's, or reported recently): they are taken out and its outcome is
    /// [`DeviceOutcome::Coalesced`], if they are all it has and all still `queued` (a delivery
    /// of the job that took one goes on with it). Returns the batch to count it in when this
    /// call ended it (one call only: the write is conditional).
    pub async fn coalesce_job(
        &self,
        id: ObjectId,
        categories: &[Category],
    ) -> Result<Option<ObjectId>, StoreError> {
        let mut filter =
            doc! { "_id": id, "batch": { "$exists": true }, "outcome": { "$exists": false } };
        let fields = unset_while_queued(&mut filter, categories);
        for category in Category::ALL.iter().filter(|c| !categories.contains(c)) {
            filter.insert(format!("categories.{category}"), doc! { "$exists": false });
        }
        let update = doc! {
            "$set": { "outcome": DeviceOutcome::Coalesced.as_str(), "updatedAt": DateTime::now() },
            "$unset": fields,
        };
        let before = self.jobs.find_one_and_update(filter, update).await?;
        Ok(before.and_then(|job| job.batch))
    }

    /// A job of `organization`, as callers see jobs: a batch's job that coalesced is only a
    /// count of its batch (its device was another job's), not one of them.
    pub async fn job(
        &self,
        organization: ObjectId,
        id: ObjectId,
    ) -> Result<Option<JobRecord>, StoreError> {
        let filter = doc! { "_id": id, "outcome": { "$ne": DeviceOutcome::Coalesced.as_str() } };
        Ok(self.jobs.find_one(tenant(organization, filter)).await?)
    }

    /// A page of a device's history: up to `limit` of its jobs, newest first, from just past
    /// the job `after` when given. Ordered by id (its creation, to the second, then in the
    /// order each process made them): a page never shifts as jobs are added, since a new job's
    /// id is past every cursor handed out before it.
    pub async fn device_jobs(
        &self,
        organization: ObjectId,
        device: ObjectId,
        after: Option<ObjectId>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let filter =
            doc! { "device": device, "outcome": { "$ne": DeviceOutcome::Coalesced.as_str() } };
        newest_first(&self.jobs, organization, filter, after, limit).await
    }

    /// Records that `what` of job `id` was handed to its subscribers' deliveries.
    pub async fn mark_job_announced(
        &self,
        id: ObjectId,
        what: Announced,
    ) -> Result<(), StoreError> {
        self.jobs
            .update_one(
                doc! { "_id": id },
                doc! { "$addToSet": { "announced": what.key() } },
            )
            .await?;
        Ok(())
    }

    /// Job by id across organizations: for the worker (which got the id from its own queue) and
    /// for operators.
    pub async fn job_by_id(&self, id: ObjectId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.jobs.find_one(doc! { "_id": id }).await?)
    }

    /// Applies `update` to `categories` of a job in one write, only if every one of them is in a
    /// state `update.to` may be reached from. Returns whether it applied: a guarded write, never
    /// read-then-write, so concurrent or redelivered work cannot move a state backwards.
    pub async fn transition(
        &self,
        job: ObjectId,
        categories: &[Category],
        update: &CategoryUpdate,
    ) -> Result<bool, StoreError> {
        let (filter, change) = transition_statement(job, categories, update);
        let result = self.jobs.update_one(filter, change).await?;
        Ok(result.matched_count == 1)
    }

    /// [`Store::transition`] of many jobs at once, each answered on its own, applied in order:
    /// one client `bulkWrite` (MongoDB 8; SecantusDB), whose matched count per statement says
    /// which applied. On a server without it, one statement at a time per job, the jobs at
    /// once.
    pub async fn transitions(
        &self,
        transitions: &[Transition],
    ) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
        if !self.bulk_write_missing.load(Ordering::Relaxed) {
            let models: Vec<WriteModel> = transitions
                .iter()
                .map(|transition| {
                    let (filter, change) = transition_statement(
                        transition.job,
                        &transition.categories,
                        &transition.update,
                    );
                    UpdateOneModel::builder()
                        .namespace(self.jobs.namespace())
                        .filter(filter)
                        .update(change)
                        .build()
                        .into()
                })
                .collect();
            let written = self
                .database
                .client()
                .bulk_write(models)
                .ordered(false)
                .verbose_results()
                .await;
            match written {
                Ok(result) => return Ok(matched(transitions.len(), &result, &HashMap::new())),
                Err(error) => match *error.kind {
                    ErrorKind::BulkWrite(ref failed) => {
                        if let Some(concern) = failed.write_concern_errors.first() {
                            return Err(StoreError::NotAcknowledged(concern.message.clone()));
                        }
                        let Some(PartialBulkWriteResult::Verbose(result)) = &failed.partial_result
                        else {
                            return Err(error.into());
                        };
                        return Ok(matched(transitions.len(), result, &failed.write_errors));
                    }
                    ErrorKind::IncompatibleServer { .. } => {
                        tracing::info!(
                            "the database has no bulkWrite: transitions are written one by one"
                        );
                        self.bulk_write_missing.store(true, Ordering::Relaxed);
                    }
                    _ => return Err(error.into()),
                },
            }
        }
        // One job's transitions in their order (a group's later one may depend on an earlier
        // one), different jobs' at once.
        let mut by_job: BTreeMap<ObjectId, Vec<usize>> = BTreeMap::new();
        for (index, transition) in transitions.iter().enumerate() {
            by_job.entry(transition.job).or_default().push(index);
        }
        let written = join_all(by_job.values().map(|indices| async move {
            let mut answers = Vec::with_capacity(indices.len());
            for &index in indices {
                let transition = &transitions[index];
                let answer = self
                    .transition(transition.job, &transition.categories, &transition.update)
                    .await;
                answers.push((index, answer));
            }
            answers
        }))
        .await;
        let mut answers: Vec<Result<bool, StoreError>> = vec![Ok(false); transitions.len()];
        for (index, answer) in written.into_iter().flatten() {
            answers[index] = answer;
        }
        Ok(answers)
    }

    /// Marks `categories` of a job as held by a delivery that is alive (their `aliveAt`).
    pub async fn touch_claims(
        &self,
        job: ObjectId,
        categories: &[Category],
    ) -> Result<(), StoreError> {
        let now = DateTime::now();
        let set: Document = categories
            .iter()
            .map(|c| (format!("categories.{c}.aliveAt"), Bson::DateTime(now)))
            .collect();
        self.jobs
            .update_one(doc! { "_id": job }, doc! { "$set": set })
            .await?;
        Ok(())
    }

    /// Takes over `category` of a job from a delivery that left it `pushing`, whose last
    /// heartbeat was `alive_at`: only if it is still `pushing` with that heartbeat, so of two
    /// deliveries taking it over, one wins.
    pub async fn take_over_push(
        &self,
        job: ObjectId,
        category: Category,
        alive_at: Option<DateTime>,
    ) -> Result<bool, StoreError> {
        let field = |name: &str| format!("categories.{category}.{name}");
        let filter = doc! {
            "_id": job,
            field("state"): CategoryState::Pushing.as_str(),
            // `null` also matches a category no heartbeat was written for.
            field("aliveAt"): alive_at.map_or(Bson::Null, Bson::DateTime),
        };
        let change = doc! { "$set": { field("aliveAt"): DateTime::now() } };
        let result = self.jobs.update_one(filter, change).await?;
        Ok(result.matched_count == 1)
    }

    /// Records the push of a category the device reported before the push itself was recorded
    /// (a fast device answers while the worker is still writing): the push's gateway, attempts
    /// and time, once (only while no later push is recorded). Returns when the category was
    /// reported, if this write recorded its push.
    pub async fn record_push_of_reported(
        &self,
        job: ObjectId,
        category: Category,
        update: &CategoryUpdate,
    ) -> Result<Option<DateTime>, StoreError> {
        let field = |name: &str| format!("categories.{category}.{name}");
        let Some(at) = update.pushed_at else {
            return Ok(None);
        };
        let filter = doc! {
            "_id": job,
            field("state"): CategoryState::Reported.as_str(),
            // Not `$lt`: that would not match a category never pushed before (null).
            field("pushedAt"): { "$not": { "$gte": at } },
        };
        let mut set = doc! { field("pushedAt"): at };
        if let Some(gateway) = update.gateway {
            set.insert(field("gateway"), gateway.as_str());
        }
        let change = doc! {
            "$set": set,
            "$inc": { field("attempts"): i64::from(update.attempts) },
            "$unset": { field("pushUnrecorded"): "" },
        };
        let before = self.jobs.find_one_and_update(filter, change).await?;
        Ok(before.and_then(|job| job.categories.get(&category)?.reported_at))
    }
}

/// The guarded write of [`Store::transition`]: filter and change.
fn transition_statement(
    job: ObjectId,
    categories: &[Category],
    update: &CategoryUpdate,
) -> (Document, Document) {
    let sources: Vec<&str> = update.from.iter().map(|s| s.as_str()).collect();
    let mut filter = doc! { "_id": job };
    let mut set = doc! { "updatedAt": DateTime::now() };
    let (mut inc, mut unset) = (Document::new(), Document::new());
    for category in categories {
        let field = |name: &str| format!("categories.{category}.{name}");
        filter.insert(field("state"), doc! { "$in": sources.clone() });
        set.insert(field("state"), update.to.as_str());
        if let Some(gateway) = update.gateway {
            set.insert(field("gateway"), gateway.as_str());
        }
        if let Some(error) = &update.last_error {
            set.insert(field("lastError"), error.as_str());
        }
        if let Some(at) = update.pushed_at {
            set.insert(field("pushedAt"), at);
        }
        if update.attempts > 0 {
            inc.insert(field("attempts"), i64::from(update.attempts));
        }
        if update.to == CategoryState::Pushing {
            set.insert(field("pushUnrecorded"), true);
        } else {
            unset.insert(field("pushUnrecorded"), "");
        }
    }
    let mut change = doc! { "$set": set };
    if !inc.is_empty() {
        change.insert("$inc", Bson::Document(inc));
    }
    if !unset.is_empty() {
        change.insert("$unset", Bson::Document(unset));
    }
    (filter, change)
}

/// Each of `count` statements' answer from a bulk write's verbose result: applied when it
/// matched its job, refused when the server said so.
fn matched(
    count: usize,
    result: &VerboseBulkWriteResult,
    refused: &HashMap<usize, mongodb::error::WriteError>,
) -> Vec<Result<bool, StoreError>> {
    (0..count)
        .map(
            |index| match (result.update_results.get(&index), refused.get(&index)) {
                (_, Some(error)) => Err(StoreError::Refused {
                    code: error.code,
                    message: error.message.clone(),
                }),
                (Some(update), None) => Ok(update.matched_count == 1),
                (None, None) => Ok(false),
            },
        )
        .collect()
}
