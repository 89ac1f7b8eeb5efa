//! Cache invalidations. Every api keeps tokens and organizations in memory for a few seconds
//! (`AUTH_CACHE_TTL_MS`) instead of reading them on every request; whoever changes one
//! announces it on the `{prefix}.invalidations` fanout, so every api drops its copies at once
//! rather than when they expire. The TTL still bounds staleness when an announcement is missed.

use super::{BrokerError, Publisher, Topology, connect};
use crate::{retry::RetryPolicy, settings::AmqpSettings};
use futures::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Invalidation {
    /// A token was revoked (or otherwise changed): drop every cached token.
    Tokens,
    /// An organization changed: drop every cached organization.
    Organizations,
    /// Announcements may have been missed (this api was disconnected): drop everything.
    Everything,
}

impl Publisher {
    /// Tells every running api to drop `what` from its caches. Nobody listening is fine.
    pub async fn announce(&self, what: Invalidation) -> Result<(), BrokerError> {
        let exchange = self.topology().invalidations_exchange();
        let body = serde_json::to_vec(&what).unwrap_or_default();
        match self
            .publish_to(
                &exchange,
                "",
                &super::publisher::Message::new("invalidation", body),
            )
            .await
        {
            // Returned unroutable: no api is running, so no cache holds anything.
            Err(BrokerError::Returned(_)) => Ok(()),
            result => result,
        }
    }
}

/// Calls `invalidate` for every announcement until `stop`, reconnecting when the broker goes
/// away; after every (re)connection it first calls `invalidate(Invalidation::Everything)`, since
/// announcements made while disconnected are lost.
pub async fn follow(
    settings: &AmqpSettings,
    name: &str,
    invalidate: impl Fn(Invalidation),
    stop: CancellationToken,
) {
    let topology = Topology::new(settings);
    let mut schedule = RetryPolicy::RECONNECT.schedule();
    loop {
        let followed = tokio::select! {
            followed = follow_once(settings, &topology, name, &invalidate) => followed,
            () = stop.cancelled() => return,
        };
        if let Err(error) = followed {
            tracing::warn!(%error, "cache invalidations not followed; cached tokens expire by their TTL meanwhile");
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
    name: &str,
    invalidate: &impl Fn(Invalidation),
) -> Result<(), BrokerError> {
    let connection = connect(&settings.url, name).await?;
    topology.declare(&connection).await?;
    let channel = connection.create_channel().await?;
    // Server-named, exclusive and auto-deleted: a queue of this process only, gone with it.
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
            topology.invalidations_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut announcements = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            // No acks: an invalidation is a hint that is safe to lose (the TTL covers it).
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    invalidate(Invalidation::Everything);
    while let Some(delivery) = announcements.next().await {
        let delivery = delivery?;
        // Something we cannot read still means something changed.
        invalidate(serde_json::from_slice(&delivery.data).unwrap_or(Invalidation::Everything));
    }
    Err(BrokerError::ConsumerCancelled)
}
