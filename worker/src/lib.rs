//! `refresh-worker`: consumes refresh jobs, pushes each category to the device and records the
//! outcome.

mod consumer;
mod deadlines;
mod dispatch;
mod expander;
pub mod gateway;
mod group;
mod health;
mod reports;
pub mod settings;
mod webhook;

use anyhow::Context;
use consumer::Consumer;
use dispatch::Dispatcher;
use expander::Expander;
use refresh_events::Announcer;
use refresh_shared::{
    broker::{Publisher, Queues, holds},
    store::{DatabaseProbe, Store},
    turns::Turns,
};
pub use settings::Settings;
use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Past the grace period, how long closing the broker connection and the probes may take.
const CLOSE_MARGIN: Duration = Duration::from_secs(2);

/// The worker, with its probe server bound; it connects to the broker when it runs.
pub struct Worker {
    consumer: Consumer,
    listener: TcpListener,
    addr: SocketAddr,
    probes: health::Probes,
}

impl Worker {
    pub async fn build(settings: Settings) -> anyhow::Result<Worker> {
        // Installed before anything counts, so no early measurement is lost.
        refresh_shared::telemetry::metrics();
        let store = Store::open(&settings.core.mongo, "refresh-worker")
            .await
            .context("opening MongoDB (is MONGODB_URI reachable?)")?;
        let listener = TcpListener::bind(settings.worker.addr)
            .await
            .with_context(|| format!("binding WORKER_ADDR {}", settings.worker.addr))?;
        let addr = listener.local_addr().context("reading the bound address")?;
        let consuming = Arc::new(AtomicBool::new(false));
        // One connection for retries and expansions (a confirm-mode channel) and the queue
        // depths of /metrics (a channel of their own per read).
        let publisher = Arc::new(Publisher::lazy(
            &settings.core.amqp,
            "refresh-worker-publisher",
        ));
        let gateways = gateway::Gateways::new(&settings.gateways, settings.worker.push_timeout)
            .context("building the gateway HTTP client")?
            .announcing_to(Arc::clone(&publisher));
        let shutdown = CancellationToken::new();
        let dispatcher = Arc::new(Dispatcher {
            store: store.clone(),
            gateways,
            push_retry: settings.worker.push_retry,
            retry_publisher: Arc::clone(&publisher),
            job_max_age: settings.worker.job_max_age,
            repush_limit: settings.worker.repush_limit,
            report_deadline: settings.core.amqp.report_deadline,
            hold_limit: settings.worker.hold_limit,
            shutdown: shutdown.clone(),
            in_flight: Turns::default(),
            announcer: Announcer::new(store.clone(), Arc::clone(&publisher)),
            reports: reports::report_groups(store.clone(), settings.worker.report_concurrency),
            transitions: dispatch::transition_groups(store.clone()),
        });
        if settings.webhooks.url_policy.allow_insecure {
            tracing::warn!(
                "WEBHOOK_ALLOW_INSECURE=true: webhooks are delivered over plain http and to private addresses (tests and local stacks only)"
            );
        }
        if settings.webhooks.signing_key.is_none() {
            tracing::info!(
                "WEBHOOK_SIGNING_KEY is not set: webhook deliveries cannot be signed and wait in their retry tiers"
            );
        }
        let deliverer = Arc::new(
            webhook::Deliverer::new(
                settings.webhooks.clone(),
                settings.delivery.timeout,
                settings.delivery.endpoint_concurrency,
                Arc::clone(&publisher),
            )
            .context("building the webhook HTTP client")?,
        );
        let expander = Arc::new(Expander {
            store: store.clone(),
            publisher: Arc::clone(&publisher),
            chunk_size: settings.worker.batch_chunk_size,
            refresh_skip_window: settings.refresh_skip_window,
            shutdown,
        });
        Ok(Worker {
            consumer: Consumer {
                amqp: settings.core.amqp,
                worker: settings.worker,
                shutdown_grace: settings.shutdown_grace,
                dispatcher,
                expander,
                deliverer,
                webhook_concurrency: settings.delivery.concurrency,
                connected: Arc::clone(&consuming),
            },
            listener,
            addr,
            probes: health::Probes {
                database: Arc::new(DatabaseProbe::new(store)),
                consuming,
                queues: Arc::new(Queues::new(publisher)),
                metrics_page: Arc::default(),
            },
        })
    }

    /// The bound address (the real port when the settings asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Consumes until `shutdown` resolves; then stops taking deliveries, lets those in flight
    /// finish (or hands back those waiting to retry) and closes the connection.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let stop = self.consumer.dispatcher.shutdown.clone();
        refresh_shared::shutdown::cancel_on(shutdown, stop.clone());
        tracing::info!(addr = %self.local_addr(), "refresh-worker probes listening");
        let server = axum::serve(self.listener, health::router(self.probes))
            .with_graceful_shutdown(stop.clone().cancelled_owned());
        let grace = self.consumer.shutdown_grace;
        let gateways = &self.consumer.dispatcher.gateways;
        let holds = holds::follow(
            &self.consumer.amqp,
            "refresh-worker holds",
            |hold| gateways.keep(&hold),
            stop.clone(),
        );
        let stopped = async {
            let (served, (), ()) = tokio::join!(server, self.consumer.run(), holds);
            served
        };
        // A stop is bounded whatever hangs (a broker that never answers the close, a probe
        // connection that stays open): deliveries still unacked go back to the queue anyway.
        let deadline = async {
            stop.cancelled().await;
            tokio::time::sleep(grace + CLOSE_MARGIN).await;
        };
        tokio::select! {
            served = stopped => served.context("serving the probe endpoints"),
            () = deadline => {
                tracing::warn!(?grace, "shutdown overran the grace period: exiting anyway");
                Ok(())
            }
        }
    }
}
