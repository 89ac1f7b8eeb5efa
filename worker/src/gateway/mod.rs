//! The device push gateways: the management agent's gateway first, WNS as the fallback.

mod agent;
pub mod classify;
mod pacing;
mod wns;

use crate::settings::GatewaySettings;
use bson::oid::ObjectId;
use classify::Verdict;
use refresh_shared::{
    Category,
    broker::{GatewayHold, Publisher},
    channel::ChannelPolicy,
    device::Gateway,
    metric,
    trace::TraceParent,
};
use serde::Serialize;
use std::{sync::Arc, time::Duration};
use time::OffsetDateTime;

/// One way to reach a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    Agent,
    Wns { channel_uri: &'a str },
}

impl Route<'_> {
    pub fn gateway(&self) -> Gateway {
        match self {
            Route::Agent => Gateway::Agent,
            Route::Wns { .. } => Gateway::Wns,
        }
    }
}

/// What a device is asked to re-report: the document the agent gets. Through WNS only the job
/// id travels (as the correlation vector): Windows ignores an MDM push's payload, and the
/// device is handed its reads in the OMA-DM session the push wakes it for.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushPayload {
    pub job_id: String,
    pub device_id: String,
    pub categories: Vec<CategoryPaths>,
    /// When the job stops being worth a push (`JOB_MAX_AGE_SECS` after the request): WNS
    /// drops a cached push for an offline device then.
    #[serde(skip)]
    pub expires_at: OffsetDateTime,
    /// The refresh's trace: each push request carries a span of it (`traceparent`).
    #[serde(skip)]
    pub trace: Option<TraceParent>,
}

#[derive(Debug, Serialize)]
pub struct CategoryPaths {
    pub name: Category,
    /// The nodes the device re-reads for the category.
    pub paths: Vec<&'static str>,
}

impl PushPayload {
    /// The `traceparent` one push request sends: a span of its own in the refresh's trace.
    fn traceparent(&self) -> Option<String> {
        self.trace.map(|trace| trace.child().to_string())
    }

    pub fn new(
        job_id: ObjectId,
        device_id: ObjectId,
        category: Category,
        expires_at: OffsetDateTime,
        trace: Option<TraceParent>,
    ) -> PushPayload {
        PushPayload {
            job_id: job_id.to_hex(),
            device_id: device_id.to_hex(),
            expires_at,
            trace,
            categories: vec![CategoryPaths {
                name: category,
                paths: category.nodes().collect(),
            }],
        }
    }
}

/// A gateway's verdict on one push, with what it said, for `lastError` and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushResult {
    pub verdict: Verdict,
    pub detail: String,
}

impl PushResult {
    fn answered(verdict: Verdict, gateway: Gateway, status: reqwest::StatusCode) -> PushResult {
        PushResult {
            verdict,
            detail: format!("{gateway} gateway answered {status}"),
        }
    }
}

pub struct Gateways {
    agent: agent::AgentGateway,
    wns: wns::WnsGateway,
    pacing: pacing::Pacing,
    /// Checked before every WNS push: a channel URI read from the database is never trusted.
    channels: ChannelPolicy,
    /// Where holds a gateway asks for are announced to the other workers.
    announcer: Option<Arc<Publisher>>,
}

impl Gateways {
    pub fn new(settings: &GatewaySettings, push_timeout: Duration) -> anyhow::Result<Gateways> {
        let pacing = pacing::Pacing::new(settings.agent_rate_limit, settings.wns_rate_limit);
        let http = reqwest::Client::builder()
            .timeout(push_timeout)
            .connect_timeout(push_timeout)
            // A redirect would carry the push (and WNS's bearer token) to a URL nobody checked.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("device-refresh/", env!("CARGO_PKG_VERSION")))
            .build()?;
        for origin in settings.wns_channels.insecure_origins() {
            tracing::warn!(%origin, "WNS channels admitted over plain http (WNS_CHANNEL_HOST_SUFFIXES): for local use only");
        }
        Ok(Gateways {
            agent: agent::AgentGateway::new(http.clone(), settings.agent_url.clone()),
            wns: wns::WnsGateway::new(http, settings),
            pacing,
            channels: settings.wns_channels.clone(),
            announcer: None,
        })
    }

    /// Announces every hold a gateway asks for through `publisher`, so that the other workers
    /// keep it too.
    pub fn announcing_to(self, publisher: Arc<Publisher>) -> Gateways {
        Gateways {
            announcer: Some(publisher),
            ..self
        }
    }

    /// How long pushes through `route` to this device must still wait, after the gateway
    /// asked for a pause.
    pub fn hold(&self, route: Route<'_>, payload: &PushPayload) -> Option<Duration> {
        self.pacing.hold(route, &payload.device_id)
    }

    /// Pushes once, within the gateway's rate limit. A gateway's request to wait puts this
    /// target (device or channel) on hold; see [`Gateways::hold`].
    pub async fn push(&self, route: Route<'_>, payload: &PushPayload) -> PushResult {
        self.pacing.ready(route).await;
        let started = std::time::Instant::now();
        let result = match route {
            Route::Agent => self.agent.push(payload).await,
            Route::Wns { channel_uri } => match self.channels.check(channel_uri) {
                Ok(channel) => self.wns.push(channel, payload).await,
                Err(refused) => PushResult {
                    verdict: Verdict::Permanent,
                    detail: refused.to_string(),
                },
            },
        };
        metrics::histogram!(metric::PUSH_DURATION, "gateway" => route.gateway().as_str())
            .record(started.elapsed().as_secs_f64());
        if let Verdict::Retry { after: Some(pause) } = result.verdict {
            let hold = self.pacing.hold_for(route, &payload.device_id, pause);
            if let Some(announcer) = &self.announcer
                && let Err(error) = announcer.announce_hold(&hold).await
            {
                tracing::warn!(%error, "a gateway hold was not announced to the other workers");
            }
        }
        result
    }

    /// Keeps a hold another worker announced.
    pub fn keep(&self, hold: &GatewayHold) {
        self.pacing.keep(hold);
    }
}
