//! Announcements every running process of a kind hears: a fanout exchange, and a queue of its
//! own per listening process (server-named, exclusive, gone with it). An announcement is a hint
//! that is safe to lose — whoever listens has a fallback — so it is not acked, and nobody
//! listening is fine.

use super::{BrokerError, Publisher, Topology, connect, publisher::Message};
use crate::{retry::RetryPolicy, settings::AmqpSettings};
use futures::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use tokio_util::sync::CancellationToken;

impl Publisher {
    /// Puts `body` on the fanout `exchange` for every process following it.
    pub(super) async fn announce_on(
        &self,
        exchange: &str,
        kind: &str,
        body: Vec<u8>,
    ) -> Result<(), BrokerError> {
        match self
            .publish_to(exchange, "", &Message::new(kind, body))
            .await
        {
            // Returned unroutable: nobody is following.
            Err(BrokerError::Returned(_)) => Ok(()),
            result => result,
        }
    }
}

/// What a follower does with the announcements of one exchange.
pub(super) trait Listener {
    /// Called after every (re)connection: announcements made while disconnected are lost.
    fn connected(&self);
    fn heard(&self, body: &[u8]);
}

/// Follows the fanout `exchange` (of `topology(settings)`) until `stop`, reconnecting when the
/// broker goes away. `warning` says what is lost while it cannot.
pub(super) async fn follow(
    settings: &AmqpSettings,
    exchange: impl Fn(&Topology) -> String,
    name: &str,
    listener: &impl Listener,
    warning: &str,
    stop: CancellationToken,
) {
    let topology = Topology::new(settings);
    let exchange = exchange(&topology);
    let mut schedule = RetryPolicy::RECONNECT.schedule();
    loop {
        let followed = tokio::select! {
            followed = follow_once(settings, &topology, &exchange, name, listener) => followed,
            () = stop.cancelled() => return,
        };
        if let Err(error) = followed {
            tracing::warn!(%error, exchange, "{warning}");
        }
        // RECONNECT is never spent: this ends only when stopped.
        if schedule.wait(None, &stop).await.is_err() {
            return;
        }
    }
}

async fn follow_once(
    settings: &AmqpSettings,
    topology: &Topology,
    exchange: &str,
    name: &str,
    listener: &impl Listener,
) -> Result<(), BrokerError> {
    let connection = connect(&settings.url, name).await?;
    topology.declare(&connection).await?;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut announcements = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    listener.connected();
    while let Some(delivery) = announcements.next().await {
        listener.heard(&delivery?.data);
    }
    Err(BrokerError::ConsumerCancelled)
}
