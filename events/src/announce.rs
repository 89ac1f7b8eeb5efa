//! Announcing webhook events: when a job's category is reported, a job finishes or a batch
//! does, each endpoint of the organization subscribed to that event gets a delivery — a log
//! entry in `webhook_deliveries` and a message on the webhooks queue carrying the signed-to-be
//! body — and only then is the event marked announced on the job or batch. At least once: a
//! process that dies between the two announces again the next time it, or anyone, looks (the
//! same `webhook-id`, so receivers can tell); a marked event is never announced again, however
//! often a late deadline or report looks at the job.
//!
//! Organizations without endpoints, nearly all work of a fleet, cost no read: who subscribes to
//! what is cached for [`SUBSCRIBERS_TTL`], so an endpoint added or removed counts from then on.
//! A job or batch is announced under a turn on it in this process, read afresh: a report and
//! the job's own delivery ending it at once announce it once (processes racing may repeat it).

use crate::view::{BatchView, CategoryReported, CategoryView, EventBody, JobView, rfc3339};
use bson::{DateTime, oid::ObjectId};
use moka::future::Cache;
use refresh_shared::{
    broker::{BrokerError, Publisher},
    job::CategoryState,
    store::{Announced, BatchRecord, CategoryRecord, JobRecord, Store, StoreError},
    turns::Turns,
    webhook::{DELIVERY_MESSAGE_VERSION, EndpointState, WebhookDelivery, WebhookEvent},
};
use serde::Serialize;
use std::{sync::Arc, time::Duration};

/// How long who subscribes to what is remembered per organization.
pub const SUBSCRIBERS_TTL: Duration = Duration::from_secs(1);
/// Organizations whose subscribers are remembered at once.
const CACHED_ORGANIZATIONS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("could not queue a webhook delivery: {0}")]
    Broker(#[from] BrokerError),
}

impl AnnounceError {
    /// Whether the database or the broker is away for now: the announcement is worth making
    /// again (it is idempotent) once it is back.
    pub fn is_unavailable(&self) -> bool {
        match self {
            AnnounceError::Store(error) => error.is_unavailable(),
            AnnounceError::Broker(error) => error.is_unavailable(),
        }
    }
}

/// Whether the pushes of a job's categories may still be being recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushes {
    /// Anyone but a delivery ending: a delivery may be about to record a push.
    MayBeUnrecorded,
    /// A delivery of the job ending: what it pushed is recorded.
    Recorded,
}

/// An endpoint and what it subscribed to.
#[derive(Debug, Clone)]
struct Subscriber {
    endpoint: ObjectId,
    events: Vec<WebhookEvent>,
}

pub struct Announcer {
    store: Store,
    publisher: Arc<Publisher>,
    subscribers: Cache<ObjectId, Arc<Vec<Subscriber>>>,
    /// One announcement at a time per job or batch.
    turns: Turns,
}

impl Announcer {
    pub fn new(store: Store, publisher: Arc<Publisher>) -> Announcer {
        Announcer {
            store,
            publisher,
            subscribers: Cache::builder()
                .max_capacity(CACHED_ORGANIZATIONS)
                .time_to_live(SUBSCRIBERS_TTL)
                .build(),
            turns: Turns::default(),
        }
    }

    /// Announces what of the job has ended and was not announced yet: each category reported,
    /// and the job finished. Called after anything that may end a category; reads the job
    /// only when the organization subscribes to one of those events.
    ///
    /// A category the device reported while a delivery was still pushing it is not whole
    /// until that delivery records the push (its gateway, time, attempts): it and the job's
    /// end wait for [`Announcer::job_delivered`], which that delivery makes when it ends.
    pub async fn job(&self, organization: ObjectId, job: ObjectId) -> Result<(), AnnounceError> {
        self.job_when(organization, job, Pushes::MayBeUnrecorded)
            .await
    }

    /// [`Announcer::job`] made by a delivery of the job as it ends: whatever of its pushes it
    /// could record is recorded (a push it could not is never going to be), so nothing waits.
    pub async fn job_delivered(
        &self,
        organization: ObjectId,
        job: ObjectId,
    ) -> Result<(), AnnounceError> {
        self.job_when(organization, job, Pushes::Recorded).await
    }

    async fn job_when(
        &self,
        organization: ObjectId,
        job: ObjectId,
        pushes: Pushes,
    ) -> Result<(), AnnounceError> {
        let subscribers = self.subscribers(organization).await?;
        if subscribers.is_empty() {
            return Ok(());
        }
        let _turn = self.turns.turn(job).await;
        match self.store.job_by_id(job).await? {
            Some(record) => self.job_record(&record, &subscribers, pushes).await,
            None => Ok(()),
        }
    }

    /// [`Announcer::job`] with the job as it was read in the turn; a batch job whose outcome
    /// is recorded may have finished its batch too.
    async fn job_record(
        &self,
        job: &JobRecord,
        subscribers: &[Subscriber],
        pushes: Pushes,
    ) -> Result<(), AnnounceError> {
        let announced = |what: Announced| job.announced.iter().any(|key| key == what.key());
        // A reported category whose push its delivery may still record.
        let waiting =
            |record: &CategoryRecord| pushes == Pushes::MayBeUnrecorded && record.push_unrecorded;
        let mut waited = false;
        for (&category, record) in &job.categories {
            let what = Announced::Reported(category);
            if record.state != CategoryState::Reported || announced(what) {
                continue;
            }
            if waiting(record) {
                waited = true;
                continue;
            }
            let event = WebhookEvent::CategoryReported;
            let data = CategoryReported {
                job_id: job.id.to_hex(),
                organization_id: job.organization.to_hex(),
                device_id: job.device.to_hex(),
                category,
                entry: CategoryView::from(record),
            };
            let at = record.reported_at.unwrap_or(job.updated_at);
            let message_id = format!("msg_{}_{category}_reported", job.id);
            self.deliver(job.organization, subscribers, event, &message_id, at, &data)
                .await?;
            self.store.mark_job_announced(job.id, what).await?;
        }
        if job.state().is_finished() && !announced(Announced::Finished) && !waited {
            let event = WebhookEvent::JobFinished;
            let message_id = format!("msg_{}_job_finished", job.id);
            let data = JobView::from(job);
            self.deliver(
                job.organization,
                subscribers,
                event,
                &message_id,
                job.updated_at,
                &data,
            )
            .await?;
            self.store
                .mark_job_announced(job.id, Announced::Finished)
                .await?;
        }
        let batch_subscribed = subscribed(subscribers, WebhookEvent::BatchFinished)
            .next()
            .is_some();
        if let (Some(batch), Some(_), true) = (job.batch, job.outcome, batch_subscribed) {
            self.batch(batch).await?;
        }
        Ok(())
    }

    /// Announces the batch's end, if it has ended and that was not announced yet.
    pub async fn batch(&self, batch: ObjectId) -> Result<(), AnnounceError> {
        let _turn = self.turns.turn(batch).await;
        match self.store.batch_by_id(batch).await? {
            Some(record) => self.batch_record(&record).await,
            None => Ok(()),
        }
    }

    /// [`Announcer::batch`] with the batch as it was read in the turn.
    async fn batch_record(&self, batch: &BatchRecord) -> Result<(), AnnounceError> {
        if batch.announced || !batch.state().is_final() {
            return Ok(());
        }
        let subscribers = self.subscribers(batch.organization).await?;
        let event = WebhookEvent::BatchFinished;
        if subscribed(&subscribers, event).next().is_none() {
            return Ok(());
        }
        let message_id = format!("msg_{}_batch_finished", batch.id);
        let at = (batch.finished_at.or(batch.canceled_at)).unwrap_or(batch.created_at);
        let data = BatchView::from(batch);
        self.deliver(
            batch.organization,
            &subscribers,
            event,
            &message_id,
            at,
            &data,
        )
        .await?;
        self.store.mark_batch_announced(batch.id).await?;
        Ok(())
    }

    /// Hands `event` to every endpoint subscribed to it: a log entry each, then its message.
    async fn deliver<T: Serialize>(
        &self,
        organization: ObjectId,
        subscribers: &[Subscriber],
        event: WebhookEvent,
        message_id: &str,
        at: DateTime,
        data: &T,
    ) -> Result<(), AnnounceError> {
        let body = EventBody {
            event,
            timestamp: rfc3339(at),
            data,
        };
        // Views of ids, strings and numbers cannot fail to serialise.
        let body = serde_json::to_string(&body).unwrap_or_default();
        for endpoint in subscribed(subscribers, event) {
            let log_id = self
                .store
                .open_delivery(organization, endpoint, event, message_id)
                .await?;
            let delivery = WebhookDelivery {
                version: DELIVERY_MESSAGE_VERSION,
                organization_id: organization,
                endpoint_id: endpoint,
                log_id,
                event,
                message_id: message_id.to_owned(),
                body: body.clone(),
                attempts: 0,
            };
            self.publisher.publish_webhook(&delivery, None).await?;
            tracing::debug!(%endpoint, message_id, event = event.as_str(), "webhook delivery queued");
        }
        Ok(())
    }

    /// The organization's endpoints that are delivered to, and their events.
    async fn subscribers(
        &self,
        organization: ObjectId,
    ) -> Result<Arc<Vec<Subscriber>>, StoreError> {
        if let Some(known) = self.subscribers.get(&organization).await {
            return Ok(known);
        }
        let endpoints = self.store.webhooks(organization).await?;
        let subscribers: Vec<Subscriber> = endpoints
            .into_iter()
            .filter(|endpoint| endpoint.state != EndpointState::Disabled)
            .map(|endpoint| Subscriber {
                endpoint: endpoint.id,
                events: endpoint.events,
            })
            .collect();
        let subscribers = Arc::new(subscribers);
        self.subscribers
            .insert(organization, Arc::clone(&subscribers))
            .await;
        Ok(subscribers)
    }
}

/// The endpoints among `subscribers` that subscribed to `event`.
fn subscribed(
    subscribers: &[Subscriber],
    event: WebhookEvent,
) -> impl Iterator<Item = ObjectId> + '_ {
    subscribers
        .iter()
        .filter(move |subscriber| subscriber.events.contains(&event))
        .map(|subscriber| subscriber.endpoint)
}
