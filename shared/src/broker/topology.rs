//! Every exchange, queue and argument the product uses, declared idempotently by whoever starts.

use super::BrokerError;
use crate::{job::Lane, settings::AmqpSettings};
use lapin::{
    Channel, Connection, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use serde::Serialize;
use std::time::Duration;
use strum::EnumIter;

/// Redeliveries after which a message that keeps killing or failing its consumer is dead-lettered
/// instead of looping forever (counted by quorum queues themselves).
const DELIVERY_LIMIT: i64 = 10;

#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    retry_tiers: Vec<Duration>,
    webhook_retry_tiers: Vec<Duration>,
    report_deadline: Duration,
    quorum_size: u32,
}

impl Topology {
    pub fn new(settings: &AmqpSettings) -> Topology {
        Topology {
            prefix: settings.prefix.clone(),
            retry_tiers: settings.retry_tiers.clone(),
            webhook_retry_tiers: settings.webhook_retry_tiers.clone(),
            report_deadline: settings.report_deadline,
            quorum_size: settings.quorum_size,
        }
    }

    /// The retry queue a job of `lane` waits in before its `round`-th redelivery (0-based), if
    /// the tiers go that far. Each lane has its own, so a retried bulk job goes back to the bulk
    /// lane. (`quorum` in the name: the classic retry queues of earlier versions had the same
    /// names without it, and a queue cannot change its type; those drain by themselves.)
    pub fn retry_queue(&self, lane: Lane, round: usize) -> Option<String> {
        let delay = self.retry_tiers.get(round)?;
        Some(match lane {
            Lane::Interactive => format!("{}.retry.quorum.{}s", self.prefix, delay.as_secs()),
            Lane::Bulk => format!("{}.retry.bulk.quorum.{}s", self.prefix, delay.as_secs()),
        })
    }

    /// How many times a job may wait in a retry queue.
    pub fn retry_rounds(&self) -> usize {
        self.retry_tiers.len()
    }

    /// Where the api publishes jobs; routed by lane.
    pub fn jobs_exchange(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// The work queue of `lane`.
    pub fn jobs_queue(&self, lane: Lane) -> String {
        match lane {
            Lane::Interactive => format!("{}.jobs", self.prefix),
            Lane::Bulk => format!("{}.jobs.bulk", self.prefix),
        }
    }

    /// Batches waiting to be expanded into jobs (one message per batch).
    pub fn batches_queue(&self) -> String {
        format!("{}.batches", self.prefix)
    }

    /// Device reports waiting to be applied.
    pub fn reports_queue(&self) -> String {
        format!("{}.reports", self.prefix)
    }

    /// Webhook deliveries waiting for an attempt.
    pub fn webhooks_queue(&self) -> String {
        format!("{}.webhooks", self.prefix)
    }

    /// The queue a webhook delivery waits in after its `round`-th failed attempt (0-based), if
    /// the tiers go that far; when its wait is over it goes back to the webhooks queue.
    pub fn webhook_retry_queue(&self, round: usize) -> Option<String> {
        let delay = self.webhook_retry_tiers.get(round)?;
        Some(format!(
            "{}.webhooks.retry.{}s",
            self.prefix,
            delay.as_secs()
        ))
    }

    /// How many times a webhook delivery may wait in a retry queue: it is attempted once
    /// more than this.
    pub fn webhook_retry_rounds(&self) -> usize {
        self.webhook_retry_tiers.len()
    }

    /// Where report deadlines wait out `REPORT_DEADLINE_SECS` (named by it, like the retry
    /// tiers: a changed deadline gets a queue of its own, and the old one still drains).
    pub fn deadlines_waiting_queue(&self) -> String {
        format!(
            "{}.deadlines.quorum.{}s",
            self.prefix,
            self.report_deadline.as_secs()
        )
    }

    /// Report deadlines that have passed, for a worker to check.
    pub fn deadlines_due_queue(&self) -> String {
        format!("{}.deadlines.due", self.prefix)
    }

    pub fn dead_exchange(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Fanout of cache invalidations to every running api (see `invalidations`).
    pub fn invalidations_exchange(&self) -> String {
        format!("{}.invalidations", self.prefix)
    }

    /// The exclusive queue whose holder reports the queue depths on `/metrics` (see
    /// `Queues::depths_to_report`). Not a queue anything goes through.
    pub fn queue_gauges_claim(&self) -> String {
        format!("{}.queue-gauges", self.prefix)
    }

    /// Fanout of gateway holds to every running worker (see `holds`).
    pub fn holds_exchange(&self) -> String {
        format!("{}.holds", self.prefix)
    }

    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    pub fn routing_key(lane: Lane) -> &'static str {
        lane.as_str()
    }

    /// Every queue this topology declares, with what it is for.
    pub fn queues(&self) -> Vec<(String, QueueRole)> {
        let mut queues = vec![
            (self.jobs_queue(Lane::Interactive), QueueRole::Work),
            (self.jobs_queue(Lane::Bulk), QueueRole::Work),
            (self.batches_queue(), QueueRole::Batches),
            (self.reports_queue(), QueueRole::Reports),
            (self.deadlines_waiting_queue(), QueueRole::Deadlines),
            (self.deadlines_due_queue(), QueueRole::Deadlines),
            (self.webhooks_queue(), QueueRole::Webhooks),
        ];
        for lane in Lane::ALL {
            let retries =
                (0..self.retry_rounds()).filter_map(|round| self.retry_queue(lane, round));
            queues.extend(retries.map(|queue| (queue, QueueRole::Retry)));
        }
        let webhook_retries =
            (0..self.webhook_retry_rounds()).filter_map(|round| self.webhook_retry_queue(round));
        queues.extend(webhook_retries.map(|queue| (queue, QueueRole::Retry)));
        queues.push((self.dead_queue(), QueueRole::Dead));
        queues
    }

    /// Every exchange this topology declares.
    pub fn exchanges(&self) -> Vec<String> {
        vec![
            self.jobs_exchange(),
            self.dead_exchange(),
            self.invalidations_exchange(),
            self.holds_exchange(),
        ]
    }

    /// How many messages wait in each queue right now and how many consumers it has, read with
    /// passive declares: exact at this instant (the management API's counts lag by seconds).
    /// Ready messages only: deliveries a consumer holds unacked are not counted by the broker's
    /// answer (each worker reports its own as `refresh_worker_unacked_deliveries`).
    pub async fn depths(&self, channel: &Channel) -> Result<Vec<QueueDepth>, BrokerError> {
        let mut depths = Vec::new();
        for (name, role) in self.queues() {
            depths.push(depth(channel, name, role).await?);
        }
        Ok(depths)
    }

    /// Declares everything on `connection`. Every queue is a quorum queue replicated on
    /// `AMQP_QUORUM_SIZE` nodes: a node lost takes no queue with it, retries and deadlines
    /// included.
    pub async fn declare(&self, connection: &Connection) -> Result<(), BrokerError> {
        let mut declare = Declarer {
            connection,
            channel: connection.create_channel().await?,
            quorum_size: self.quorum_size,
        };
        // Fanout: every dead letter lands in the one dead queue, whatever its routing key.
        declare
            .exchange(&self.dead_exchange(), ExchangeKind::Fanout)
            .await?;
        declare
            .queue(&self.dead_queue(), FieldTable::default())
            .await?;
        declare
            .bind(&self.dead_queue(), &self.dead_exchange(), "")
            .await?;

        // Fanouts: every api's own queue gets every invalidation, every worker's every hold.
        for exchange in [self.invalidations_exchange(), self.holds_exchange()] {
            declare.exchange(&exchange, ExchangeKind::Fanout).await?;
        }

        // Direct: the lane is the routing key.
        declare
            .exchange(&self.jobs_exchange(), ExchangeKind::Direct)
            .await?;
        for lane in Lane::ALL {
            let queue = self.jobs_queue(lane);
            declare.queue(&queue, self.work_queue_arguments()).await?;
            declare
                .bind(&queue, &self.jobs_exchange(), Topology::routing_key(lane))
                .await?;
        }
        // Same guarantees as the work queues: an expansion request is never dropped, and one
        // that keeps killing its worker ends up in the dead queue.
        declare
            .queue(&self.batches_queue(), self.work_queue_arguments())
            .await?;
        // Reports and due deadlines are work like jobs: never dropped, poison dead-lettered.
        declare
            .queue(&self.reports_queue(), self.work_queue_arguments())
            .await?;
        declare
            .queue(&self.deadlines_due_queue(), self.work_queue_arguments())
            .await?;
        declare
            .queue(
                &self.deadlines_waiting_queue(),
                self.deadlines_waiting_arguments(),
            )
            .await?;

        // Webhook deliveries: work like the rest; their tiers lead back to their queue.
        declare
            .queue(&self.webhooks_queue(), self.work_queue_arguments())
            .await?;
        for (round, delay) in self.webhook_retry_tiers.iter().enumerate() {
            if let Some(queue) = self.webhook_retry_queue(round) {
                let arguments = waiting_arguments(*delay, "", &self.webhooks_queue());
                declare.queue(&queue, arguments).await?;
            }
        }

        for lane in Lane::ALL {
            for (round, delay) in self.retry_tiers.iter().enumerate() {
                if let Some(queue) = self.retry_queue(lane, round) {
                    let arguments = self.retry_queue_arguments(lane, *delay);
                    declare.queue(&queue, arguments).await?;
                }
            }
        }
        // The connection goes on serving its owner: the channel of the declarations is done.
        let _ = declare.channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// A retry queue: every message has the same TTL, so they expire in order at its head, and
    /// nothing consumes it; when the wait is over the message goes back to its lane's work
    /// queue.
    fn retry_queue_arguments(&self, lane: Lane, delay: Duration) -> FieldTable {
        waiting_arguments(delay, &self.jobs_exchange(), Topology::routing_key(lane))
    }
}

impl Topology {
    /// The deadline queue: like a retry queue, every message has the same TTL and nothing
    /// consumes it; an expired deadline goes (through the default exchange) to the due queue.
    fn deadlines_waiting_arguments(&self) -> FieldTable {
        waiting_arguments(self.report_deadline, "", &self.deadlines_due_queue())
    }

    /// A work queue (either lane, the batches, reports, due deadlines or webhooks queue).
    fn work_queue_arguments(&self) -> FieldTable {
        // Rejected (poison) and over-delivered messages go to the dead queue, not away.
        let mut arguments = at_least_once_dead_lettering();
        insert_str(
            &mut arguments,
            "x-dead-letter-exchange",
            &self.dead_exchange(),
        );
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(DELIVERY_LIMIT),
        );
        arguments
    }
}

/// Declares on one connection, replacing its channel when a passive declare closes it.
struct Declarer<'a> {
    connection: &'a Connection,
    channel: Channel,
    quorum_size: u32,
}

impl Declarer<'_> {
    /// A durable exchange: the topology must survive a broker restart with its messages.
    async fn exchange(&self, name: &str, kind: ExchangeKind) -> Result<(), BrokerError> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        self.channel
            .exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await?;
        Ok(())
    }

    /// A durable quorum queue with `arguments`, unless `name` exists. RabbitMQ refuses to
    /// redeclare a queue with any argument changed, its quorum size included, and that size is
    /// the deployment's choice of the moment (`AMQP_QUORUM_SIZE`, which follows the nodes
    /// listed): a queue that exists is left as it was created. (`rabbitmq-queues grow` adds
    /// members to existing queues.)
    async fn queue(&mut self, name: &str, mut arguments: FieldTable) -> Result<(), BrokerError> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let exists = self
            .channel
            .queue_declare(name.into(), passive, FieldTable::default())
            .await;
        if exists.is_ok() {
            return Ok(());
        }
        // The broker closed the channel over the missing queue (or the connection is gone,
        // and this fails too).
        self.channel = self.connection.create_channel().await?;
        insert_str(&mut arguments, "x-queue-type", "quorum");
        arguments.insert(
            "x-quorum-initial-group-size".into(),
            AMQPValue::LongLongInt(i64::from(self.quorum_size)),
        );
        self.channel
            .queue_declare(name.into(), QueueDeclareOptions::durable(), arguments)
            .await?;
        Ok(())
    }

    async fn bind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(())
    }
}

/// What a queue is for, as `/metrics` and `refreshctl queues` label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, EnumIter)]
#[serde(rename_all = "lowercase")]
pub enum QueueRole {
    /// Jobs waiting for a worker (one per lane).
    Work,
    /// Batches waiting to be expanded into jobs.
    Batches,
    /// Jobs waiting out a retry delay.
    Retry,
    /// Device reports waiting to be applied.
    Reports,
    /// Report deadlines, waiting to pass or passed and waiting for a worker.
    Deadlines,
    /// Webhook deliveries waiting for an attempt.
    Webhooks,
    /// Dead letters, waiting for an operator.
    Dead,
}

impl QueueRole {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueRole::Work => "work",
            QueueRole::Batches => "batches",
            QueueRole::Retry => "retry",
            QueueRole::Reports => "reports",
            QueueRole::Deadlines => "deadlines",
            QueueRole::Webhooks => "webhooks",
            QueueRole::Dead => "dead",
        }
    }
}

/// One queue's depth at one instant.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueDepth {
    pub name: String,
    pub role: QueueRole,
    /// Messages waiting to be delivered.
    pub ready: u32,
    pub consumers: u32,
}

/// One queue's depth, by passive declare (which fails, closing the channel, if it is missing).
pub(super) async fn depth(
    channel: &Channel,
    name: String,
    role: QueueRole,
) -> Result<QueueDepth, BrokerError> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let queue = channel
        .queue_declare(name.as_str().into(), passive, FieldTable::default())
        .await?;
    Ok(QueueDepth {
        name,
        role,
        ready: queue.message_count(),
        consumers: queue.consumer_count(),
    })
}

/// A queue where every message waits out `delay` (nothing consumes it), then goes to
/// `exchange` with `routing_key` (through the default exchange, `""`, to the queue of that
/// name).
fn waiting_arguments(delay: Duration, exchange: &str, routing_key: &str) -> FieldTable {
    let mut arguments = at_least_once_dead_lettering();
    let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
    insert_str(&mut arguments, "x-dead-letter-exchange", exchange);
    insert_str(&mut arguments, "x-dead-letter-routing-key", routing_key);
    arguments
}

/// At-least-once dead-lettering: a message is never dropped on its way to where a queue
/// dead-letters it (a poison job to the dead queue, a retry or a deadline back to work once it
/// has waited). RabbitMQ requires reject-publish overflow with it.
fn at_least_once_dead_lettering() -> FieldTable {
    let mut arguments = FieldTable::default();
    insert_str(&mut arguments, "x-dead-letter-strategy", "at-least-once");
    insert_str(&mut arguments, "x-overflow", "reject-publish");
    arguments
}

fn insert_str(table: &mut FieldTable, key: &str, value: &str) {
    table.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value)),
    );
}
