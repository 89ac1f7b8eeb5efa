//! Publishing: jobs, retries, expansion requests and announcements, persistent and mandatory
//! on a confirm-mode channel, answered only once the broker has taken responsibility for the
//! message. (Reading the queues is [`super::Queues`]; following announcements is
//! [`super::invalidations::follow`].)
//!
//! Concurrent requests share one channel, so their confirms are pipelined: nobody waits for
//! another request's confirm. A dead connection is replaced on the next publish.

use super::{BrokerError, Topology, connect};
use crate::{
    batch::ExpandBatch,
    deadline::ReportDeadline,
    job::RefreshJob,
    report::DeviceReport,
    settings::AmqpSettings,
    trace::{self, TraceParent},
    webhook::WebhookDelivery,
};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
};
use secrecy::SecretString;
use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::Mutex;

/// AMQP delivery mode 2: the broker writes the message to disk before confirming it.
const PERSISTENT: u8 = 2;

pub struct Publisher {
    url: SecretString,
    name: String,
    topology: Topology,
    confirm_timeout: Duration,
    link: RwLock<Option<Arc<Link>>>,
    /// Held while one task connects. The others wait for that attempt and share its outcome:
    /// a burst of publishes on a publisher not yet connected all go out once it is, and in an
    /// outage no request makes an attempt of its own behind another's.
    connecting: Mutex<()>,
    /// Connection attempts that ended (either way), to tell whether one ended while waiting.
    attempts: AtomicU64,
}

struct Link {
    connection: Connection,
    channel: Channel,
}

/// A body, the id it is published under, and the trace it belongs to.
pub(super) struct Message {
    id: String,
    body: Vec<u8>,
    trace: Option<TraceParent>,
}

impl Message {
    pub(super) fn new(id: &str, body: Vec<u8>) -> Message {
        Message {
            id: id.to_owned(),
            body,
            trace: None,
        }
    }

    fn job(job: &RefreshJob) -> Message {
        Message {
            trace: job.trace,
            ..Message::new(&job.job_id.to_hex(), job.encode())
        }
    }
}

impl Publisher {
    /// Connects and declares the topology; fails when the broker cannot be reached now.
    pub async fn connect(settings: &AmqpSettings, name: &str) -> Result<Publisher, BrokerError> {
        let publisher = Publisher::lazy(settings, name);
        publisher.link().await?;
        Ok(publisher)
    }

    /// A publisher that connects on its first publish.
    pub fn lazy(settings: &AmqpSettings, name: &str) -> Publisher {
        Publisher {
            url: settings.url.clone(),
            name: name.to_owned(),
            topology: Topology::new(settings),
            confirm_timeout: settings.confirm_timeout,
            link: RwLock::new(None),
            connecting: Mutex::new(()),
            attempts: AtomicU64::new(0),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Whether the publisher holds a live channel right now.
    pub fn is_connected(&self) -> bool {
        self.current()
            .is_some_and(|link| link.channel.status().connected())
    }

    /// Publishes `job` to its lane and waits for the broker's confirm. `Ok` means RabbitMQ has
    /// stored it. Concurrent calls share the channel, so their confirms are pipelined.
    pub async fn publish(&self, job: &RefreshJob) -> Result<(), BrokerError> {
        let exchange = self.topology.jobs_exchange();
        let message = Message::job(job);
        self.publish_to(&exchange, Topology::routing_key(job.lane), &message)
            .await
    }

    /// Parks `job` in its lane's retry queue of `round`, from which the broker hands it back to
    /// the work queue when the tier's delay is over.
    pub async fn publish_delayed(&self, job: &RefreshJob, round: usize) -> Result<(), BrokerError> {
        let queue = self
            .topology
            .retry_queue(job.lane, round)
            .ok_or(BrokerError::NoRetryTier(round))?;
        // The default exchange routes by queue name.
        self.publish_to("", &queue, &Message::job(job)).await
    }

    /// Queues the expansion of a batch.
    pub async fn publish_expansion(&self, expand: &ExpandBatch) -> Result<(), BrokerError> {
        let message = Message {
            trace: expand.trace,
            ..Message::new(&expand.batch_id.to_hex(), expand.encode())
        };
        let queue = self.topology.batches_queue();
        self.publish_to("", &queue, &message).await
    }

    /// Queues a device's report for a worker to apply.
    pub async fn publish_report(&self, report: &DeviceReport) -> Result<(), BrokerError> {
        let id = report.job_id.unwrap_or(report.device_id).to_hex();
        let message = Message::new(&id, report.encode());
        self.publish_to("", &self.topology.reports_queue(), &message)
            .await
    }

    /// Starts the wait for a pushed category's report: the deadline comes back due after
    /// `REPORT_DEADLINE_SECS`.
    pub async fn publish_deadline(&self, deadline: &ReportDeadline) -> Result<(), BrokerError> {
        let message = Message {
            trace: deadline.trace,
            ..Message::new(&deadline.job_id.to_hex(), deadline.encode())
        };
        let queue = self.topology.deadlines_waiting_queue();
        self.publish_to("", &queue, &message).await
    }

    /// Queues a webhook delivery for its next attempt: now (`wait` none), or after waiting in
    /// the webhook retry tier of round `wait`.
    pub async fn publish_webhook(
        &self,
        delivery: &WebhookDelivery,
        wait: Option<usize>,
    ) -> Result<(), BrokerError> {
        let queue = match wait {
            None => self.topology.webhooks_queue(),
            Some(round) => self
                .topology
                .webhook_retry_queue(round)
                .ok_or(BrokerError::NoRetryTier(round))?,
        };
        let message = Message::new(&delivery.message_id, delivery.encode());
        self.publish_to("", &queue, &message).await
    }

    /// Puts `body` on `queue` (through the default exchange) as a new message.
    pub(super) async fn publish_raw(
        &self,
        queue: &str,
        id: String,
        body: Vec<u8>,
    ) -> Result<(), BrokerError> {
        self.publish_to("", queue, &Message::new(&id, body)).await
    }

    /// A channel of its own for reading queues: a failed passive declare or get closes the
    /// channel it ran on, and must not take the publishing channel with it.
    pub(super) async fn inspection_channel(&self) -> Result<Channel, BrokerError> {
        let link = self.link().await?;
        Ok(link.connection.create_channel().await?)
    }

    pub(super) async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), BrokerError> {
        let link = self.link().await?;
        let result = self
            .publish_on(&link.channel, exchange, routing_key, message)
            .await;
        // A nack too: a channel whose quorum queue lost its leader (its node died) can go on
        // nacking every publish to it after a new leader is elected (seen on RabbitMQ 3.10);
        // a new channel routes to the new leader.
        if matches!(
            result,
            Err(BrokerError::Protocol(_) | BrokerError::ConfirmTimeout(_) | BrokerError::Nacked)
        ) {
            self.forget(&link);
        }
        result
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        exchange: &str,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), BrokerError> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            // The job (or batch) id doubles as message id: operators find dead letters by it.
            .with_message_id(message.id.as_str().into());
        if let Some(trace) = message.trace {
            let mut headers = FieldTable::default();
            headers.insert(
                trace::HEADER.into(),
                AMQPValue::LongString(trace.to_string().into()),
            );
            properties = properties.with_headers(headers);
        }
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                // Mandatory: a message no queue would take comes back instead of vanishing.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &message.body,
                properties,
            )
            .await?;
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| BrokerError::ConfirmTimeout(self.confirm_timeout))??;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned)) => {
                Err(BrokerError::Returned(returned.reply_text.to_string()))
            }
            Confirmation::Nack(None) => Err(BrokerError::Nacked),
            Confirmation::NotRequested => Err(BrokerError::NotConfirmMode),
        }
    }

    fn current(&self) -> Option<Arc<Link>> {
        self.link.read().ok().and_then(|link| link.clone())
    }

    fn forget(&self, dead: &Arc<Link>) {
        if let Ok(mut link) = self.link.write()
            && link
                .as_ref()
                .is_some_and(|current| Arc::ptr_eq(current, dead))
        {
            *link = None;
        }
    }

    async fn link(&self) -> Result<Arc<Link>, BrokerError> {
        let live = || self.current().filter(|l| l.channel.status().connected());
        if let Some(link) = live() {
            return Ok(link);
        }
        let seen = self.attempts.load(Ordering::Acquire);
        let _turn = self.connecting.lock().await;
        if let Some(link) = live() {
            return Ok(link);
        }
        if self.attempts.load(Ordering::Acquire) != seen {
            // The attempt this call waited for failed: that is this call's outcome too.
            return Err(BrokerError::Reconnecting);
        }
        let connected = self.connect_link().await;
        self.attempts.fetch_add(1, Ordering::Release);
        connected
    }

    /// One connection attempt: the connection, the topology, a confirm-mode channel.
    async fn connect_link(&self) -> Result<Arc<Link>, BrokerError> {
        let connection = connect(&self.url, &self.name).await?;
        self.topology.declare(&connection).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let link = Arc::new(Link {
            connection,
            channel,
        });
        if let Ok(mut current) = self.link.write() {
            *current = Some(Arc::clone(&link));
        }
        tracing::info!(connection = %self.name, "publisher connected to the broker");
        Ok(link)
    }
}
