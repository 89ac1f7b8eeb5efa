//! Gateway holds. A gateway that asks for a pause (WNS's 406 with `X-WNS-CONTINUE-AFTER`, the
//! agent gateway's 429 with `Retry-After`) asks the deployment, not the one worker that heard
//! it: that worker announces the hold on the `{prefix}.holds` fanout and every worker keeps it.
//! One that missed the announcement (it was reconnecting) pushes once more and hears the pause
//! itself.

use super::{
    BrokerError, Publisher, Topology,
    fanout::{self, Listener},
};
use crate::settings::AmqpSettings;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayHold {
    /// The held target, as a digest: a WNS channel URI is a credential, and never travels.
    pub target: String,
    /// Until when, in Unix milliseconds: wall-clock time, since it crosses processes.
    pub until_ms: i64,
}

impl GatewayHold {
    /// The digest a target (`wns:<channel URI>`, `agent:<device>`) is held by.
    pub fn digest(target: &str) -> String {
        crate::token::hash(target)
    }
}

impl Publisher {
    /// Tells every running worker to hold `hold.target`.
    pub async fn announce_hold(&self, hold: &GatewayHold) -> Result<(), BrokerError> {
        let exchange = self.topology().holds_exchange();
        let body = serde_json::to_vec(hold).unwrap_or_default();
        self.announce_on(&exchange, "hold", body).await
    }
}

/// Calls `keep` for every hold announced until `stop`, reconnecting when the broker goes away.
pub async fn follow(
    settings: &AmqpSettings,
    name: &str,
    keep: impl Fn(GatewayHold),
    stop: CancellationToken,
) {
    let warning = "gateway holds of other workers not followed; a held target is pushed once more";
    let listener = Holds(keep);
    fanout::follow(
        settings,
        Topology::holds_exchange,
        name,
        &listener,
        warning,
        stop,
    )
    .await;
}

struct Holds<F>(F);

impl<F: Fn(GatewayHold)> Listener for Holds<F> {
    fn connected(&self) {}

    fn heard(&self, body: &[u8]) {
        match serde_json::from_slice(body) {
            Ok(hold) => (self.0)(hold),
            Err(error) => tracing::warn!(%error, "an unreadable gateway hold was ignored"),
        }
    }
}
