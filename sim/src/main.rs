//! Serves the push-gateway simulator on `SIM_ADDR` (default 127.0.0.1:8090) until SIGINT/SIGTERM.
//! Its devices report to `SIM_DEVICE_API_URL` (default `http://127.0.0.1:8443`, the api's
//! default `DEVICE_ADDR`), trusting the CA certificate in `SIM_DEVICE_API_CA` (PEM) when that
//! listener has TLS.

use anyhow::Context;
use push_gateway_sim::SimServer;
use std::net::SocketAddr;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::var("SIM_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8090".to_owned())
        .parse()
        .context("SIM_ADDR must be host:port")?;
    let device_api =
        std::env::var("SIM_DEVICE_API_URL").unwrap_or_else(|_| "http://127.0.0.1:8443".to_owned());
    let sim = SimServer::start(addr, Some(device_api))
        .await
        .with_context(|| format!("binding SIM_ADDR {addr}"))?;
    if let Ok(path) = std::env::var("SIM_DEVICE_API_CA") {
        let pem =
            std::fs::read(&path).with_context(|| format!("reading SIM_DEVICE_API_CA {path}"))?;
        sim.trust(&pem)
            .with_context(|| format!("SIM_DEVICE_API_CA {path}: not a PEM certificate"))?;
    }
    println!("push-gateway-sim listening on {}", sim.url());
    refresh_shared::shutdown::signal().await;
    Ok(())
}
