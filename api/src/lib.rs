//! `refresh-api`: authenticates, validates, looks up, records a job and has RabbitMQ confirm it.

mod audit;
mod auth;
mod auth_cache;
mod error;
mod idempotency;
mod limits;
mod node_auth;
mod omadm;
mod openapi;
mod org_allowance;
mod rate_limit;
mod routes;
mod server;
pub mod settings;
mod state;
mod strict_json;
mod tls;
mod trace;
mod validate;

pub use error::{ApiError, FieldProblem};
/// A batch's answer, for clients of the api written in Rust (the end-to-end tests).
pub use routes::BatchView;

use anyhow::Context;
use audit::{AuditLog, AuditWriter};
use refresh_shared::{
    broker::{Publisher, invalidations},
    settings::AmqpSettings,
    store::Store,
};
use server::Server;
pub use settings::Settings;
use state::AppState;
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How often idle per-token rate-limit state is dropped, so it does not grow with every token
/// ever seen.
const RATE_LIMIT_SWEEP: Duration = Duration::from_secs(60);

/// The api, bound and connected, not yet serving.
pub struct App {
    server: Server,
    addr: SocketAddr,
    /// The listener devices report to (`DEVICE_ADDR`).
    device_server: Server,
    device_addr: SocketAddr,
    shutdown_grace: std::time::Duration,
    state: AppState,
    amqp: AmqpSettings,
    audit_writer: AuditWriter,
}

impl App {
    /// Connects to MongoDB and RabbitMQ, declares indexes and topology, and binds `API_ADDR`
    /// (port 0 picks a free port).
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        // Installed before anything counts, so no early measurement is lost.
        refresh_shared::telemetry::metrics();
        let store = Store::open(&settings.core.mongo, "refresh-api")
            .await
            .context("opening MongoDB (is MONGODB_URI reachable?)")?;
        let publisher = Publisher::connect(&settings.core.amqp, "refresh-api")
            .await
            .context("connecting to RabbitMQ (AMQP_URL)")?;
        let listener = TcpListener::bind(settings.api.addr)
            .await
            .with_context(|| format!("binding API_ADDR {}", settings.api.addr))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let device_listener = TcpListener::bind(settings.device.addr)
            .await
            .with_context(|| format!("binding DEVICE_ADDR {}", settings.device.addr))?;
        let device_addr = device_listener
            .local_addr()
            .context("reading the bound device address")?;
        let client_ca = settings
            .device
            .client_ca
            .as_deref()
            .map(tls::ClientCa::load)
            .transpose()?;
        let tls = settings
            .device
            .tls
            .as_ref()
            .map(|files| tls::device_tls(files, client_ca.as_ref()))
            .transpose()?;
        let (audit, audit_writer) = AuditLog::start(store.clone());
        let state = AppState::new(
            &settings.api,
            &settings.device,
            store,
            Arc::new(publisher),
            audit,
            client_ca,
            settings.webhooks.clone(),
        );
        if settings.webhooks.url_policy.allow_insecure {
            tracing::warn!(
                "WEBHOOK_ALLOW_INSECURE: webhooks may be added for http URLs and private addresses; for tests and the local stack only"
            );
        }
        if settings.webhooks.signing_key.is_none() {
            tracing::warn!("WEBHOOK_SIGNING_KEY is not set: no webhook endpoint can be added");
        }
        let router = routes::router(state.clone(), &settings.api);
        let device_router = routes::device_router(state.clone(), &settings.api, &settings.device);
        Ok(App {
            server: Server::new(listener, router, &settings.api, None),
            addr,
            device_server: Server::new(device_listener, device_router, &settings.api, tls),
            device_addr,
            shutdown_grace: settings.shutdown_grace,
            state,
            amqp: settings.core.amqp,
            audit_writer,
        })
    }

    /// The bound address (the real port when the settings asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The device listener's bound address.
    pub fn device_addr(&self) -> SocketAddr {
        self.device_addr
    }

    /// Serves until `shutdown` resolves, then finishes the requests in flight.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let state = self.state.clone();
        let sweeper = tokio::spawn(async move {
            let mut every = tokio::time::interval(RATE_LIMIT_SWEEP);
            loop {
                every.tick().await;
                state.rate_limits.retain_recent();
            }
        });
        tracing::info!(addr = %self.local_addr(), device_addr = %self.device_addr, "refresh-api listening");
        let stop = CancellationToken::new();
        refresh_shared::shutdown::cancel_on(shutdown, stop.clone());
        let (state, amqp, followed) = (self.state.clone(), self.amqp.clone(), stop.clone());
        let invalidations = tokio::spawn(async move {
            let invalidate = |what| state.auth_cache.invalidate(what);
            invalidations::follow(&amqp, "refresh-api invalidations", invalidate, followed).await;
        });
        tokio::join!(
            self.server.run(stop.clone(), self.shutdown_grace),
            self.device_server.run(stop, self.shutdown_grace),
        );
        sweeper.abort();
        invalidations.abort();
        self.audit_writer.finish().await;
    }
}
