//! A closed-loop HTTP load generator: a fixed number of keep-alive connections, each sending its
//! next request as soon as the last one is answered, every latency recorded.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// When a load stops: after a time, after a number of requests, or when told — whichever is
/// first.
#[derive(Clone, Default)]
pub struct Until {
    pub elapsed: Option<Duration>,
    pub requests: Option<u64>,
    pub stop: Option<CancellationToken>,
}

/// What one load measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadFigures {
    pub connections: usize,
    pub requests: u64,
    /// Answers other than 200 (and transport errors, as status 0), by status.
    pub not_ok: BTreeMap<u16, u64>,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Sends `request(n)` for n = 0, 1, … over `connections` connections until `until`.
pub async fn run<F>(connections: usize, until: Until, request: F) -> LoadFigures
where
    F: Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    // One client per connection, each with one pooled connection: the generator holds exactly
    // `connections` keep-alive connections, as a fleet of callers would.
    let request = Arc::new(request);
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (request, issued, until) = (request.clone(), issued.clone(), until.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .expect("an HTTP client with default TLS settings");
                let mut latencies = new_histogram();
                let mut not_ok = BTreeMap::new();
                loop {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    let over_count = until.requests.is_some_and(|limit| n >= limit);
                    let over_time = until
                        .elapsed
                        .is_some_and(|limit| started.elapsed() >= limit);
                    let stopped = until.stop.as_ref().is_some_and(|s| s.is_cancelled());
                    if over_count || over_time || stopped {
                        break;
                    }
                    let sent = Instant::now();
                    let status = match request(&client, n).send().await {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            // Read the whole answer, as a caller would, before the next request.
                            let _ = response.bytes().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    record(&mut latencies, sent.elapsed());
                    if status != 200 {
                        *not_ok.entry(status).or_insert(0) += 1;
                    }
                }
                (latencies, not_ok)
            })
        })
        .collect();
    let mut latencies = new_histogram();
    let mut not_ok = BTreeMap::new();
    for task in tasks {
        let (task_latencies, task_not_ok) = task.await.expect("a load connection panicked");
        latencies
            .add(task_latencies)
            .expect("histograms of the same bounds");
        for (status, count) in task_not_ok {
            *not_ok.entry(status).or_insert(0) += count;
        }
    }
    figures(connections, &latencies, not_ok, started.elapsed())
}

fn new_histogram() -> Histogram<u64> {
    // Microseconds from 1 µs to 10 minutes, 3 significant figures.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

fn figures(
    connections: usize,
    latencies: &Histogram<u64>,
    not_ok: BTreeMap<u16, u64>,
    elapsed: Duration,
) -> LoadFigures {
    let ms = |micros: u64| micros as f64 / 1_000.0;
    let requests = latencies.len();
    let seconds = elapsed.as_secs_f64();
    LoadFigures {
        connections,
        requests,
        not_ok,
        seconds,
        per_second: requests as f64 / seconds,
        p50_ms: ms(latencies.value_at_quantile(0.5)),
        p99_ms: ms(latencies.value_at_quantile(0.99)),
        max_ms: ms(latencies.max()),
    }
}
