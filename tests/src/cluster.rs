//! The RabbitMQ cluster of `scripts/rabbitmq-cluster` (three nodes on this machine), for the
//! tests of a deployment over several broker nodes. `scripts/test` starts it for the test files
//! that need it and names it in `RABBITMQ_CLUSTER_URL`.

use std::path::PathBuf;
use tokio::process::Command;

pub struct Cluster {
    /// The `AMQP_URL` that lists its nodes.
    pub url: String,
    /// Nodes killed by this test, started again when it ends, however it ends.
    killed: std::sync::Mutex<Vec<usize>>,
}

impl Cluster {
    /// The running cluster `RABBITMQ_CLUSTER_URL` names.
    pub fn from_env() -> Cluster {
        let url = std::env::var("RABBITMQ_CLUSTER_URL").unwrap_or_else(|_| {
            panic!(
                "this test needs a RabbitMQ cluster: `scripts/rabbitmq-cluster start`, then \
                 RABBITMQ_CLUSTER_URL=$(scripts/rabbitmq-cluster url) (scripts/test does both)"
            )
        });
        Cluster {
            url,
            killed: std::sync::Mutex::default(),
        }
    }

    /// The number of the node that leads quorum queue `queue`.
    pub async fn leader(&self, queue: &str) -> usize {
        let leader = script(&["leader", queue])
            .await
            .expect("a node names the leader");
        leader
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("a node number, not {leader:?}"))
    }

    /// The node of each consumer of `queue`; `None` when no node answered in time. A consumer
    /// whose node is down is still listed (a quorum queue keeps it, "suspected down", until
    /// that node is back).
    pub async fn consumer_nodes(&self, queue: &str) -> Option<Vec<usize>> {
        let nodes = script(&["consumers", queue]).await?;
        let nodes = nodes
            .lines()
            .map(|node| {
                node.parse()
                    .unwrap_or_else(|_| panic!("a node number, not {node:?}"))
            })
            .collect();
        Some(nodes)
    }

    /// `kill -9` of node `node`.
    pub async fn kill(&self, node: usize) {
        self.killed.lock().expect("killed nodes").push(node);
        script(&["kill", &node.to_string()])
            .await
            .expect("the node is killed");
    }
}

impl Cluster {
    /// Starts the killed nodes again (each rejoins the cluster).
    pub fn restart_killed(&self) {
        let killed = std::mem::take(&mut *self.killed.lock().expect("killed nodes"));
        for node in killed {
            let restarted = std::process::Command::new(path())
                .args(["restart", &node.to_string()])
                .status();
            if !restarted.is_ok_and(|status| status.success()) {
                eprintln!(
                    "could not restart node {node}: `scripts/rabbitmq-cluster restart {node}`"
                );
            }
        }
    }
}

/// However the test ends, the cluster is whole again after it.
impl Drop for Cluster {
    fn drop(&mut self) {
        self.restart_killed();
    }
}

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-cluster")
}

/// Runs `scripts/rabbitmq-cluster` with `args`: its standard output, `None` when it failed
/// (what it printed on standard error is shown).
async fn script(args: &[&str]) -> Option<String> {
    let output = Command::new(path())
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run {}: {e}", path().display()));
    if !output.status.success() {
        eprintln!(
            "rabbitmq-cluster {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}
