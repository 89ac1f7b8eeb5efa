//! The stack's life: start (in process, or as the real binaries), seed, wait until ready, and
//! remove everything the test made.

use crate::processes::{Services, spawn_binary};
use push_gateway_sim::SimServer;
use refresh_shared::{
    broker::{self, Topology},
    settings::{Core, Load, MongoSettings},
    store::{Organization, Store},
    token::PERMISSION_DEVICE_INFO,
};
use refresh_testkit::{
    env,
    process::{free_addr, wait_ready},
    seed, teardown,
};
use std::{collections::HashMap, net::SocketAddr};
use tokio_util::sync::CancellationToken;

use crate::wait::DEADLINE;

/// The environment's variables, made private to one test (`refresh_testkit::env`): its own
/// database and queue prefix, ephemeral ports, the given sim as both gateways, and quick
/// retries; then `overrides`.
/// The stacks' `WEBHOOK_SIGNING_KEY`: base64 of the 32 bytes "device-refresh test signing key!".
pub const WEBHOOK_SIGNING_KEY: &str = "ZGV2aWNlLXJlZnJlc2ggdGVzdCBzaWduaW5nIGtleSE=";

pub fn test_env(sim: &SimServer, overrides: &[(&str, String)]) -> HashMap<String, String> {
    let mut local = vec![
        ("API_ADDR", "127.0.0.1:0".to_owned()),
        ("WORKER_ADDR", "127.0.0.1:0".to_owned()),
        ("DEVICE_ADDR", "127.0.0.1:0".to_owned()),
        // The sim's devices report for every push; a test of the per-device limit sets its own.
        ("DEVICE_RATE_LIMIT_PER_SECOND", "1000".to_owned()),
        ("DEVICE_RATE_LIMIT_BURST", "1000".to_owned()),
        ("PUSH_RETRY_INITIAL_MS", "50".to_owned()),
        ("PUSH_RETRY_MAX_INTERVAL_MS", "200".to_owned()),
        ("PUSH_TIMEOUT_MS", "2000".to_owned()),
        ("WEBHOOK_SIGNING_KEY", WEBHOOK_SIGNING_KEY.to_owned()),
    ];
    local.extend_from_slice(overrides);
    env::isolated(&std::env::vars().collect(), "test", &sim.url(), &local)
}

/// A binary's settings from the test's variables.
fn settings_of<S: Load>(vars: &HashMap<String, String>) -> S {
    S::from_lookup(|name| vars.get(name).cloned()).expect("test settings are valid")
}

/// A running api + worker + sim with one organization and a token for it.
pub struct TestStack {
    pub api: String,
    /// The api's device listener (`DEVICE_ADDR`), where devices report.
    pub devices: String,
    pub worker: String,
    pub http: reqwest::Client,
    pub store: Store,
    pub sim: SimServer,
    /// The worker's settings (the core, the worker's and the gateways' sections), as the
    /// test's variables set them.
    pub settings: refresh_worker::Settings,
    pub organization: Organization,
    /// A token of `organization` with the refresh permission.
    pub token: String,
    /// Behind a lock so a test can kill the worker while it is submitting through `&self`.
    pub(crate) services: std::sync::Mutex<Services>,
    /// The broker the test's queues are deleted from at the end, when not the environment's
    /// `AMQP_URL` (see [`TestStack::cleaning_up_on`]).
    cleanup_broker: Option<String>,
}

impl TestStack {
    pub async fn start() -> TestStack {
        TestStack::start_with(&[]).await
    }

    /// Starts the stack with some settings overridden (env var names, as operators set them).
    pub async fn start_with(overrides: &[(&str, String)]) -> TestStack {
        let sim = start_sim().await;
        let vars = test_env(&sim, overrides);
        let settings: refresh_worker::Settings = settings_of(&vars);
        let stop = CancellationToken::new();
        let api = refresh_api::App::build(settings_of(&vars))
            .await
            .expect("build api");
        let api_addr = api.local_addr();
        let device_addr = api.device_addr();
        tokio::spawn(api.run_until_stopped(stop.clone().cancelled_owned()));
        let worker = refresh_worker::Worker::build(settings.clone())
            .await
            .expect("build worker");
        let worker_addr = worker.local_addr();
        tokio::spawn(worker.run_until_stopped(stop.clone().cancelled_owned()));
        TestStack::seeded(
            sim,
            settings,
            [api_addr, device_addr, worker_addr],
            Services::InProcess { stop },
        )
        .await
    }

    /// Like [`TestStack::start_with`], with `refresh-api` and `refresh-worker` running as the
    /// real binaries, which a test can kill and restart.
    pub async fn spawn_with(overrides: &[(&str, String)]) -> TestStack {
        let sim = start_sim().await;
        let mut vars = test_env(&sim, overrides);
        let [api_addr, device_addr, worker_addr] =
            [(); 3].map(|()| free_addr().expect("a free port"));
        vars.insert("API_ADDR".to_owned(), api_addr.to_string());
        vars.insert("DEVICE_ADDR".to_owned(), device_addr.to_string());
        vars.insert("WORKER_ADDR".to_owned(), worker_addr.to_string());
        let settings = settings_of(&vars);
        let api = spawn_binary("refresh-api", &vars);
        let worker = spawn_binary("refresh-worker", &vars);
        let services = Services::Processes {
            env: vars,
            api,
            worker,
        };
        let addrs = [api_addr, device_addr, worker_addr];
        let stack = TestStack::seeded(sim, settings, addrs, services).await;
        stack.wait_ready(&stack.api.clone()).await;
        stack
    }

    /// Seeds an organization and a token, and waits for the worker to consume.
    /// `addrs`: the api's, its device listener's and the worker's.
    async fn seeded(
        sim: SimServer,
        settings: refresh_worker::Settings,
        addrs: [SocketAddr; 3],
        services: Services,
    ) -> TestStack {
        let [api_addr, device_addr, worker_addr] = addrs;
        sim.report_to(&format!("http://{device_addr}"));
        let store = Store::connect(&settings.core.mongo, "refresh-tests")
            .await
            .expect("store");
        store.ensure_indexes().await.expect("indexes");
        let (organization, mut tokens) =
            seed::organization(&store, "org", &[PERMISSION_DEVICE_INFO], 1)
                .await
                .expect("organization and token");
        let token = tokens.pop().expect("one token");
        let stack = TestStack {
            api: format!("http://{api_addr}"),
            devices: format!("http://{device_addr}"),
            worker: format!("http://{worker_addr}"),
            http: reqwest::Client::new(),
            store,
            sim,
            settings,
            organization,
            token,
            services: std::sync::Mutex::new(services),
            cleanup_broker: None,
        };
        stack.wait_ready(&stack.worker.clone()).await;
        stack
    }

    /// A collection of the stack's database, read directly: what a test checks behind the api's
    /// back (the product itself reaches it only through `Store`'s queries).
    pub fn collection<T: Send + Sync>(&self, name: &str) -> mongodb::Collection<T> {
        self.store.database().collection(name)
    }

    /// Deletes the test's queues from the broker at `amqp_url` when it ends, rather than from
    /// the environment's: for a stack on another broker (a cluster) that no proxy of the test
    /// stands in front of (a proxy cannot forward while the test's runtime is in the drop).
    pub fn cleaning_up_on(mut self, amqp_url: &str) -> TestStack {
        self.cleanup_broker = Some(amqp_url.to_owned());
        self
    }

    /// Waits until `base`'s `/readyz` answers 200.
    pub(crate) async fn wait_ready(&self, base: &str) {
        let url = format!("{base}/readyz");
        wait_ready(&self.http, &url, DEADLINE)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
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
        let environment = Core::from_env().expect("environment settings are valid");
        let mongo = MongoSettings {
            database: self.settings.core.mongo.database.clone(),
            ..environment.mongo
        };
        let amqp_url = match self.cleanup_broker.take() {
            Some(url) => url.into(),
            None => environment.amqp.url,
        };
        let topology = Topology::new(&self.settings.core.amqp);
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                // Each part on its own: a broker that is gone must not keep the database.
                if let Ok(store) = Store::connect(&mongo, "refresh-tests-cleanup").await {
                    let _ = store.database().drop().await;
                }
                if let Ok(broker) = broker::connect(&amqp_url, "refresh-tests-cleanup").await {
                    let _ = teardown::delete_topology(&broker, &topology).await;
                    let _ = broker.close(200, "bye".into()).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

async fn start_sim() -> SimServer {
    if std::env::var_os("TEST_LOG").is_some() {
        refresh_shared::telemetry::init_tracing(refresh_shared::settings::LogFormat::Pretty);
    }
    SimServer::start("127.0.0.1:0".parse().expect("address"), None)
        .await
        .expect("start sim")
}
