//! Test helpers for the end-to-end suite, and the push-gateway simulator.
//!
//! [`TestStack`] runs the real api and worker (as libraries, on port 0) against the real
//! RabbitMQ and MongoDB named by `AMQP_URL` / `MONGODB_URI`, and a real push-gateway-sim, with a
//! fresh database and queue prefix per test.

pub mod proxy;
pub mod raw;
pub mod sim;

use bson::oid::ObjectId;
use refresh_shared::{
    Settings,
    broker::Topology,
    device::DeviceState,
    settings::MongoSettings,
    store::{BatchView, Device, JobRecord, NewDevice, Organization, PushRoutes, Store, WnsChannel},
    token::PERMISSION_DEVICE_INFO,
};
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::Value;
use sim::{PushRecord, SimServer};
use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    process::{Child, ExitStatus, Stdio},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// How long a test waits for something that should happen.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The environment's variables, made private to one test: its own database and queue prefix,
/// ephemeral ports, the given sim as both gateways, and quick retries; then `overrides`.
pub fn test_env(sim: &SimServer, overrides: &[(&str, String)]) -> HashMap<String, String> {
    let unique = ObjectId::new().to_hex();
    let mut vars: HashMap<String, String> = std::env::vars().collect();
    for (name, value) in [
        ("MONGODB_DB", format!("test_{unique}")),
        ("AMQP_PREFIX", format!("refresh.test.{unique}")),
        ("API_ADDR", "127.0.0.1:0".to_owned()),
        ("WORKER_ADDR", "127.0.0.1:0".to_owned()),
        ("AGENT_GATEWAY_URL", sim.url()),
        ("WNS_TOKEN_URL", format!("{}/wns/token", sim.url())),
        ("WNS_CLIENT_ID", "device-refresh-tests".to_owned()),
        ("WNS_CLIENT_SECRET", "not-a-real-secret".to_owned()),
        // The sim serves WNS channels over plain http on loopback.
        (
            "WNS_CHANNEL_HOST_SUFFIXES",
            format!(".notify.windows.com,{}", sim.url()),
        ),
        ("PUSH_RETRY_INITIAL_MS", "50".to_owned()),
        ("PUSH_RETRY_MAX_INTERVAL_MS", "200".to_owned()),
        ("PUSH_TIMEOUT_MS", "2000".to_owned()),
    ] {
        vars.insert(name.to_owned(), value);
    }
    for (name, value) in overrides {
        vars.insert((*name).to_owned(), value.clone());
    }
    vars
}

fn settings_of(vars: &HashMap<String, String>) -> Settings {
    Settings::from_lookup(|name| vars.get(name).cloned()).expect("test settings are valid")
}

/// How the api and the worker run.
enum Services {
    /// As libraries on this test's runtime.
    InProcess { stop: CancellationToken },
    /// As the real binaries, for tests that kill or signal them.
    Processes {
        env: HashMap<String, String>,
        api: Child,
        worker: Child,
    },
}

/// A running api + worker + sim with one organization and a token for it.
pub struct TestStack {
    pub api: String,
    pub worker: String,
    pub http: reqwest::Client,
    pub store: Store,
    pub sim: SimServer,
    pub settings: Settings,
    pub organization: Organization,
    /// A token of `organization` with the refresh permission.
    pub token: String,
    /// Behind a lock so a test can kill the worker while it is submitting through `&self`.
    services: std::sync::Mutex<Services>,
}

impl TestStack {
    pub async fn start() -> TestStack {
        TestStack::start_with(&[]).await
    }

    /// Starts the stack with some settings overridden (env var names, as operators set them).
    pub async fn start_with(overrides: &[(&str, String)]) -> TestStack {
        let sim = start_sim().await;
        let vars = test_env(&sim, overrides);
        let settings = settings_of(&vars);
        let stop = CancellationToken::new();
        let api = refresh_api::App::build(settings.clone())
            .await
            .expect("build api");
        let api_addr = api.local_addr();
        tokio::spawn(api.run_until_stopped(stop.clone().cancelled_owned()));
        let worker = refresh_worker::Worker::build(settings.clone())
            .await
            .expect("build worker");
        let worker_addr = worker.local_addr();
        tokio::spawn(worker.run_until_stopped(stop.clone().cancelled_owned()));
        TestStack::seeded(
            sim,
            settings,
            api_addr,
            worker_addr,
            Services::InProcess { stop },
        )
        .await
    }

    /// Like [`TestStack::start_with`], with `refresh-api` and `refresh-worker` running as the
    /// real binaries, which a test can kill and restart.
    pub async fn spawn_with(overrides: &[(&str, String)]) -> TestStack {
        let sim = start_sim().await;
        let mut vars = test_env(&sim, overrides);
        let (api_addr, worker_addr) = (free_addr(), free_addr());
        vars.insert("API_ADDR".to_owned(), api_addr.to_string());
        vars.insert("WORKER_ADDR".to_owned(), worker_addr.to_string());
        let settings = settings_of(&vars);
        let api = spawn_binary("refresh-api", &vars);
        let worker = spawn_binary("refresh-worker", &vars);
        let services = Services::Processes {
            env: vars,
            api,
            worker,
        };
        let stack = TestStack::seeded(sim, settings, api_addr, worker_addr, services).await;
        stack.wait_ready(&stack.api.clone()).await;
        stack
    }

    /// Seeds an organization and a token, and waits for the worker to consume.
    async fn seeded(
        sim: SimServer,
        settings: Settings,
        api_addr: SocketAddr,
        worker_addr: SocketAddr,
        services: Services,
    ) -> TestStack {
        let store = Store::connect(&settings.mongo, "refresh-tests")
            .await
            .expect("store");
        store.ensure_indexes().await.expect("indexes");
        let slug = format!("org-{}", ObjectId::new().to_hex());
        let organization = store
            .create_organization(&slug, "Test Org")
            .await
            .expect("org");
        let (_, token) = store
            .create_token(
                organization.id,
                vec![PERMISSION_DEVICE_INFO.to_owned()],
                None,
            )
            .await
            .expect("token");
        let stack = TestStack {
            api: format!("http://{api_addr}"),
            worker: format!("http://{worker_addr}"),
            http: reqwest::Client::new(),
            store,
            sim,
            settings,
            organization,
            token,
            services: std::sync::Mutex::new(services),
        };
        stack.wait_ready(&stack.worker.clone()).await;
        stack
    }

    /// Waits until `base`'s `/readyz` answers 200.
    async fn wait_ready(&self, base: &str) {
        let url = format!("{base}/readyz");
        wait_until(&format!("{url} to answer 200"), DEADLINE, || async {
            let response = self.http.get(&url).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
    }

    /// Runs `action` on the worker process (and the environment it was started with).
    fn with_worker<T>(&self, action: impl FnOnce(&HashMap<String, String>, &mut Child) -> T) -> T {
        let mut services = self.services.lock().expect("services lock");
        match &mut *services {
            Services::Processes { env, worker, .. } => action(env, worker),
            Services::InProcess { .. } => panic!("start the stack with TestStack::spawn_with"),
        }
    }

    /// `kill -9` of the worker process.
    pub fn kill_worker(&self) {
        self.with_worker(|_, worker| {
            worker.kill().expect("SIGKILL the worker");
            worker.wait().expect("reap the worker");
        });
    }

    /// SIGTERM to the worker; returns its exit status and how long it took to exit.
    pub async fn terminate_worker(&self, deadline: Duration) -> (ExitStatus, Duration) {
        let pid = self.with_worker(|_, worker| worker.id().to_string());
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        let started = Instant::now();
        let status = wait_until("the worker to exit", deadline, || {
            let status = self.with_worker(|_, worker| worker.try_wait().expect("worker status"));
            async move { status }
        })
        .await;
        (status, started.elapsed())
    }

    /// Starts a new worker process in place of the one that was killed or stopped.
    pub async fn restart_worker(&self) {
        self.with_worker(|env, worker| *worker = spawn_binary("refresh-worker", env));
        self.wait_ready(&self.worker).await;
    }

    /// An ACTIVE device reachable through the agent and (with a channel on the sim) WNS.
    pub async fn device(&self) -> Device {
        self.device_with(DeviceState::Active, true, true).await
    }

    pub async fn device_with(&self, state: DeviceState, agent: bool, wns: bool) -> Device {
        self.device_in(self.organization.id, state, agent, wns)
            .await
    }

    pub async fn device_in(
        &self,
        organization: ObjectId,
        state: DeviceState,
        agent: bool,
        wns: bool,
    ) -> Device {
        let new = self.new_device(organization, state, agent, wns, &[]);
        self.store.create_device(new).await.expect("create device")
    }

    /// `count` devices of the stack's organization in `state`, reachable through the agent,
    /// carrying `tags`, created in a few writes.
    pub async fn devices(&self, count: usize, state: DeviceState, tags: &[&str]) -> Vec<Device> {
        let mut devices = Vec::with_capacity(count);
        for chunk in (0..count).collect::<Vec<_>>().chunks(1_000) {
            let new = chunk
                .iter()
                .map(|_| self.new_device(self.organization.id, state, true, false, tags))
                .collect();
            devices.extend(
                self.store
                    .create_devices(new)
                    .await
                    .expect("create devices"),
            );
        }
        devices
    }

    fn new_device(
        &self,
        organization: ObjectId,
        state: DeviceState,
        agent: bool,
        wns: bool,
        tags: &[&str],
    ) -> NewDevice {
        let unique = ObjectId::new().to_hex();
        let wns = wns.then(|| {
            let uri = format!("{}/wns/channels/{unique}", self.sim.url());
            WnsChannel::new(&uri, &self.settings.gateways.wns_channels)
                .expect("the sim's channels are admitted")
        });
        NewDevice {
            organization,
            state,
            serial_number: Some(format!("SN{}", &unique[12..])),
            imei: Some(format!(
                "35{}",
                u64::from_str_radix(&unique[14..], 16).unwrap() % 10_u64.pow(13)
            )),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            push: PushRoutes { agent, wns },
        }
    }

    /// Another tenant: a new organization and a refresh token of its own.
    pub async fn other_tenant(&self) -> (Organization, String) {
        let slug = format!("other-{}", ObjectId::new().to_hex());
        let other = self
            .store
            .create_organization(&slug, "Other")
            .await
            .expect("org");
        let (_, token) = self
            .store
            .create_token(other.id, vec![PERMISSION_DEVICE_INFO.to_owned()], None)
            .await
            .expect("token");
        (other, token)
    }

    /// A token of this stack's organization with the given permissions.
    pub async fn token_with(&self, permissions: &[&str]) -> String {
        let permissions = permissions.iter().map(|p| (*p).to_owned()).collect();
        self.store
            .create_token(self.organization.id, permissions, None)
            .await
            .expect("token")
            .1
    }

    pub fn refresh_url(&self, organization: &str, device: &str) -> String {
        format!(
            "{}/v1/organizations/{organization}/mdm/windows/enterprise/devices/{device}/info",
            self.api
        )
    }

    pub fn job_url(&self, organization: &str, job: &str) -> String {
        format!(
            "{}/v1/organizations/{organization}/mdm/windows/enterprise/refresh-jobs/{job}",
            self.api
        )
    }

    pub fn batches_url(&self, organization: &str) -> String {
        format!(
            "{}/v1/organizations/{organization}/mdm/windows/enterprise/refresh-batches",
            self.api
        )
    }

    /// `POST …/refresh-batches` in the stack's organization with the stack's token.
    pub async fn bulk(&self, body: &Value) -> Answer {
        let request = self
            .http
            .post(self.batches_url(&self.org_id()))
            .bearer_auth(&self.token)
            .json(body);
        Answer::of(request).await
    }

    /// `GET …/refresh-batches/{id}`, which must succeed.
    pub async fn batch(&self, id: &str) -> BatchView {
        let url = format!("{}/{id}", self.batches_url(&self.org_id()));
        let answer = Answer::of(self.http.get(url).bearer_auth(&self.token)).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        serde_json::from_value(answer.body["data"].clone()).expect("a batch view")
    }

    /// Waits until the batch is completed (or failed), checking on the way that its counts
    /// always add up to its total.
    pub async fn wait_for_batch(&self, id: &str, deadline: Duration) -> BatchView {
        let started = Instant::now();
        loop {
            let view = self.batch(id).await;
            assert_eq!(view.counts.sum(), view.total, "counts add up: {view:?}");
            if matches!(view.state.as_str(), "completed" | "failed") {
                return view;
            }
            assert!(
                started.elapsed() < deadline,
                "batch {id} not finished after {deadline:?}: {view:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The Prometheus page of the api or the worker (`base` is `self.api` or `self.worker`).
    pub async fn metrics(&self, base: &str) -> String {
        let response = self.http.get(format!("{base}/metrics")).send().await;
        response
            .expect("metrics")
            .text()
            .await
            .expect("a metrics page")
    }

    /// `POST …/info` with a JSON body and the stack's token.
    pub async fn refresh(&self, organization: &str, device: &str, body: &Value) -> Answer {
        let request = self
            .http
            .post(self.refresh_url(organization, device))
            .bearer_auth(&self.token)
            .json(body);
        Answer::of(request).await
    }

    /// The stack's organization id, as the path takes it.
    pub fn org_id(&self) -> String {
        self.organization.id.to_hex()
    }

    pub async fn job(&self, id: &str) -> JobRecord {
        let id = ObjectId::parse_str(id).expect("job id");
        self.store
            .job_by_id(id)
            .await
            .expect("read job")
            .expect("job exists")
    }

    /// Waits until the job reads `settled` (no category queued, pushing or retrying).
    pub async fn wait_for_settled_job(&self, id: &str) -> JobRecord {
        wait_until(&format!("job {id} to settle"), DEADLINE, || async {
            let job = self.job(id).await;
            job.categories
                .values()
                .all(|c| c.state.is_terminal())
                .then_some(job)
        })
        .await
    }

    pub async fn sim(&self, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.sim.url());
        let request = match body {
            Some(body) => self.http.post(url).json(&body),
            None => self.http.get(url),
        };
        request
            .send()
            .await
            .expect("sim")
            .json()
            .await
            .expect("sim json")
    }

    /// Sets the sim's fault plan (`POST /_sim/faults`).
    pub async fn fault(&self, plan: Value) {
        let answer = self.sim("/_sim/faults", Some(plan)).await;
        assert_eq!(answer["status"], Value::Bool(true), "{answer:?}");
    }

    /// Refreshes `categories` of `device`, addressed by id in the stack's organization.
    pub async fn refresh_device(&self, device: &Device, categories: &[&str]) -> Answer {
        let body = serde_json::json!({ "info": categories });
        self.refresh(&self.org_id(), &device.id.to_hex(), &body)
            .await
    }

    /// Refreshes `categories` of `device`, then waits for the job to settle.
    pub async fn settled_refresh(
        &self,
        device: &Device,
        categories: &[&str],
    ) -> (String, JobRecord) {
        let job_id = self.refresh_device(device, categories).await.job_id();
        let job = self.wait_for_settled_job(&job_id).await;
        (job_id, job)
    }

    /// Runs `refreshctl --json ARGS` against this stack (its database, broker prefix, api and
    /// token); panics unless it succeeds, and returns the JSON it printed.
    pub async fn refreshctl(&self, args: &[&str]) -> Value {
        let output = self.refreshctl_output(args).await;
        assert!(
            output.status.success(),
            "refreshctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("refreshctl prints JSON with --json")
    }

    /// Runs `refreshctl --json ARGS` against this stack, whatever its outcome.
    pub async fn refreshctl_output(&self, args: &[&str]) -> std::process::Output {
        // Not std's Command: `refreshctl bulk` follows a batch this test's runtime is serving.
        tokio::process::Command::new(binary("refreshctl"))
            .arg("--json")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("MONGODB_URI", self.settings.mongo.uri.expose_secret())
            .env("MONGODB_DB", &self.settings.mongo.database)
            .env("AMQP_URL", self.settings.amqp.url.expose_secret())
            .env("AMQP_PREFIX", &self.settings.amqp.prefix)
            .env("RETRY_TIERS_SECS", retry_tiers(&self.settings))
            .env("REFRESH_API_URL", &self.api)
            .env("REFRESH_TOKEN", &self.token)
            .env("SIM_ADDR", self.sim.addr.to_string())
            .env(
                "WNS_CHANNEL_HOST_SUFFIXES",
                self.settings.gateways.wns_channels.to_string(),
            )
            .output()
            .await
            .expect("run refreshctl")
    }

    pub async fn pushes(&self) -> Vec<PushRecord> {
        serde_json::from_value(self.sim("/_sim/pushes", None).await).expect("push records")
    }

    pub async fn pushes_for_job(&self, job: &str) -> Vec<PushRecord> {
        let mut pushes = self.pushes().await;
        pushes.retain(|p| p.job_id.as_deref() == Some(job));
        pushes
    }
}

impl Drop for TestStack {
    /// Stops the services, then removes the test's database, queues and exchanges.
    fn drop(&mut self) {
        let services = self.services.get_mut().unwrap_or_else(|e| e.into_inner());
        match services {
            Services::InProcess { stop } => stop.cancel(),
            Services::Processes { api, worker, .. } => {
                for child in [api, worker] {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        // Clients of its own, straight to the services the environment names: the test's
        // runtime is blocked in this drop, so neither the test's clients nor a test's proxy
        // (whose tasks live on that runtime) can make progress.
        let environment = Settings::from_env().expect("environment settings are valid");
        let mongo = MongoSettings {
            database: self.settings.mongo.database.clone(),
            ..environment.mongo
        };
        let amqp_url = environment.amqp.url.expose_secret().to_owned();
        let topology = Topology::new(&self.settings.amqp);
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                if let Ok(store) = Store::connect(&mongo, "refresh-tests-cleanup").await {
                    let _ = store.database().drop().await;
                }
                if let Ok(connection) =
                    lapin::Connection::connect(&amqp_url, Default::default()).await
                    && let Ok(channel) = connection.create_channel().await
                {
                    for (queue, _) in topology.queues() {
                        let _ = channel.queue_delete(queue.into(), Default::default()).await;
                    }
                    for exchange in topology.exchanges() {
                        let _ = channel
                            .exchange_delete(exchange.into(), Default::default())
                            .await;
                    }
                    let _ = connection.close(200, "bye".into()).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// `RETRY_TIERS_SECS` as `settings` has it: tools must declare the same topology.
fn retry_tiers(settings: &Settings) -> String {
    let tiers: Vec<String> = settings
        .amqp
        .retry_tiers
        .iter()
        .map(|tier| tier.as_secs().to_string())
        .collect();
    tiers.join(",")
}

async fn start_sim() -> SimServer {
    if std::env::var_os("TEST_LOG").is_some() {
        refresh_shared::telemetry::init_tracing(refresh_shared::settings::LogFormat::Pretty);
    }
    SimServer::start("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("start sim")
}

/// A loopback address nothing listens on right now.
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address")
}

/// Runs a workspace binary with exactly `env`; its output shows only with `TEST_LOG` set.
/// Runs a binary of this workspace with `env`. Its output goes to `<TEST_LOG_DIR>/<name>.log`
/// when the environment names such a folder (a test that reads the logs), to the test's own
/// output with `TEST_LOG` set, and nowhere otherwise.
fn spawn_binary(name: &str, env: &HashMap<String, String>) -> Child {
    let output = || match env.get("TEST_LOG_DIR") {
        Some(dir) => std::fs::File::options()
            .create(true)
            .append(true)
            .open(std::path::Path::new(dir).join(format!("{name}.log")))
            .map(Stdio::from)
            .expect("open the log file"),
        None if std::env::var_os("TEST_LOG").is_some() => Stdio::inherit(),
        None => Stdio::null(),
    };
    std::process::Command::new(binary(name))
        .env_clear()
        .envs(env)
        .stdout(output())
        .stderr(output())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"))
}

/// The value of `metric` on the line of a Prometheus text page that also carries `label`
/// (such as `queue="…"`; an empty `label` takes the first line of `metric`).
pub fn sample(page: &str, metric: &str, label: &str) -> Option<f64> {
    page.lines()
        .find(|line| line.split(['{', ' ']).next() == Some(metric) && line.contains(label))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// An HTTP answer: status, headers and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub async fn of(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("answer {status} is not JSON: {text:?}"));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Checks the answer is exactly the envelope with this status, code and message.
    pub fn assert_error(&self, status: StatusCode, code: u64, message: &str) {
        assert_eq!(self.status, status, "{:?}", self.body);
        assert_eq!(self.error_code(), code, "{:?}", self.body);
        assert_eq!(
            self.body["error"]["message"],
            Value::from(message),
            "{:?}",
            self.body
        );
        let mut keys: Vec<&String> = self.body.as_object().expect("an object").keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["error", "status"],
            "nothing but the envelope: {:?}",
            self.body
        );
    }

    /// The error code of an envelope answer, checking the envelope's shape on the way.
    pub fn error_code(&self) -> u64 {
        assert_eq!(self.body["status"], Value::Bool(false), "{:?}", self.body);
        assert!(self.body["error"]["message"].is_string(), "{:?}", self.body);
        self.body["error"]["code"].as_u64().expect("error.code")
    }

    pub fn batch_id(&self) -> String {
        assert_eq!(self.status, StatusCode::ACCEPTED, "{:?}", self.body);
        self.body["data"]["batchId"]
            .as_str()
            .expect("batchId")
            .to_owned()
    }

    pub fn job_id(&self) -> String {
        assert_eq!(self.status, StatusCode::OK, "{:?}", self.body);
        self.body["data"]["jobId"]
            .as_str()
            .expect("jobId")
            .to_owned()
    }
}

/// A binary of this workspace, built next to the test executables (`cargo build --bins`, which
/// the README's test command runs first).
pub fn binary(name: &str) -> std::path::PathBuf {
    let test_exe = std::env::current_exe().expect("test executable path");
    let profile_dir = test_exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}
