//! Cache invalidations. Every api keeps tokens and organizations in memory for a few seconds
//! (`AUTH_CACHE_TTL_MS`) instead of reading them on every request; whoever changes one
//! announces it on the `{prefix}.invalidations` fanout, so every api drops its copies at once
//! rather than when they expire. The TTL still bounds staleness when an announcement is missed.

use super::{
    BrokerError, Publisher,
    fanout::{self, Listener},
};
use crate::settings::AmqpSettings;
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
    /// Tells every running api to drop `what` from its caches.
    pub async fn announce(&self, what: Invalidation) -> Result<(), BrokerError> {
        let exchange = self.topology().invalidations_exchange();
        let body = serde_json::to_vec(&what).unwrap_or_default();
        self.announce_on(&exchange, "invalidation", body).await
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
    let warning = "cache invalidations not followed; cached tokens expire by their TTL meanwhile";
    let listener = Invalidations(invalidate);
    fanout::follow(
        settings,
        super::Topology::invalidations_exchange,
        name,
        &listener,
        warning,
        stop,
    )
    .await;
}

struct Invalidations<F>(F);

impl<F: Fn(Invalidation)> Listener for Invalidations<F> {
    fn connected(&self) {
        (self.0)(Invalidation::Everything);
    }

    fn heard(&self, body: &[u8]) {
        // Something we cannot read still means something changed.
        (self.0)(serde_json::from_slice(body).unwrap_or(Invalidation::Everything));
    }
}
