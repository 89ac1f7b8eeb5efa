//! The management agent's push gateway: `POST {AGENT_GATEWAY_URL}/agent/v1/devices/{id}/refresh`.

use super::{PushPayload, PushResult, classify};
use refresh_shared::{device::Gateway, trace};
use url::Url;

pub struct AgentGateway {
    http: reqwest::Client,
    base: Url,
}

impl AgentGateway {
    pub fn new(http: reqwest::Client, base: Url) -> AgentGateway {
        AgentGateway { http, base }
    }

    pub async fn push(&self, payload: &PushPayload) -> PushResult {
        let url = match self
            .base
            .join(&format!("agent/v1/devices/{}/refresh", payload.device_id))
        {
            Ok(url) => url,
            Err(error) => {
                return PushResult {
                    verdict: classify::Verdict::Permanent,
                    detail: format!("AGENT_GATEWAY_URL cannot address a device: {error}"),
                };
            }
        };
        let mut request = self.http.post(url).header("MS-CV", &payload.job_id);
        if let Some(traceparent) = payload.traceparent() {
            request = request.header(trace::HEADER, traceparent);
        }
        match request.json(payload).send().await {
            Ok(response) => PushResult::answered(
                classify::agent(response.status(), response.headers()),
                Gateway::Agent,
                response.status(),
            ),
            Err(error) => PushResult {
                verdict: classify::unreachable(Gateway::Agent),
                detail: format!("agent gateway unreachable: {}", without_url(&error)),
            },
        }
    }
}

/// A transport error's text without the URL, which for WNS carries the channel secret.
pub(super) fn without_url(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    kind.to_owned()
}
