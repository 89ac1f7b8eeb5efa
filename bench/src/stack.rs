//! The product under measurement: `push-gateway-sim`, `refresh-api` and `refresh-worker` as the
//! real binaries (built next to this one, same profile), against the real RabbitMQ and MongoDB,
//! with a database and queue prefix of their own; and the data they need.

use anyhow::Context;
use bson::oid::ObjectId;
use refresh_shared::{
    broker::Topology,
    device::DeviceState,
    settings::{Core, Load},
    store::{Device, NewDevice, Organization, PushRoutes, Store},
    token::{self, NewToken, PERMISSION_DEVICE_INFO},
};
use refresh_testkit::{
    env,
    process::{Rss, binary, free_addr, rss, wait_ready},
    prometheus, seed, teardown,
};
use serde_json::Value;
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use tokio::process::{Child, Command};

/// How long a service may take to answer `/readyz`, or to exit after SIGTERM.
const PATIENCE: Duration = Duration::from_secs(30);

/// A service process, its output in a log file.
pub struct Process {
    name: &'static str,
    child: Child,
}

impl Process {
    pub fn spawn(
        name: &'static str,
        env: &HashMap<String, String>,
        logs: &Path,
    ) -> anyhow::Result<Process> {
        let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
        let child = Command::new(binary(name)?)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Process::adopt(name, child))
    }

    pub fn adopt(name: &'static str, child: Child) -> Process {
        Process { name, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub fn rss(&self) -> Rss {
        rss(self.pid()).unwrap_or_default()
    }

    /// SIGTERM, and waits for the exit; returns the peak RSS it reached.
    pub async fn stop(&mut self) -> anyhow::Result<Rss> {
        let rss = self.rss();
        let pid = self.pid().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .context("running kill")?;
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .with_context(|| format!("{} did not exit within {PATIENCE:?}", self.name))??;
        Ok(rss)
    }
}

/// The running product.
pub struct Stack {
    pub env: HashMap<String, String>,
    /// What the bench itself reads: the database and the broker of the run.
    pub settings: Core,
    pub store: Store,
    pub http: reqwest::Client,
    pub api_url: String,
    pub worker_url: String,
    pub sim_url: String,
    pub logs: PathBuf,
    pub sim: Process,
    pub api: Process,
    /// Started and stopped by the measurements that need it.
    pub worker: Option<Process>,
    /// The highest peak RSS of the worker processes that have stopped.
    pub worker_peak_kib: u64,
}

impl Stack {
    /// Starts the sim and the api (not the worker) with `overrides` on top of the bench's
    /// environment.
    pub async fn start(
        base: &HashMap<String, String>,
        overrides: &[(&str, String)],
        logs: &Path,
    ) -> anyhow::Result<Stack> {
        let (api_addr, worker_addr, sim_addr) = (free_addr()?, free_addr()?, free_addr()?);
        let device_addr = free_addr()?;
        let sim_url = format!("http://{sim_addr}");
        let mut local = vec![
            ("API_ADDR", api_addr.to_string()),
            ("DEVICE_ADDR", device_addr.to_string()),
            // The sim's devices report to the api's device listener.
            ("SIM_DEVICE_API_URL", format!("http://{device_addr}")),
            ("WORKER_ADDR", worker_addr.to_string()),
            ("SIM_ADDR", sim_addr.to_string()),
            ("LOG_FORMAT", "json".to_owned()),
        ];
        local.extend_from_slice(overrides);
        let env = env::isolated(base, "bench", &sim_url, &local);
        let settings = Core::from_lookup(|name| env.get(name).cloned())
            .map_err(|e| anyhow::anyhow!("bench settings: {e}"))?;
        let store = Store::connect(&settings.mongo, "refresh-bench").await?;
        store.ensure_indexes().await?;
        let http = reqwest::Client::new();
        let sim = Process::spawn("push-gateway-sim", &env, logs)?;
        let api = Process::spawn("refresh-api", &env, logs)?;
        let api_url = format!("http://{api_addr}");
        wait_ready(&http, &format!("{sim_url}/_sim/pushes"), PATIENCE).await?;
        wait_ready(&http, &format!("{api_url}/readyz"), PATIENCE).await?;
        Ok(Stack {
            env,
            settings,
            store,
            http,
            api_url,
            worker_url: format!("http://{worker_addr}"),
            sim_url,
            logs: logs.to_owned(),
            sim,
            api,
            worker: None,
            worker_peak_kib: 0,
        })
    }

    /// Stops the api and starts it again with some of its settings overridden (for the rest
    /// of the run).
    pub async fn restart_api(&mut self, overrides: &[(&str, String)]) -> anyhow::Result<()> {
        for (name, value) in overrides {
            self.env.insert((*name).to_owned(), value.clone());
        }
        // Stopped first: the new one listens on the same address.
        self.api.stop().await?;
        self.api = Process::spawn("refresh-api", &self.env, &self.logs)?;
        wait_ready(&self.http, &format!("{}/readyz", self.api_url), PATIENCE).await
    }

    pub fn topology(&self) -> Topology {
        Topology::new(&self.settings.amqp)
    }

    pub async fn start_worker(&mut self) -> anyhow::Result<()> {
        self.start_worker_with(&[]).await
    }

    /// Starts the worker with some of its settings overridden.
    pub async fn start_worker_with(&mut self, overrides: &[(&str, &str)]) -> anyhow::Result<()> {
        let mut env = self.env.clone();
        for (name, value) in overrides {
            env.insert((*name).to_owned(), (*value).to_owned());
        }
        self.worker = Some(Process::spawn("refresh-worker", &env, &self.logs)?);
        wait_ready(&self.http, &format!("{}/readyz", self.worker_url), PATIENCE).await
    }

    pub async fn stop_worker(&mut self) -> anyhow::Result<()> {
        if let Some(mut worker) = self.worker.take() {
            let rss = worker.stop().await?;
            self.worker_peak_kib = self.worker_peak_kib.max(rss.peak_kib);
        }
        Ok(())
    }

    /// Categories the running worker has recorded `pushed` (its `refresh_categories_total`).
    pub async fn categories_pushed(&self) -> anyhow::Result<u64> {
        self.worker_counter("refresh_categories_total", r#"outcome="pushed""#)
            .await
    }

    /// Device reports the running worker has applied.
    pub async fn reports_applied(&self) -> anyhow::Result<u64> {
        self.worker_counter("refresh_reports_applied_total", "")
            .await
    }

    /// The sum of a counter's samples whose labels contain `labels`, on the worker's page.
    async fn worker_counter(&self, name: &str, labels: &str) -> anyhow::Result<u64> {
        let page = self
            .http
            .get(format!("{}/metrics", self.worker_url))
            .send()
            .await?
            .text()
            .await?;
        Ok(prometheus::samples(&page, name, labels).sum::<f64>() as u64)
    }

    /// Sets the sim's answers (`{"mode":"ok"}` resets).
    pub async fn sim_plan(&self, plan: Value) -> anyhow::Result<()> {
        self.http
            .post(format!("{}/_sim/faults", self.sim_url))
            .json(&plan)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// An organization with `tokens` refresh tokens.
    pub async fn organization(&self, tokens: usize) -> anyhow::Result<(Organization, Vec<String>)> {
        let permissions = [PERMISSION_DEVICE_INFO];
        Ok(seed::organization(&self.store, "bench", &permissions, tokens).await?)
    }

    /// `count` active devices of `organization` reachable through the agent, tagged `tag`,
    /// each with a node key and registered with the sim, which reports for them.
    pub async fn devices(
        &self,
        organization: ObjectId,
        count: usize,
        tag: &str,
    ) -> anyhow::Result<Vec<Device>> {
        let mut devices = Vec::with_capacity(count);
        while devices.len() < count {
            let chunk = (count - devices.len()).min(1_000);
            let keys: Vec<NewToken> = (0..chunk).map(|_| token::generate_node_key()).collect();
            let new = keys
                .iter()
                .enumerate()
                .map(|(n, key)| {
                    let number = devices.len() + n;
                    NewDevice {
                        organization,
                        state: DeviceState::Active,
                        serial_number: Some(format!("BENCH-{tag}-{number:07}")),
                        imei: None,
                        tags: vec![tag.to_owned()],
                        push: PushRoutes {
                            agent: true,
                            wns: None,
                        },
                        node_key_hash: Some(key.hash.clone()),
                        omadm: None,
                    }
                })
                .collect();
            let created = self.store.create_devices(new).await?;
            let registrations: Vec<Value> = created
                .iter()
                .zip(&keys)
                .map(|(device, key)| {
                    serde_json::json!({ "deviceId": device.id.to_hex(), "nodeKey": key.plaintext })
                })
                .collect();
            self.http
                .post(format!("{}/_sim/devices", self.sim_url))
                .json(&registrations)
                .send()
                .await?
                .error_for_status()?;
            devices.extend(created);
        }
        Ok(devices)
    }

    /// Stops every process, then drops the database and deletes the queues and exchanges the run
    /// made.
    pub async fn teardown(mut self, connection: &lapin::Connection) -> anyhow::Result<u64> {
        self.stop_worker().await?;
        let topology = self.topology();
        let api = self.api.stop().await?;
        self.sim.stop().await?;
        teardown::remove(&self.store, connection, &topology).await?;
        Ok(api.peak_kib)
    }
}
