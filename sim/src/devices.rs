//! The devices behind the gateways: registered with `POST /_sim/devices`, a device woken by an
//! agent push reports through the product's real device route (`…/reports`, with its node
//! key), with fixture values for every node of the category (`Category::nodes`). How devices
//! answer is part of the fault plan: `report` on/off/partial and `reportDelayMs`.

use crate::{SimState, lock, refused};
use axum::{
    Json,
    body::Bytes,
    extract::State,
    response::{IntoResponse, Response},
};
use refresh_shared::Category;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::{sync::Arc, time::Duration};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// How registered devices answer a push.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportMode {
    /// Report every category pushed.
    #[default]
    On,
    /// Never report.
    Off,
    /// Report the first category pushed for each job, never the others (OMA-DM: answer only
    /// the first category the server reads).
    Partial,
    /// OMA-DM: open the session, take the server's reads, hang up without answering (an agent
    /// device does not report).
    Drop,
}

/// A device the sim answers for: its agent reports with a node key; its DM client (with a DM
/// identity, a certificate and its key, and the WNS channel it listens on) opens sessions.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SimDevice {
    pub device_id: String,
    pub node_key: Option<String>,
    pub dm_device_id: Option<String>,
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
    /// The id of the sim's WNS channel the device listens on (`…/wns/channels/{channelId}`).
    pub channel_id: Option<String>,
    /// Nodes the device does not have: their `Get` is answered 404.
    #[serde(default)]
    pub lacks: Vec<String>,
    /// A WNS channel the device renewed: reported in the first message of its sessions.
    pub renewed_channel_uri: Option<String>,
}

impl SimDevice {
    /// The device runs a DM client: it has a DM identity and a certificate to show.
    pub fn speaks_omadm(&self) -> bool {
        self.dm_device_id.is_some() && self.cert_pem.is_some() && self.key_pem.is_some()
    }
}

/// One report a simulated device sent, with the answer it got.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SentReport {
    pub device_id: String,
    pub job_id: Option<String>,
    pub categories: Vec<String>,
    pub at: String,
    /// The product's answer (0: no answer, the request failed).
    pub status: u16,
}

/// One device, or a list of them (a bench registers thousands).
#[derive(Deserialize)]
#[serde(untagged)]
enum Registration {
    One(SimDevice),
    Many(Vec<SimDevice>),
}

pub(crate) async fn register(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<Registration>(&body) {
        Ok(registration) => {
            let devices = match registration {
                Registration::One(device) => vec![device],
                Registration::Many(devices) => devices,
            };
            let mut known = lock(&state.devices);
            for device in devices {
                known.insert(device.device_id.clone(), device);
            }
            Json(json!({ "status": true })).into_response()
        }
        Err(error) => refused(&error),
    }
}

pub(crate) async fn reports(State(state): State<Arc<SimState>>) -> Json<Vec<SentReport>> {
    Json(lock(&state.reports).clone())
}

/// After an agent push the sim accepted: the device, if registered and told to, reports the
/// pushed categories (in a task of its own; the push's answer does not wait for it).
pub(crate) fn after_push(state: &Arc<SimState>, device_id: &str, payload: &Value) {
    let Some(device) = lock(&state.devices).get(device_id).cloned() else {
        return;
    };
    let job_id = payload["jobId"].as_str().map(str::to_owned);
    let pushed: Vec<Category> = payload["categories"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str()?.parse().ok())
        .collect();
    let (mode, delay) = {
        let plan = lock(&state.plan);
        (plan.report.unwrap_or_default(), plan.report_delay_ms)
    };
    let categories: Vec<Category> = match mode {
        ReportMode::On => pushed,
        ReportMode::Off | ReportMode::Drop => Vec::new(),
        ReportMode::Partial => {
            // Only the first category any push of this job named.
            let Some(job) = job_id.clone() else {
                return;
            };
            let mut answered = lock(&state.partial_jobs);
            if answered.insert(job) {
                pushed.into_iter().take(1).collect()
            } else {
                Vec::new()
            }
        }
    };
    if categories.is_empty() {
        return;
    }
    let state = Arc::clone(state);
    tokio::spawn(async move {
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        send(&state, &device, job_id, &categories).await;
    });
}

/// How long a device keeps trying to deliver a report the product could not take (an agent
/// retries: its report is what the refresh waits for).
const DELIVERY_PATIENCE: Duration = Duration::from_secs(30);

/// Sends one report through the product's device route, again after a failure it may recover
/// from (no answer, 429, 5xx) for up to [`DELIVERY_PATIENCE`], and records the last answer.
async fn send(
    state: &SimState,
    device: &SimDevice,
    job_id: Option<String>,
    categories: &[Category],
) {
    let (Some(base), Some(node_key)) = (lock(&state.device_api).clone(), &device.node_key) else {
        return;
    };
    let reported: serde_json::Map<String, Value> = categories
        .iter()
        .map(|category| {
            let nodes: serde_json::Map<String, Value> = category
                .nodes()
                .map(|uri| {
                    (
                        uri.to_owned(),
                        Value::String(fixture(&device.device_id, uri)),
                    )
                })
                .collect();
            (category.as_str().to_owned(), json!({ "nodes": nodes }))
        })
        .collect();
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let body = json!({ "jobId": job_id, "collectedAt": now, "categories": reported });
    let url = format!(
        "{base}/v1/agent/windows/devices/{}/reports",
        device.device_id
    );
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    let status = loop {
        let status = match state
            .http
            .post(&url)
            .bearer_auth(node_key)
            .json(&body)
            .send()
            .await
        {
            Ok(answer) => answer.status().as_u16(),
            Err(_) => 0,
        };
        let recoverable = status == 0 || status == 429 || status >= 500;
        if !recoverable || started.elapsed() + pause > DELIVERY_PATIENCE {
            break status;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    };
    lock(&state.reports).push(SentReport {
        device_id: device.device_id.clone(),
        job_id,
        categories: categories.iter().map(|c| c.as_str().to_owned()).collect(),
        at: now,
        status,
    });
}

/// A plausible value for `uri` on `device`: fixed per device and node, so a test can predict it.
pub fn fixture(device: &str, uri: &str) -> String {
    let leaf = uri.rsplit('/').next().unwrap_or(uri);
    format!("{leaf}-of-{device}")
}
