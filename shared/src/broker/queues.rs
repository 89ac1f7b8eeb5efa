//! Reading the queues, for `/metrics` and operators: every queue's depth, and the dead-letter
//! queue (what is there and why; putting messages back on the queue they died in).

use super::{BrokerError, Publisher, QueueDepth, QueueRole, Topology, topology::depth};
use crate::{batch::ExpandBatch, deadline::ReportDeadline, job::RefreshJob, report::DeviceReport};
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions},
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable},
};
use serde::Serialize;
use std::sync::Arc;

/// One dead letter, as `refreshctl dead-letters list` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The job or batch id it was published under.
    pub message_id: Option<String>,
    /// Why RabbitMQ dead-lettered it: `rejected` (a worker could not process it) or
    /// `delivery_limit` (it kept failing or killing its consumer).
    pub reason: Option<String>,
    /// The queue it died in, where a replay puts it back.
    pub queue: Option<String>,
    /// What it is, when it decodes: `job <id> device <id> [categories]`, `batch <id>`,
    /// `report device <id> [categories]` or `deadline job <id> repush <n>`.
    pub summary: String,
    pub bytes: usize,
}

impl DeadLetter {
    fn of(delivery: &Delivery) -> DeadLetter {
        let header = |name: &str| {
            delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|headers| headers.inner().get(name).cloned())
                .and_then(|value| match value {
                    AMQPValue::LongString(text) => Some(text.to_string()),
                    AMQPValue::ShortString(text) => Some(text.to_string()),
                    _ => None,
                })
        };
        let summary = if let Ok(job) = RefreshJob::decode(&delivery.data) {
            let categories: Vec<&str> = job.categories.iter().map(|c| c.as_str()).collect();
            format!(
                "job {} device {} {} [{}]",
                job.job_id,
                job.device_id,
                job.lane.as_str(),
                categories.join(",")
            )
        } else if let Ok(expand) = ExpandBatch::decode(&delivery.data) {
            format!("batch {}", expand.batch_id)
        } else if let Ok(report) = DeviceReport::decode(&delivery.data) {
            let categories: Vec<&str> = report.categories.keys().map(|c| c.as_str()).collect();
            format!(
                "report device {} [{}]",
                report.device_id,
                categories.join(",")
            )
        } else if let Ok(deadline) = ReportDeadline::decode(&delivery.data) {
            format!(
                "deadline job {} repush {}",
                deadline.job_id, deadline.repush
            )
        } else {
            "undecodable".to_owned()
        };
        DeadLetter {
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string()),
            reason: header("x-first-death-reason"),
            queue: header("x-first-death-queue"),
            summary,
            bytes: delivery.data.len(),
        }
    }
}

/// RESOURCE_LOCKED: the exclusive queue is another connection's.
fn held_elsewhere(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)
    )
}

/// What a replay did.
#[derive(Debug, Default, Serialize)]
pub struct Replayed {
    /// Put back on their queues.
    pub replayed: Vec<DeadLetter>,
    /// Selected, but with no queue to go back to (they stay dead).
    pub kept: Vec<DeadLetter>,
}

/// Reading the queues: their depths, and the dead letters (listed, or replayed onto the queue
/// each died in). Each read runs on a channel of its own, beside the publisher's, on the same
/// connection: a failed passive declare or get closes the channel it ran on.
pub struct Queues {
    publisher: Arc<Publisher>,
}

impl Queues {
    pub fn new(publisher: Arc<Publisher>) -> Queues {
        Queues { publisher }
    }

    fn topology(&self) -> &Topology {
        self.publisher.topology()
    }

    /// Every queue's depth now, if this process is the deployment's one reporter of the queue
    /// depths on `/metrics` (so that summing them over processes gives the broker's counts):
    /// the one whose connection holds the exclusive queue `{prefix}.queue-gauges`. It is
    /// claimed on every read, so when its holder goes (and the broker deletes it with that
    /// connection) the next process to read takes over.
    pub async fn depths_to_report(&self) -> Result<Option<Vec<QueueDepth>>, BrokerError> {
        let channel = self.publisher.inspection_channel().await?;
        let claim = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        let name = self.topology().queue_gauges_claim();
        let claimed = channel
            .queue_declare(name.as_str().into(), claim, FieldTable::default())
            .await;
        match claimed {
            Ok(_) => {}
            // Another connection holds it (and the broker closed the channel).
            Err(error) if held_elsewhere(&error) => return Ok(None),
            Err(error) => return Err(error.into()),
        }
        let depths = self.topology().depths(&channel).await;
        let _ = channel.close(200, "bye".into()).await;
        depths.map(Some)
    }

    /// Every queue's depth now.
    pub async fn depths(&self) -> Result<Vec<QueueDepth>, BrokerError> {
        let channel = self.publisher.inspection_channel().await?;
        let depths = self.topology().depths(&channel).await;
        let _ = channel.close(200, "bye".into()).await;
        depths
    }

    /// Up to `limit` dead letters, oldest first. They stay in the dead queue.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, BrokerError> {
        let channel = self.publisher.inspection_channel().await?;
        let mut letters = Vec::new();
        while letters.len() < limit {
            let Some(message) = get(&channel, &self.topology().dead_queue()).await? else {
                break;
            };
            letters.push(DeadLetter::of(&message));
        }
        // Closing the channel hands every message taken above back to the queue, unchanged.
        let _ = channel.close(200, "bye".into()).await;
        Ok(letters)
    }

    /// Puts the dead letters `select` picks back on the queue each died in, as new messages
    /// (delivery count starting afresh), each removed from the dead queue only once the broker
    /// has confirmed its copy. The others stay.
    pub async fn replay_dead_letters(
        &self,
        select: impl Fn(&DeadLetter) -> bool,
    ) -> Result<Replayed, BrokerError> {
        let channel = self.publisher.inspection_channel().await?;
        // Only the letters there now: a replayed message that dies again is not looped over.
        let dead_queue = self.topology().dead_queue();
        let waiting = depth(&channel, dead_queue, QueueRole::Dead).await?.ready;
        let mut report = Replayed::default();
        for _ in 0..waiting {
            let Some(message) = get(&channel, &self.topology().dead_queue()).await? else {
                break;
            };
            let letter = DeadLetter::of(&message);
            if !select(&letter) {
                continue;
            }
            match letter.queue.clone() {
                Some(queue) => {
                    let id = letter.message_id.clone().unwrap_or_default();
                    self.publisher
                        .publish_raw(&queue, id, message.data.clone())
                        .await?;
                    message.ack(BasicAckOptions::default()).await?;
                    report.replayed.push(letter);
                }
                None => report.kept.push(letter),
            }
        }
        let _ = channel.close(200, "bye".into()).await;
        Ok(report)
    }
}

async fn get(channel: &Channel, queue: &str) -> Result<Option<Delivery>, BrokerError> {
    let message = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await?;
    Ok(message.map(|message| message.delivery))
}
