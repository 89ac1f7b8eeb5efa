//! Logs (tracing) and metrics (Prometheus text), set up once per process.

use crate::{broker::Publisher, settings::LogFormat};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global tracing subscriber; `RUST_LOG` filters (default `info`).
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    // A second call (several apps in one test process) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours just stays unused.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// The Prometheus text, with every queue's depth read from the broker just now (when it can be
/// reached; otherwise the depths are left out rather than shown stale).
pub async fn render_with_queue_depths(publisher: &Publisher) -> String {
    match publisher.queue_depths().await {
        Ok(depths) => {
            for depth in depths {
                let labels = [
                    ("queue", depth.name),
                    ("role", depth.role.as_str().to_owned()),
                ];
                metrics::gauge!("refresh_queue_messages_ready", &labels)
                    .set(f64::from(depth.ready));
                metrics::gauge!("refresh_queue_consumers", &labels).set(f64::from(depth.consumers));
            }
            metrics::gauge!("refresh_queue_depth_readable").set(1.0);
        }
        Err(error) => {
            tracing::warn!(%error, "queue depths not readable for /metrics");
            metrics::gauge!("refresh_queue_depth_readable").set(0.0);
        }
    }
    metrics().render()
}
