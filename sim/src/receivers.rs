//! Webhook receivers: named endpoints the product delivers to (`POST /hooks/{name}`), each
//! recording every delivery it gets (headers, body, whether its signature verifies under the
//! receiver's secret) and answering as told: a script of statuses, then a status, after a
//! latency, or never.
//!
//! - `POST /_sim/receivers`: `{"name","secret"?,"script"?:[503,…],"status"?:200,"latencyMs"?,
//!   "neverAnswer"?}` sets up (or resets) a receiver.
//! - `GET /_sim/receivers/{name}`: what it received.

use crate::{SimState, lock};
use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use refresh_shared::webhook::EndpointSecret;
use serde::{Deserialize, Serialize};
use std::{collections::VecDeque, sync::Arc, time::Duration};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// How a receiver answers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReceiverPlan {
    pub name: String,
    /// `whsec_…`, as adding the endpoint showed it: deliveries are checked against it.
    pub secret: Option<String>,
    /// Statuses answered one per delivery, in order, first.
    #[serde(default)]
    pub script: VecDeque<u16>,
    /// Answered once the script is spent (default 200).
    pub status: Option<u16>,
    #[serde(default)]
    pub latency_ms: u64,
    /// Takes the delivery and never answers.
    #[serde(default)]
    pub never_answer: bool,
}

/// One delivery as a receiver got it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedWebhook {
    pub webhook_id: String,
    pub webhook_timestamp: String,
    pub webhook_signature: String,
    pub content_type: String,
    pub body: String,
    /// When it arrived (RFC 3339).
    pub at: String,
    /// The status answered (none: never answered).
    pub status: Option<u16>,
    /// Whether one of its signatures is the one the receiver's secret makes.
    pub verified: bool,
}

#[derive(Default)]
pub(crate) struct Receiver {
    plan: ReceiverPlan,
    received: Vec<ReceivedWebhook>,
}

pub(crate) async fn set_up(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<ReceiverPlan>(&body) {
        Ok(plan) => {
            let name = plan.name.clone();
            lock(&state.receivers).insert(
                name,
                Receiver {
                    plan,
                    received: Vec::new(),
                },
            );
            Json(serde_json::json!({ "status": true })).into_response()
        }
        Err(error) => (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    }
}

pub(crate) async fn received(
    State(state): State<Arc<SimState>>,
    Path(name): Path<String>,
) -> Result<Json<Vec<ReceivedWebhook>>, StatusCode> {
    lock(&state.receivers)
        .get(&name)
        .map(|receiver| Json(receiver.received.clone()))
        .ok_or(StatusCode::NOT_FOUND)
}

pub(crate) async fn deliver(
    State(state): State<Arc<SimState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut webhook = ReceivedWebhook {
        webhook_id: header("webhook-id"),
        webhook_timestamp: header("webhook-timestamp"),
        webhook_signature: header("webhook-signature"),
        content_type: header("content-type"),
        body: String::from_utf8_lossy(&body).into_owned(),
        at: OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default(),
        status: None,
        verified: false,
    };
    let (status, latency, never) = {
        let mut receivers = lock(&state.receivers);
        let Some(receiver) = receivers.get_mut(&name) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        webhook.verified = receiver
            .plan
            .secret
            .as_deref()
            .is_some_and(|secret| verifies(secret, &webhook));
        let status = receiver
            .plan
            .script
            .pop_front()
            .or(receiver.plan.status)
            .unwrap_or(200);
        if !receiver.plan.never_answer {
            webhook.status = Some(status);
        }
        receiver.received.push(webhook);
        (
            status,
            Duration::from_millis(receiver.plan.latency_ms),
            receiver.plan.never_answer,
        )
    };
    if never {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(latency).await;
    StatusCode::from_u16(status)
        .unwrap_or(StatusCode::OK)
        .into_response()
}

/// Whether one of the `v1,` signatures of `webhook` is what `secret` signs it to.
fn verifies(secret: &str, webhook: &ReceivedWebhook) -> bool {
    let (Some(secret), Ok(timestamp)) = (
        EndpointSecret::from_shown(secret),
        webhook.webhook_timestamp.parse::<i64>(),
    ) else {
        return false;
    };
    let expected = secret.sign(&webhook.webhook_id, timestamp, webhook.body.as_bytes());
    webhook
        .webhook_signature
        .split(' ')
        .any(|signature| signature == expected)
}
