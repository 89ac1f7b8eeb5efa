//! Logs (tracing) and metrics (Prometheus text), set up once per process.

use crate::{
    broker::{QueueDepth, Queues},
    metric,
    settings::LogFormat,
    snapshot::Snapshot,
};
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
/// [`QUEUE_DEPTHS_MAX_AGE`] however often it is scraped, and shown by one process of the
/// deployment only ([`Queues::depths_to_report`]): summed over every process scraped, they are
/// the broker's counts.
pub struct MetricsPage {
    depths: Snapshot<Option<Vec<QueueDepth>>>,
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
        let depths = self.depths.get(|| read_queue_depths(queues)).await;
        let mut page = metrics().render();
        if let Some(depths) = depths {
            render_depths(&mut page, &depths);
        }
        page
    }
}

/// The queue depths, when this process reports them (otherwise, or when the broker cannot be
/// reached, they are left out rather than shown stale).
async fn read_queue_depths(queues: &Queues) -> Option<Vec<QueueDepth>> {
    metrics::counter!(metric::QUEUE_DEPTH_READS).increment(1);
    let read = queues.depths_to_report().await;
    metrics::gauge!(metric::QUEUE_DEPTH_READABLE).set(if read.is_ok() { 1.0 } else { 0.0 });
    let reporting = matches!(read, Ok(Some(_)));
    metrics::gauge!(metric::QUEUE_DEPTH_REPORTER).set(if reporting { 1.0 } else { 0.0 });
    read.unwrap_or_else(|error| {
        tracing::warn!(%error, "queue depths not readable for /metrics");
        None
    })
}

/// Appends the queue gauges to a page: they are not in the recorder, since a process that
/// stops reporting them must stop showing them.
fn render_depths(page: &mut String, depths: &[QueueDepth]) {
    render_gauge(page, metric::QUEUE_MESSAGES_READY, depths, |depth| {
        depth.ready
    });
    render_gauge(page, metric::QUEUE_CONSUMERS, depths, |depth| {
        depth.consumers
    });
}

fn render_gauge(
    page: &mut String,
    name: &str,
    depths: &[QueueDepth],
    value: impl Fn(&QueueDepth) -> u32,
) {
    use std::fmt::Write;
    let _ = writeln!(page, "# TYPE {name} gauge");
    for depth in depths {
        let _ = writeln!(
            page,
            "{name}{{queue=\"{}\",role=\"{}\"}} {}",
            depth.name,
            depth.role.as_str(),
            value(depth)
        );
    }
}
