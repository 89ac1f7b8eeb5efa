//! The workspace's binaries as processes: where they are, free ports for them, whether they are
//! ready, and what memory they use.

use anyhow::bail;
use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    time::{Duration, Instant},
};

/// A binary of this workspace built in the same profile as the running executable: next to it
/// (a binary such as `refresh-bench`) or one folder up (a test executable, in `deps/`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let candidates = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|folder| folder.join(name));
    for path in candidates {
        if path.exists() {
            return Ok(path);
        }
    }
    bail!(
        "{name} is not built next to {}: build the workspace's binaries in the same profile first (`cargo build --workspace --bins`; scripts/test and scripts/bench do)",
        exe.display()
    )
}

/// A loopback address nothing listens on right now.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Polls `url` until it answers 200, for up to `patience`.
pub async fn wait_ready(
    http: &reqwest::Client,
    url: &str,
    patience: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Ok(response) = http.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        if started.elapsed() > patience {
            bail!("{url} did not answer 200 within {patience:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Resident memory of a process, from `/proc/<pid>/status`: now, and the peak so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rss {
    pub current_kib: u64,
    pub peak_kib: u64,
}

pub fn rss(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Rss {
        current_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}
