//! Several processes of one deployment on one broker: what one of them learns about a
//! gateway holds for all, and the queue gauges add up over them.

use futures::future::join_all;
use refresh_shared::{broker::Topology, device::DeviceState, job::Lane, store::WnsChannel};
use refresh_tests::{DEADLINE, TestStack, sample, wait_until};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

/// Pushes the worker at `base` has made to WNS, as its `/metrics` counts them.
async fn wns_pushes(stack: &TestStack, base: &str) -> f64 {
    let page = stack.metrics(base).await;
    sample(
        &page,
        "refresh_push_duration_seconds_count",
        "gateway=\"wns\"",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wns_pause_one_worker_is_asked_for_stops_every_worker_pushing_to_that_channel() {
    let stack = TestStack::spawn_with(&[]).await;
    let other = stack.spawn_another("refresh-worker").await;
    // Nine devices behind one WNS channel: a pause of that channel holds them all.
    let devices =
        join_all((0..9).map(|_| stack.device_with(DeviceState::Active, false, true))).await;
    let channel = devices[0]
        .push
        .live_wns_channel()
        .expect("a channel")
        .to_owned();
    let shared =
        WnsChannel::new(&channel, &stack.settings.gateways.wns_channels).expect("admitted");
    for device in &devices[1..] {
        stack
            .store
            .replace_wns_channel(stack.organization.id, device.id, &shared)
            .await
            .unwrap();
    }
    stack
        .fault(json!({ "mode": "fault", "gateway": "wns", "script": [406], "retryAfter": 2 }))
        .await;

    // One worker hears the 406 (and waits it out)…
    let first = stack.refresh_device(&devices[0], &["hardware"]).await;
    assert_eq!(first.status, StatusCode::OK);
    let paused = wait_until("the 406", Duration::from_secs(20), || async {
        stack.pushes().await.into_iter().find(|p| p.status == 406)
    })
    .await;
    let before = [
        wns_pushes(&stack, &stack.worker).await,
        wns_pushes(&stack, &other.base).await,
    ];
    // …then both get work for the channel.
    let jobs = join_all(
        devices[1..]
            .iter()
            .map(|device| stack.refresh_device(device, &["hardware"])),
    )
    .await;
    assert!(jobs.iter().all(|job| job.status == StatusCode::OK));
    for job in std::iter::once(&first).chain(&jobs) {
        stack.wait_for_pushed_job(&job.job_id()).await;
    }

    let pushes = stack.pushes().await;
    let resumed = paused.time() + time::Duration::seconds(2);
    let early: Vec<_> = pushes
        .iter()
        .filter(|p| p.at != paused.at && p.time() < resumed)
        .collect();
    assert!(early.is_empty(), "pushed within the pause: {early:?}");
    assert_eq!(
        pushes.len(),
        10,
        "the held push once more, the others once: {pushes:?}"
    );
    let after = [
        wns_pushes(&stack, &stack.worker).await,
        wns_pushes(&stack, &other.base).await,
    ];
    println!("WNS pushes by each worker during the test: {before:?} then {after:?}");
    assert!(
        after[0] > before[0] && after[1] > before[1],
        "both workers pushed to the channel: {before:?} then {after:?}"
    );
}

/// The messages ready in `queue` on a `/metrics` page (none when the page does not show them).
fn ready_in(page: &str, queue: &str) -> f64 {
    sample(
        page,
        "refresh_queue_messages_ready",
        &format!("queue=\"{queue}\""),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn summed_over_the_workers_the_queue_gauges_are_the_brokers_counts() {
    // Workers that leave the interactive lane alone: its jobs wait in the queue.
    let stack = TestStack::spawn_with(&[("WORKER_QUEUES", "bulk".to_owned())]).await;
    let other = stack.spawn_another("refresh-worker").await;
    let devices = join_all((0..5).map(|_| stack.device())).await;
    for device in &devices {
        let answer = stack.refresh_device(device, &["os"]).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    let queue = Topology::new(&stack.settings.core.amqp).jobs_queue(Lane::Interactive);
    let queues = stack.refreshctl(&["queues"]).await;
    let broker = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == json!(queue))
        .expect("the work queue")["ready"]
        .as_f64()
        .unwrap();
    assert_eq!(broker, 5.0);

    let workers = [stack.worker.clone(), other.base.clone()];
    let pages = join_all(workers.iter().map(|worker| stack.metrics(worker))).await;
    let summed: f64 = pages.iter().map(|page| ready_in(page, &queue)).sum();
    assert_eq!(summed, broker, "summed over both workers");
    let reporters: Vec<bool> = pages
        .iter()
        .map(|page| sample(page, "refresh_queue_depth_reporter", "") == Some(1.0))
        .collect();
    assert_eq!(
        reporters.iter().filter(|r| **r).count(),
        1,
        "one reporter: {reporters:?}"
    );

    // The reporter goes: the other takes over.
    let survivor = if reporters[0] {
        stack.kill_worker();
        workers[1].clone()
    } else {
        drop(other);
        workers[0].clone()
    };
    wait_until(
        "the other worker to report the depths",
        DEADLINE,
        || async {
            let page = stack.metrics(&survivor).await;
            (ready_in(&page, &queue) == broker).then_some(())
        },
    )
    .await;
}
