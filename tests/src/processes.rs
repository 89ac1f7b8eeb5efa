//! The api and worker as processes a test can kill, signal and restart.

use crate::{TestStack, wait::wait_until};
use refresh_testkit::process::free_addr;
use std::{
    collections::HashMap,
    process::{Child, ExitStatus, Stdio},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// How the api and the worker run.
pub(crate) enum Services {
    /// As libraries on this test's runtime.
    InProcess { stop: CancellationToken },
    /// As the real binaries, for tests that kill or signal them.
    Processes {
        env: HashMap<String, String>,
        api: Child,
        worker: Child,
    },
}

impl TestStack {
    /// Runs `action` on the environment the processes were started with.
    fn with_env<T>(&self, action: impl FnOnce(&HashMap<String, String>) -> T) -> T {
        self.with_worker(|env, _| action(env))
    }

    /// Runs `action` on the worker process (and the environment it was started with).
    fn with_worker<T>(&self, action: impl FnOnce(&HashMap<String, String>, &mut Child) -> T) -> T {
        let mut services = self.services.lock().expect("services lock");
        match &mut *services {
            Services::Processes { env, worker, .. } => action(env, worker),
            Services::InProcess { .. } => panic!("start the stack with TestStack::spawn_with"),
        }
    }

    /// The api process's id (a stack of real binaries only).
    pub fn api_pid(&self) -> u32 {
        let services = self.services.lock().expect("services lock");
        match &*services {
            Services::Processes { api, .. } => api.id(),
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

    /// Starts another `refresh-api` or `refresh-worker` process of this stack's deployment (a
    /// stack of real binaries only): the same database, broker and queue prefix, ports of its
    /// own; ready when this returns.
    pub async fn spawn_another(&self, name: &str) -> Another {
        let mut env = self.with_env(Clone::clone);
        let mut port = |variable: &str| {
            let addr = free_addr().expect("a free port");
            env.insert(variable.to_owned(), addr.to_string());
            format!("http://{addr}")
        };
        let base = match name {
            "refresh-api" => {
                port("DEVICE_ADDR");
                port("API_ADDR")
            }
            "refresh-worker" => port("WORKER_ADDR"),
            other => panic!("{other} is not a service"),
        };
        let another = Another {
            child: spawn_binary(name, &env),
            base,
        };
        self.wait_ready(&another.base).await;
        another
    }

    /// Starts a new worker process in place of the one that was killed or stopped.
    pub async fn restart_worker(&self) {
        self.with_worker(|env, worker| *worker = spawn_binary("refresh-worker", env));
        self.wait_ready(&self.worker).await;
    }
}

/// A process [`TestStack::spawn_another`] started; killed when dropped.
pub struct Another {
    child: Child,
    /// Where it serves: the api's `API_ADDR`, the worker's `WORKER_ADDR`.
    pub base: String,
}

impl Drop for Another {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Runs a binary of this workspace with `env`. Its output goes to `<TEST_LOG_DIR>/<name>.log`
/// when the environment names such a folder (a test that reads the logs), to the test's own
/// output with `TEST_LOG` set, and nowhere otherwise.
pub(crate) fn spawn_binary(name: &str, env: &HashMap<String, String>) -> Child {
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

/// A binary of this workspace, built next to the test executables (`cargo build --bins`, which
/// the README's test command runs first).
pub fn binary(name: &str) -> std::path::PathBuf {
    refresh_testkit::process::binary(name).unwrap_or_else(|error| panic!("{error}"))
}
