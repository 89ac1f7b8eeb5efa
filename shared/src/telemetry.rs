//! Logs (tracing) and metrics (Prometheus text), set up once per process.

use crate::{broker::Queues, metric, settings::LogFormat, snapshot::Snapshot};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::{sync::OnceLock, time::Duration};
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
        // Fails only if another recorder was installed first (several apps in one test
        // process): that one then records everything, and this handle renders an empty page.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// How old the queue depths on `/metrics` may be.
pub const QUEUE_DEPTHS_MAX_AGE: Duration = Duration::from_secs(2);

/// The `/metrics` page with the broker's queue depths, read at most every
/// [`QUEUE_DEPTHS_MAX_AGE`] however often it is scraped.
pub struct MetricsPage {
    depths: Snapshot<()>,
}

impl Default for MetricsPage {
    fn default() -> Self {
        MetricsPage {
            depths: Snapshot::new(QUEUE_DEPTHS_MAX_AGE),
        }
    }
}

impl MetricsPage {
    pub async fn render(&self, queues: &Queues) -> String {
        self.depths.get(|| read_queue_depths(queues)).await;
        metrics().render()
    }
}

/// Sets the queue gauges from the broker (when it can be reached; otherwise the depths are left
/// out rather than shown stale).
async fn read_queue_depths(queues: &Queues) {
    metrics::counter!(metric::QUEUE_DEPTH_READS).increment(1);
    match queues.depths().await {
        Ok(depths) => {
            for depth in depths {
                let labels = [
                    ("queue", depth.name),
                    ("role", depth.role.as_str().to_owned()),
                ];
                metrics::gauge!(metric::QUEUE_MESSAGES_READY, &labels).set(f64::from(depth.ready));
                metrics::gauge!(metric::QUEUE_CONSUMERS, &labels).set(f64::from(depth.consumers));
            }
            metrics::gauge!(metric::QUEUE_DEPTH_READABLE).set(1.0);
        }
        Err(error) => {
            tracing::warn!(%error, "queue depths not readable for /metrics");
            metrics::gauge!(metric::QUEUE_DEPTH_READABLE).set(0.0);
        }
    }
}
