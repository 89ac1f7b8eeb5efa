//! `push-gateway-sim`: a real HTTP stand-in for both push gateways, with fault injection
//! (README, Binaries). It knows nothing of the rest of device-refresh: only the wire.
//!
//! - `POST /agent/v1/devices/{deviceId}/refresh`: the agent gateway (202 when it takes a push).
//! - `POST /wns/token`: WNS OAuth client credentials → a bearer token.
//! - `POST /wns/channels/{channelId}`: a WNS channel; needs that token, `X-WNS-Type: wns/raw`
//!   and `Content-Type: application/octet-stream`, like the real service, and records
//!   `X-WNS-Cache-Policy`, `X-WNS-TTL` and the job named by `MS-CV`.
//! - `GET /_sim/pushes`: every push received, with the answer given.
//! - `POST /_sim/faults`: what to answer next (see [`FaultPlan`]); `{"mode":"ok"}` resets the
//!   gateways' answers (and sets the devices' from the same body).
//! - `POST /_sim/devices`: a device the sim answers for: after an agent push it reports through
//!   the product's device route (see [`devices`]); `GET /_sim/reports`: what devices sent.
//!   After a WNS push to its channel, a device with a DM identity opens an OMA-DM session (see
//!   [`omadm`]); `POST /_sim/sessions` makes one poll now; `GET /_sim/sessions`: what they said.
//! - `POST /hooks/{name}`: a webhook receiver set up by `POST /_sim/receivers` (see
//!   [`receivers`]); `GET /_sim/receivers/{name}`: what it received.

pub mod devices;
pub mod omadm;
pub mod receivers;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use devices::{ReportMode, SentReport, SimDevice};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::{net::TcpListener, sync::watch};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SimGateway {
    Agent,
    Wns,
}

/// One push as the sim saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PushRecord {
    pub gateway: SimGateway,
    /// The device id (agent) or channel id (WNS) the push was addressed to.
    pub target: String,
    pub job_id: Option<String>,
    pub categories: Vec<String>,
    /// When the push arrived (RFC 3339). Not when it was answered: a push its sender gave up
    /// on (a timeout, a killed worker) may be answered after the sender did more, but it was
    /// made before.
    pub at: String,
    /// The status the sim answered with.
    pub status: u16,
    /// What a WNS push asked of WNS: keep it for an offline device (`X-WNS-Cache-Policy`), and
    /// for how long (`X-WNS-TTL`, seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// The W3C trace context the push came with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl PushRecord {
    /// A push as it arrives with `headers`, before the sim answers it.
    fn new(
        gateway: SimGateway,
        target: String,
        job_id: Option<String>,
        categories: Vec<String>,
        headers: &HeaderMap,
    ) -> PushRecord {
        PushRecord {
            gateway,
            target,
            job_id,
            categories,
            at: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            status: 0,
            cache_policy: None,
            ttl_secs: None,
            traceparent: headers
                .get("traceparent")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
        }
    }

    /// When the push arrived.
    pub fn time(&self) -> OffsetDateTime {
        OffsetDateTime::parse(&self.at, &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Answer every push with success; clears any plan.
    #[default]
    Ok,
    Fault,
}

/// What to answer, for one gateway or (without `gateway`) both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultPlan {
    #[serde(default)]
    pub mode: Mode,
    pub gateway: Option<SimGateway>,
    /// Statuses answered one per push, in order, before anything else applies.
    #[serde(default)]
    pub script: VecDeque<u16>,
    /// Status answered once the script is spent (with `failureRatio`, to that share of pushes).
    pub status: Option<u16>,
    pub failure_ratio: Option<f64>,
    /// Delay before every answer.
    #[serde(default)]
    pub latency_ms: u64,
    /// Seconds for `Retry-After` (agent 429) and `X-WNS-CONTINUE-AFTER` (WNS 406); default 1.
    pub retry_after: Option<u64>,
    /// How registered devices answer pushes (default: they report).
    pub report: Option<ReportMode>,
    /// How long a device takes before it reports.
    #[serde(default)]
    pub report_delay_ms: u64,
    /// The gateway takes each push at once (the device wakes and reports) but holds its
    /// answer until `POST /_sim/release`: a gateway slow to say it delivered, so that the
    /// device's report arrives before the sender learns the push went.
    #[serde(default)]
    pub hold_answers: bool,
}

struct SimState {
    pushes: Mutex<Vec<PushRecord>>,
    plan: Mutex<FaultPlan>,
    tokens: Mutex<HashSet<String>>,
    devices: Mutex<HashMap<String, SimDevice>>,
    /// Where devices report: the product's device listener.
    device_api: Mutex<Option<String>>,
    reports: Mutex<Vec<SentReport>>,
    /// Jobs a device in `partial` mode has answered already.
    partial_jobs: Mutex<HashSet<String>>,
    http: reqwest::Client,
    /// The CA the product's device listener certificate is checked against, when it has TLS.
    server_ca: Mutex<Option<reqwest::Certificate>>,
    /// Devices in a session now, and whether a push came during it (one more session after).
    in_session: Mutex<HashMap<String, bool>>,
    sessions: Mutex<Vec<omadm::SessionRecord>>,
    /// Webhook receivers by name.
    receivers: Mutex<HashMap<String, receivers::Receiver>>,
    /// Whether answers are held now (`holdAnswers`); held pushes wait for it to clear.
    holding: watch::Sender<bool>,
}

impl SimState {
    fn new(device_api: Option<String>) -> SimState {
        SimState {
            pushes: Mutex::default(),
            plan: Mutex::default(),
            tokens: Mutex::default(),
            devices: Mutex::default(),
            device_api: Mutex::new(device_api),
            reports: Mutex::default(),
            partial_jobs: Mutex::default(),
            server_ca: Mutex::default(),
            in_session: Mutex::default(),
            sessions: Mutex::default(),
            receivers: Mutex::default(),
            holding: watch::Sender::new(false),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }
}

impl SimState {
    /// How registered devices answer now.
    fn report_mode(&self) -> ReportMode {
        lock(&self.plan).report.unwrap_or_default()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these cannot leave it half-updated; keep serving.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/agent/v1/devices/{device_id}/refresh", post(agent_push))
        .route("/wns/token", post(wns_token))
        .route("/wns/channels/{channel_id}", post(wns_push))
        .route("/_sim/pushes", get(pushes))
        .route("/_sim/faults", post(set_faults))
        .route("/_sim/release", post(release))
        .route("/_sim/devices", post(devices::register))
        .route("/_sim/reports", get(devices::reports))
        .route("/_sim/sessions", get(omadm::sessions).post(omadm::poll))
        .route("/hooks/{name}", post(receivers::deliver))
        .route("/_sim/receivers", post(receivers::set_up))
        .route("/_sim/receivers/{name}", get(receivers::received))
        .with_state(state)
}

/// A running sim; stops when dropped.
pub struct SimServer {
    pub addr: SocketAddr,
    state: Arc<SimState>,
    task: tokio::task::JoinHandle<()>,
}

impl SimServer {
    /// Serves on `addr`; its devices report to `device_api` (the product's `DEVICE_ADDR`, as a
    /// URL), once it is known (see [`SimServer::report_to`]).
    pub async fn start(addr: SocketAddr, device_api: Option<String>) -> std::io::Result<SimServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(SimState::new(device_api));
        let app = router(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(SimServer { addr, state, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the sim's devices report from now on.
    pub fn report_to(&self, device_api: &str) {
        *lock(&self.state.device_api) = Some(device_api.trim_end_matches('/').to_owned());
    }

    /// Devices trust the product's device listener certificate if `ca_pem` issued it.
    pub fn trust(&self, ca_pem: &[u8]) -> Result<(), reqwest::Error> {
        *lock(&self.state.server_ca) = Some(reqwest::Certificate::from_pem(ca_pem)?);
        Ok(())
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pushes(State(state): State<Arc<SimState>>) -> Json<Vec<PushRecord>> {
    Json(lock(&state.pushes).clone())
}

async fn set_faults(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    match serde_json::from_slice::<FaultPlan>(&body) {
        Ok(plan) => {
            let holding = plan.mode == Mode::Fault && plan.hold_answers;
            state.holding.send_replace(holding);
            *lock(&state.plan) = if plan.mode == Mode::Ok {
                FaultPlan {
                    report: plan.report,
                    report_delay_ms: plan.report_delay_ms,
                    ..FaultPlan::default()
                }
            } else {
                plan
            };
            Json(json!({ "status": true })).into_response()
        }
        Err(error) => refused(&error),
    }
}

/// Answers every held push and holds no more.
async fn release(State(state): State<Arc<SimState>>) -> Json<Value> {
    lock(&state.plan).hold_answers = false;
    state.holding.send_replace(false);
    Json(json!({ "status": true }))
}

/// A body the sim cannot read: 400 in the product's envelope.
fn refused(error: &serde_json::Error) -> Response {
    let body = json!({ "status": false, "error": { "code": 1001, "message": error.to_string() } });
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

async fn agent_push(
    State(state): State<Arc<SimState>>,
    Path(device_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let categories = payload["categories"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    let push = PushRecord::new(
        SimGateway::Agent,
        device_id.clone(),
        payload["jobId"].as_str().map(str::to_owned),
        categories,
        &headers,
    );
    take(&state, push, StatusCode::ACCEPTED, || {
        devices::after_push(&state, &device_id, &payload);
    })
    .await
}

async fn wns_token(State(state): State<Arc<SimState>>, body: Bytes) -> Response {
    let form: Vec<(String, String)> = url_form(&body);
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let valid = field("grant_type") == Some("client_credentials")
        && field("client_id").is_some_and(|v| !v.is_empty())
        && field("client_secret").is_some_and(|v| !v.is_empty());
    if !valid {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "invalid_client" })),
        )
            .into_response();
    }
    let token = format!("sim-{:032x}", rand::rng().random::<u128>());
    lock(&state.tokens).insert(token.clone());
    Json(json!({ "token_type": "bearer", "access_token": token, "expires_in": 86_400 }))
        .into_response()
}

async fn wns_push(
    State(state): State<Arc<SimState>>,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| lock(&state.tokens).contains(token));
    if !authorized {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let raw = headers.get("x-wns-type").is_some_and(|v| v == "wns/raw")
        && headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/octet-stream");
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let ttl_secs = text("x-wns-ttl").map(|ttl| ttl.parse::<u64>());
    // Like WNS: a raw push of at most 5 KB, a TTL that is a number of seconds.
    if !raw || body.len() > 5 * 1024 || matches!(ttl_secs, Some(Err(_))) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    // A WNS payload names no job: the correlation vector does.
    let push = PushRecord {
        cache_policy: text("x-wns-cache-policy"),
        ttl_secs: ttl_secs.and_then(Result::ok),
        ..PushRecord::new(
            SimGateway::Wns,
            channel_id.clone(),
            text("ms-cv"),
            Vec::new(),
            &headers,
        )
    };
    take(&state, push, StatusCode::OK, || {
        omadm::after_push(&state, &channel_id)
    })
    .await
}

/// Answers a push and, when the answer is a success, wakes its device with `wake`; while
/// answers are held, wakes the device first and answers once released.
async fn take(
    state: &SimState,
    push: PushRecord,
    success: StatusCode,
    wake: impl FnOnce(),
) -> Response {
    let mut holding = state.holding.subscribe();
    if *holding.borrow_and_update() {
        wake();
        // The sender stays: the state owns it.
        let _ = holding.wait_for(|held| !held).await;
        return answer(state, push, success).await;
    }
    let answer = answer(state, push, success).await;
    if answer.status().is_success() {
        wake();
    }
    answer
}

/// Decides the answer from the fault plan, records the push with it, and answers.
async fn answer(state: &SimState, mut push: PushRecord, success: StatusCode) -> Response {
    let gateway = push.gateway;
    let (status, latency, retry_after) = {
        let mut plan = lock(&state.plan);
        if plan.mode == Mode::Fault && plan.gateway.is_none_or(|g| g == gateway) {
            let scripted = plan.script.pop_front();
            let failing = plan
                .status
                .filter(|_| rand::rng().random::<f64>() < plan.failure_ratio.unwrap_or(1.0));
            let status = scripted
                .or(failing)
                .and_then(|code| StatusCode::from_u16(code).ok())
                .unwrap_or(success);
            (status, plan.latency_ms, plan.retry_after.unwrap_or(1))
        } else {
            (success, 0, 1)
        }
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    push.status = status.as_u16();
    lock(&state.pushes).push(push);
    let mut response = status.into_response();
    let seconds = HeaderValue::from(retry_after);
    let headers = response.headers_mut();
    match (gateway, status.as_u16()) {
        (SimGateway::Wns, 406) => {
            headers.insert(
                HeaderName::from_static("x-wns-status"),
                HeaderValue::from_static("channelthrottled"),
            );
            headers.insert(HeaderName::from_static("x-wns-continue-after"), seconds);
        }
        (SimGateway::Wns, 410) => {
            headers.insert(
                HeaderName::from_static("x-wns-status"),
                HeaderValue::from_static("expired"),
            );
        }
        (SimGateway::Agent, 429) => {
            headers.insert(header::RETRY_AFTER, seconds);
        }
        _ => {}
    }
    response
}

/// `application/x-www-form-urlencoded` pairs.
fn url_form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}
