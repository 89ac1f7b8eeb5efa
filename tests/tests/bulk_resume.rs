//! A batch whose expanding process is killed resumes from its checkpoint in the next one: no
//! device missing, none pushed twice (issue 4), whatever the killed process had in flight.

use refresh_shared::{device::DeviceState, store};
use refresh_tests::{DEADLINE, TestStack, proxy::Proxy, wait_until};
use refresh_worker::settings::WorkQueue;
use serde_json::json;
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// Devices in each batch, and in each of its chunks.
const DEVICES: usize = 1_000;
const CHUNK: u64 = 25;

/// The worker that pushes, in this test's process, reaching the broker at `amqp_url`: the
/// worker process of a stack started by [`expander_stack`] only expands batches, so killing it
/// interrupts an expansion and nothing else.
async fn start_pusher(stack: &TestStack, amqp_url: Option<String>) -> CancellationToken {
    let mut settings = stack.settings.clone();
    settings.worker.queues = vec![
        WorkQueue::Interactive,
        WorkQueue::Bulk,
        WorkQueue::Reports,
        WorkQueue::Deadlines,
    ];
    settings.worker.addr = "127.0.0.1:0".parse().unwrap();
    settings.worker.bulk_concurrency = 16;
    if let Some(url) = amqp_url {
        settings.core.amqp.url = url.into();
    }
    let pusher = refresh_worker::Worker::build(settings).await.unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(pusher.run_until_stopped(stop.clone().cancelled_owned()));
    stop
}

async fn expander_stack(overrides: &[(&str, String)]) -> TestStack {
    let mut vars = vec![
        ("WORKER_QUEUES", "batches".to_owned()),
        ("BATCH_CHUNK_SIZE", CHUNK.to_string()),
    ];
    vars.extend(overrides.iter().cloned());
    TestStack::spawn_with(&vars).await
}

/// After the batch completed: every device reported, pushed once, with one job, and no device
/// left holding a claim.
async fn assert_each_device_refreshed_once(stack: &TestStack, batch_id: &str) {
    let batch = stack
        .wait_for_batch(batch_id, Duration::from_secs(300))
        .await;
    assert_eq!(batch.state.as_str(), "completed");
    assert_eq!(batch.counts.reported, DEVICES as u64, "{batch:?}");
    assert_eq!(batch.counts.sum(), DEVICES as u64);

    let mut per_device: HashMap<(String, String), usize> = HashMap::new();
    for push in stack.pushes().await {
        assert!((200..300).contains(&push.status));
        *per_device
            .entry((push.target.clone(), push.categories.join(",")))
            .or_default() += 1;
    }
    assert_eq!(per_device.len(), DEVICES, "every device");
    let twice: Vec<_> = per_device.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "pushed twice: {twice:?}");
    let jobs = stack
        .collection::<store::JobRecord>(store::JOBS)
        .count_documents(bson::doc! {})
        .await
        .unwrap();
    assert_eq!(jobs, DEVICES as u64, "one job per device");
    // Every claim on a device ended with its job: none is left for a later refresh to be
    // merged into.
    let holding = stack
        .collection::<store::Device>(store::DEVICES)
        .count_documents(bson::doc! { "refreshInfoNeeded.0": { "$exists": true } })
        .await
        .unwrap();
    assert_eq!(holding, 0, "devices left holding a claim");
}

async fn batch_of_every_device(stack: &TestStack) -> String {
    let devices = stack.devices(DEVICES, DeviceState::Active, &[]).await;
    let ids: Vec<String> = devices.iter().map(|d| d.id.to_hex()).collect();
    stack
        .bulk(&json!({ "info": ["hardware"], "deviceIds": ids }))
        .await
        .batch_id()
        .to_owned()
}

#[tokio::test]
async fn a_batch_resumes_after_its_expanding_process_is_killed() {
    let stack = expander_stack(&[]).await;
    let stop_pusher = start_pusher(&stack, None).await;
    let batch_id = batch_of_every_device(&stack).await;

    let started = Instant::now();
    let at_kill = loop {
        let view = stack.batch(&batch_id).await;
        let expanded = view.total - view.counts.pending;
        if view.state.as_str() == "expanding" && expanded > 0 {
            stack.kill_worker();
            break view;
        }
        assert_ne!(
            view.state.as_str(),
            "running",
            "expanded before it could be interrupted: {view:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "expansion never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stack.restart_worker().await;
    assert_each_device_refreshed_once(&stack, &batch_id).await;
    println!(
        "killed with {} of {} devices expanded",
        at_kill.total - at_kill.counts.pending,
        at_kill.total,
    );
    stop_pusher.cancel();
}

#[tokio::test]
async fn a_resumed_expansion_finds_the_jobs_of_every_chunk_the_killed_process_had_in_flight() {
    // The expanding process reaches the broker through a proxy: paused, its publishes wait
    // (for their confirms, longer than the test), while it records the next chunk's jobs.
    let (proxy, proxied) = Proxy::rabbitmq().await;
    let direct = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let stack = expander_stack(&[
        ("AMQP_URL", proxied),
        ("PUBLISH_CONFIRM_TIMEOUT_MS", "120000".to_owned()),
    ])
    .await;
    let stop_pusher = start_pusher(&stack, Some(direct)).await;
    let batch_id = batch_of_every_device(&stack).await;
    let batch_oid = bson::oid::ObjectId::parse_str(&batch_id).unwrap();
    wait_until("the expansion to start", DEADLINE, || async {
        let view = stack.batch(&batch_id).await;
        assert_ne!(
            view.state.as_str(),
            "running",
            "expanded before the pause: {view:?}"
        );
        (view.state.as_str() == "expanding").then_some(())
    })
    .await;
    proxy.pause();
    // Stuck publishing the chunk after its checkpoint, the expander has recorded the one after
    // that too: the jobs of two chunks that no checkpoint counts.
    let batches = stack.collection::<store::BatchRecord>(store::BATCHES);
    let jobs = stack.collection::<store::JobRecord>(store::JOBS);
    let (checkpointed, recorded) = wait_until("two chunks in flight", DEADLINE, || async {
        let batch = batches
            .find_one(bson::doc! { "_id": batch_oid })
            .await
            .unwrap()
            .expect("the batch");
        let recorded = jobs.count_documents(bson::doc! {}).await.unwrap();
        let in_flight = (batch.expansion.chunks + 2) * CHUNK;
        (recorded == in_flight).then_some((batch.expansion.chunks, recorded))
    })
    .await;
    println!("killed with {checkpointed} chunks checkpointed and {recorded} jobs recorded");
    stack.kill_worker();
    proxy.resume();
    stack.restart_worker().await;
    assert_each_device_refreshed_once(&stack, &batch_id).await;
    stop_pusher.cancel();
}
