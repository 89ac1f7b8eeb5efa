//! A batch whose expanding process is killed resumes from its checkpoint in the next one: no
//! device missing, none pushed twice (issue 4).

use refresh_shared::{device::DeviceState, store};
use refresh_tests::TestStack;
use refresh_worker::settings::WorkQueue;
use serde_json::json;
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_batch_resumes_after_its_expanding_process_is_killed() {
    // The worker process only expands batches: killing it interrupts an expansion and nothing
    // else. The pushes (and the devices' reports) are handled by a second worker, in this
    // test's process.
    let stack = TestStack::spawn_with(&[
        ("WORKER_QUEUES", "batches".to_owned()),
        ("BATCH_CHUNK_SIZE", "25".to_owned()),
    ])
    .await;
    let mut pusher_settings = stack.settings.clone();
    pusher_settings.worker.queues = vec![
        WorkQueue::Interactive,
        WorkQueue::Bulk,
        WorkQueue::Reports,
        WorkQueue::Deadlines,
    ];
    pusher_settings.worker.addr = "127.0.0.1:0".parse().unwrap();
    pusher_settings.worker.bulk_concurrency = 16;
    let pusher = refresh_worker::Worker::build(pusher_settings)
        .await
        .unwrap();
    let stop_pusher = CancellationToken::new();
    tokio::spawn(pusher.run_until_stopped(stop_pusher.clone().cancelled_owned()));

    let devices = stack.devices(1_000, DeviceState::Active, &[]).await;
    let ids: Vec<String> = devices.iter().map(|d| d.id.to_hex()).collect();
    let batch_id = stack
        .bulk(&json!({ "info": ["hardware"], "deviceIds": ids }))
        .await
        .batch_id();

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
    let batch = stack
        .wait_for_batch(&batch_id, Duration::from_secs(300))
        .await;
    println!(
        "killed with {} of {} devices expanded; after the restart: {:?}",
        at_kill.total - at_kill.counts.pending,
        at_kill.total,
        batch.counts
    );
    assert_eq!(batch.state.as_str(), "completed");
    assert_eq!(batch.counts.reported, 1_000, "{batch:?}");
    assert_eq!(batch.counts.sum(), 1_000);

    let mut per_device: HashMap<(String, String), usize> = HashMap::new();
    for push in stack.pushes().await {
        assert!((200..300).contains(&push.status));
        *per_device
            .entry((push.target.clone(), push.categories.join(",")))
            .or_default() += 1;
    }
    assert_eq!(per_device.len(), 1_000, "every device");
    let twice: Vec<_> = per_device.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "pushed twice: {twice:?}");
    let jobs = stack
        .collection::<store::JobRecord>(store::JOBS)
        .count_documents(bson::doc! {})
        .await
        .unwrap();
    assert_eq!(jobs, 1_000, "one job per device");
    // Every claim on a device ended with its job: none is left for a later refresh to be
    // merged into.
    let holding = stack
        .collection::<store::Device>(store::DEVICES)
        .count_documents(bson::doc! { "refreshInfoNeeded.0": { "$exists": true } })
        .await
        .unwrap();
    assert_eq!(holding, 0, "devices left holding a claim");
    stop_pusher.cancel();
}
