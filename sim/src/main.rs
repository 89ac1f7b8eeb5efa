//! Serves the push-gateway simulator on `SIM_ADDR` (default 127.0.0.1:8090) until SIGINT/SIGTERM.

use anyhow::Context;
use push_gateway_sim::SimServer;
use std::net::SocketAddr;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::var("SIM_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8090".to_owned())
        .parse()
        .context("SIM_ADDR must be host:port")?;
    let sim = SimServer::start(addr)
        .await
        .with_context(|| format!("binding SIM_ADDR {addr}"))?;
    println!("push-gateway-sim listening on {}", sim.url());
    refresh_shared::shutdown::signal().await;
    Ok(())
}
