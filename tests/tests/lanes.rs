//! The measurement behind the lanes (issue 4): single-device refresh latency with and without a
//! 100,000-device batch draining. Run by hand on a release build against a server that can take
//! the load (secantusd-rs or MongoDB; the in-memory Python server would measure itself):
//!
//! ```sh
//! MONGODB_URI=mongodb://127.0.0.1:PORT/?directConnection=true \
//!   cargo test --release -p refresh-tests --test lanes -- --ignored --nocapture
//! ```
//!
//! `LANES_BATCH_DEVICES` (default 100000) and `LANES_SAMPLES` (default 200) size it.

use refresh_shared::device::DeviceState;
use refresh_tests::TestStack;
use serde_json::json;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Request-to-settled latency of `samples` single refreshes, one after another, sorted.
async fn single_latencies(stack: &TestStack, samples: usize) -> Vec<Duration> {
    let devices = stack.devices(samples, DeviceState::Active, &[]).await;
    let mut latencies = Vec::with_capacity(samples);
    for device in &devices {
        let started = Instant::now();
        stack.settled_refresh(device, &["hardware"]).await;
        latencies.push(started.elapsed());
    }
    latencies.sort();
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::test]
#[ignore = "a measurement: run by hand on a release build (see the file's comment)"]
async fn single_device_latency_with_and_without_a_draining_batch() {
    let batch_size = env_or("LANES_BATCH_DEVICES", 100_000);
    let samples = env_or("LANES_SAMPLES", 200);
    let stack = TestStack::start_with(&[
        ("RATE_LIMIT_PER_SECOND", "100000".to_owned()),
        ("RATE_LIMIT_BURST", "100000".to_owned()),
    ])
    .await;
    let fleet = stack
        .devices(batch_size, DeviceState::Active, &["fleet"])
        .await;
    drop(fleet);

    let quiet = single_latencies(&stack, samples).await;
    let batch_id = stack
        .bulk(&json!({ "info": ["applications"], "filter": { "tags": ["fleet"] } }))
        .await
        .batch_id();
    refresh_tests::wait_until("the batch to drain", Duration::from_secs(120), || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        (stack.batch(&batch_id).await.counts.pushed > 0).then_some(())
    })
    .await;
    let draining = single_latencies(&stack, samples).await;
    let view = stack.batch(&batch_id).await;
    println!(
        "single-device refresh, {samples} samples each: quiet p50 {:?} p99 {:?}; \
         with a {batch_size}-device batch draining p50 {:?} p99 {:?}; \
         batch when the singles were done: {:?} ({:?})",
        percentile(&quiet, 0.5),
        percentile(&quiet, 0.99),
        percentile(&draining, 0.5),
        percentile(&draining, 0.99),
        view.counts,
        view.state,
    );
    assert_ne!(view.state, "completed", "the singles finished first");
}
