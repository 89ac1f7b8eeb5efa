//! Bulk refresh batches (issue 4), end to end: HTTP → RabbitMQ (batches queue, bulk lane) →
//! worker → push-gateway-sim → MongoDB.

use refresh_api::BatchView;
use refresh_shared::{
    Category,
    broker::{Publisher, Topology},
    device::DeviceState,
    job::{Lane, RefreshJob},
    store,
};
use refresh_tests::{Answer, DEADLINE, TestStack, sample};
use reqwest::StatusCode;
use serde_json::json;
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

/// Accepted pushes per device id, as the sim recorded them.
async fn pushes_per_device(stack: &TestStack) -> HashMap<String, usize> {
    let mut per_device = HashMap::new();
    for push in stack.pushes().await {
        if (200..300).contains(&push.status) {
            *per_device.entry(push.target.clone()).or_default() += 1;
        }
    }
    per_device
}

#[tokio::test]
async fn a_batch_by_ids_accounts_for_every_device_named() {
    let stack = TestStack::start().await;
    let active = stack.devices(5, DeviceState::Active, &[]).await;
    let provisioning = stack
        .device_with(DeviceState::Provisioning, true, false)
        .await;
    let deleted = stack.device_with(DeviceState::Deleted, true, false).await;
    let fresh = stack.device_with(DeviceState::Active, true, false).await;
    // Refreshed just now: within the skip window the batch leaves it to that job.
    stack.settled_refresh(&fresh, &["hardware"]).await;

    let mut ids: Vec<String> = active.iter().map(|d| d.id.to_hex()).collect();
    ids.push(active[0].summary.serial_number.clone().unwrap()); // the same device again
    ids.push(active[1].summary.imei.clone().unwrap().to_string()); // and again, by IMEI
    ids.push(active[2].id.to_hex()); // an exact duplicate, merged before counting
    ids.extend([
        provisioning.id.to_hex(),
        deleted.id.to_hex(),
        fresh.id.to_hex(),
    ]);
    ids.extend([
        "NOSUCHSERIAL".to_owned(),
        "65a1b2c3d4e5f6a7b8c9d0e1".to_owned(),
    ]);
    let answer = stack
        .bulk(&json!({ "info": ["hardware"], "deviceIds": ids }))
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
    assert_eq!(answer.body["status"], json!(true));
    let batch = stack.wait_for_batch(&answer.batch_id(), DEADLINE).await;

    assert_eq!(batch.state.as_str(), "completed", "{batch:?}");
    assert_eq!(batch.total, 12, "duplicates merged: {batch:?}");
    let counts = &batch.counts;
    assert_eq!(counts.reported, 5, "{batch:?}");
    assert_eq!(counts.skipped.not_active, 1);
    assert_eq!(counts.skipped.not_found, 3, "deleted + two unknown");
    assert_eq!(counts.skipped.coalesced, 3, "twice named + fresh");
    assert_eq!(counts.sum(), batch.total);
    assert_eq!(batch.progress, 1.0);
    assert!(batch.started_at.is_some() && batch.finished_at.is_some());

    let pushes = pushes_per_device(&stack).await;
    for device in &active {
        assert_eq!(pushes.get(&device.id.to_hex()), Some(&1), "{pushes:?}");
    }
    assert_eq!(
        pushes.get(&fresh.id.to_hex()),
        Some(&1),
        "only its own refresh"
    );
    assert!(!pushes.contains_key(&provisioning.id.to_hex()));
}

#[tokio::test]
async fn a_device_named_again_in_a_later_chunk_is_refreshed_once_and_counted_coalesced() {
    // Chunks of two: the device's second entry (by serial) is in another chunk than its first,
    // so it gets a second job. Jobs claim their device when they run: whichever of the two
    // runs second finds the categories taken (or just reported) and ends as coalesced.
    let stack = TestStack::start_with(&[("BATCH_CHUNK_SIZE", "2".to_owned())]).await;
    let devices = stack.devices(3, DeviceState::Active, &[]).await;
    let twice = &devices[0];
    let ids = [
        twice.id.to_hex(),
        devices[1].id.to_hex(),
        twice.summary.serial_number.clone().unwrap(),
        devices[2].id.to_hex(),
    ];
    let answer = stack
        .bulk(&json!({ "info": ["hardware", "os"], "deviceIds": ids }))
        .await;
    let batch = stack.wait_for_batch(&answer.batch_id(), DEADLINE).await;

    assert_eq!(batch.state.as_str(), "completed", "{batch:?}");
    let counts = &batch.counts;
    assert_eq!(
        (batch.total, counts.reported, counts.skipped.coalesced),
        (4, 3, 1),
        "{batch:?}"
    );
    assert_eq!(counts.sum(), batch.total);
    let pushes = pushes_per_device(&stack).await;
    for device in &devices {
        let id = device.id.to_hex();
        assert_eq!(pushes.get(&id), Some(&2), "each category once: {pushes:?}");
        // No claim is left behind: a later refresh of the device is not merged into these.
        let stored = stack.stored_device(device.id).await;
        assert!(stored.refresh_info_needed.is_empty(), "{stored:?}");
    }
    // The coalesced job is only a count of the batch: the device's history shows one job.
    let history = stack.device_history(&twice.id.to_hex(), "").await;
    assert_eq!(history.status, StatusCode::OK, "{:?}", history.body);
    let jobs = history.body["data"]["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1, "{:?}", history.body);
    assert_eq!(jobs[0]["state"], json!("completed"), "{:?}", history.body);
}

#[tokio::test]
async fn a_batch_by_filter_takes_the_tagged_devices_in_the_state_asked() {
    let stack = TestStack::start().await;
    let lab = stack
        .devices(3, DeviceState::Active, &["lab", "floor-2"])
        .await;
    stack.devices(1, DeviceState::Provisioning, &["lab"]).await;
    stack.devices(2, DeviceState::Active, &["office"]).await;

    // Sent in a caller's trace: the batch's expansion and every job go on in it.
    let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let request = stack
        .http
        .post(stack.batches_url(&stack.org_id()))
        .bearer_auth(&stack.token)
        .header("traceparent", caller)
        .json(
            &json!({ "info": ["os", "network"], "filter": { "state": "ACTIVE", "tags": ["lab"] } }),
        );
    let by_state = Answer::of(request).await;
    let batch = stack.wait_for_batch(&by_state.batch_id(), DEADLINE).await;
    assert_eq!((batch.total, batch.counts.reported), (3, 3), "{batch:?}");
    for push in stack.pushes().await {
        let sent = push.traceparent.unwrap_or_default();
        assert!(
            sent.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{sent}"
        );
    }
    let pushes = pushes_per_device(&stack).await;
    for device in &lab {
        assert_eq!(
            pushes.get(&device.id.to_hex()),
            Some(&2),
            "two categories: {pushes:?}"
        );
    }
    assert_eq!(pushes.len(), 3, "nothing outside the filter: {pushes:?}");

    let any_state = stack
        .bulk(&json!({ "info": ["security"], "filter": { "tags": ["lab"] } }))
        .await;
    let batch = stack.wait_for_batch(&any_state.batch_id(), DEADLINE).await;
    assert_eq!(batch.total, 4, "{batch:?}");
    assert_eq!(batch.counts.reported, 3);
    assert_eq!(batch.counts.skipped.not_active, 1);
}

#[tokio::test]
async fn a_batch_by_filter_is_walked_chunk_by_chunk_to_its_last_device() {
    // Chunks of two over seven devices: the walk goes on across chunks, and ends on a short one.
    let stack = TestStack::start_with(&[("BATCH_CHUNK_SIZE", "2".to_owned())]).await;
    let tagged = stack.devices(7, DeviceState::Active, &["wing-b"]).await;
    stack.devices(2, DeviceState::Active, &["wing-a"]).await;
    let answer = stack
        .bulk(&json!({ "info": ["network"], "filter": { "tags": ["wing-b"] } }))
        .await;
    let batch = stack.wait_for_batch(&answer.batch_id(), DEADLINE).await;
    assert_eq!(
        (batch.state.as_str(), batch.total, batch.counts.reported),
        ("completed", 7, 7),
        "{batch:?}"
    );
    let pushes = pushes_per_device(&stack).await;
    assert_eq!(pushes.len(), 7, "{pushes:?}");
    for device in &tagged {
        assert_eq!(pushes.get(&device.id.to_hex()), Some(&1), "{pushes:?}");
    }
}

#[tokio::test]
async fn the_bulk_endpoints_follow_the_single_endpoints_rules() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let body = json!({ "info": ["hardware"], "deviceIds": [device.id.to_hex()] });
    let url = stack.batches_url(&stack.org_id());

    let anonymous = Answer::of(stack.http.post(&url).json(&body)).await;
    assert_eq!(
        (anonymous.status, anonymous.error_code()),
        (StatusCode::UNAUTHORIZED, 4002)
    );
    let powerless = stack.token_with(&["something.else"]).await;
    let forbidden = Answer::of(stack.http.post(&url).bearer_auth(&powerless).json(&body)).await;
    assert_eq!(
        (forbidden.status, forbidden.error_code()),
        (StatusCode::FORBIDDEN, 4003)
    );

    for bad in [
        json!({ "info": ["hardware"] }),
        json!({ "info": ["hardware"], "deviceIds": [] }),
        json!({ "info": ["bios"], "deviceIds": ["a"] }),
        json!({ "info": ["hardware"], "deviceIds": ["a b"] }),
        json!({ "info": ["hardware"], "deviceIds": ["a"], "filter": {} }),
        json!({ "info": ["hardware"], "filter": { "state": "ON" } }),
        json!({ "info": ["hardware"], "filter": { "tags": "lab" } }),
    ] {
        let answer = stack.bulk(&bad).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{bad}: {:?}",
            answer.body
        );
        assert_eq!(answer.error_code(), 1001);
        assert!(
            answer.body["error"]["details"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
        );
    }
    let too_many: Vec<String> = (0..100_001).map(|i| format!("SN{i}")).collect();
    let answer = stack
        .bulk(&json!({ "info": ["hardware"], "deviceIds": too_many }))
        .await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::BAD_REQUEST, 1001)
    );
    assert_eq!(
        answer.body["error"]["details"][0]["field"],
        json!("deviceIds")
    );

    // Another organization's batch is not found, by its id or through another org's path.
    let batch_id = stack.bulk(&body).await.batch_id();
    stack.wait_for_batch(&batch_id, DEADLINE).await;
    let (other, other_token) = stack.other_tenant().await;
    for url in [
        format!("{}/{batch_id}", stack.batches_url(&other.id.to_hex())),
        format!("{}/{batch_id}", stack.batches_url(&stack.org_id())),
    ] {
        let answer = Answer::of(stack.http.get(&url).bearer_auth(&other_token)).await;
        assert_eq!(
            (answer.status, answer.error_code()),
            (StatusCode::NOT_FOUND, 3001)
        );
    }
    let missing = format!(
        "{}/65a1b2c3d4e5f6a7b8c9d0e1",
        stack.batches_url(&stack.org_id())
    );
    let answer = Answer::of(stack.http.get(&missing).bearer_auth(&stack.token)).await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::NOT_FOUND, 3001)
    );
}

#[tokio::test]
async fn idempotency_keys_give_the_same_answer_and_refuse_another_body() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let refresh = |key: &'static str, categories: &'static [&'static str]| {
        let request = stack
            .http
            .post(stack.refresh_url(&stack.org_id(), &device.id.to_hex()))
            .bearer_auth(&stack.token)
            .header("Idempotency-Key", key)
            .json(&json!({ "info": categories }));
        Answer::of(request)
    };
    let first = refresh("retry-me", &["hardware"]).await.job_id();
    stack.wait_for_settled_job(&first).await;
    let again = refresh("retry-me", &["hardware"]).await.job_id();
    assert_eq!(again, first);
    let conflict = refresh("retry-me", &["os"]).await;
    assert_eq!(
        (conflict.status, conflict.error_code()),
        (StatusCode::CONFLICT, 4091)
    );
    assert_eq!(stack.pushes_for_job(&first).await.len(), 1);
    let bad_key = Answer::of(
        stack
            .http
            .post(stack.refresh_url(&stack.org_id(), &device.id.to_hex()))
            .bearer_auth(&stack.token)
            .header("Idempotency-Key", "has space")
            .json(&json!({ "info": ["os"] })),
    )
    .await;
    assert_eq!(
        (bad_key.status, bad_key.error_code()),
        (StatusCode::BAD_REQUEST, 1001)
    );

    let bulk = |key: &'static str, info: &'static str| {
        let request = stack
            .http
            .post(stack.batches_url(&stack.org_id()))
            .bearer_auth(&stack.token)
            .header("Idempotency-Key", key)
            .json(&json!({ "info": [info], "deviceIds": [device.id.to_hex()] }));
        Answer::of(request)
    };
    let batch = bulk("nightly-1", "applications").await.batch_id();
    assert_eq!(bulk("nightly-1", "applications").await.batch_id(), batch);
    let conflict = bulk("nightly-1", "certificates").await;
    assert_eq!(
        (conflict.status, conflict.error_code()),
        (StatusCode::CONFLICT, 4091)
    );
    // A key is the organization's: the single endpoint cannot reuse it for another request.
    assert_eq!(
        refresh("nightly-1", &["applications"]).await.error_code(),
        4091
    );
    let view = stack.wait_for_batch(&batch, DEADLINE).await;
    assert_eq!(view.counts.reported, 1);
    let batches = stack
        .collection::<store::BatchRecord>(store::BATCHES)
        .count_documents(bson::doc! {})
        .await
        .unwrap();
    assert_eq!(batches, 1, "one batch for the key");
}

/// Devices in the large-batch test: `BULK_TEST_DEVICES`, default 1,000 so the suite stays quick
/// on the in-memory Python test database; the 10,000 runs with
/// `BULK_TEST_DEVICES=10000` (against secantusd-rs or MongoDB, see the README).
fn bulk_test_devices() -> usize {
    std::env::var("BULK_TEST_DEVICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000)
}

/// A large batch completes, its counts add up, and every device is pushed exactly once.
#[tokio::test]
async fn a_large_batch_completes_and_its_counts_add_up() {
    let size = bulk_test_devices();
    let stack = TestStack::start_with(&[("WORKER_BULK_CONCURRENCY", "32".to_owned())]).await;
    let devices = stack.devices(size, DeviceState::Active, &["fleet"]).await;
    let ids: Vec<String> = devices.iter().map(|d| d.id.to_hex()).collect();
    let started = Instant::now();
    let answer = stack
        .bulk(&json!({ "info": ["hardware"], "deviceIds": ids }))
        .await;
    let batch = stack
        .wait_for_batch(&answer.batch_id(), Duration::from_secs(900))
        .await;
    println!("{size}-device batch: {batch:?} in {:?}", started.elapsed());
    assert_eq!(batch.state.as_str(), "completed");
    assert_eq!(batch.total, size as u64);
    assert_eq!(batch.counts.reported, size as u64, "{batch:?}");
    assert_eq!(batch.counts.sum(), batch.total);
    let pushes = pushes_per_device(&stack).await;
    let pushed_once: HashSet<&String> = pushes
        .iter()
        .filter(|(_, n)| **n == 1)
        .map(|(d, _)| d)
        .collect();
    assert_eq!(pushes.len(), size);
    assert_eq!(pushed_once.len(), size, "no device pushed twice");
}

/// A worker's publisher connects on its first publish: the first chunk's publishes, made all
/// at once, must not race to connect (all but one failed fast, and the whole chunk was held
/// and expanded again: seconds of database work, a batch not draining for 20 s in CI).
#[tokio::test]
async fn a_fresh_workers_first_batch_is_expanded_without_holding_it() {
    // Processes of their own: the worker's metrics are its own.
    let stack = TestStack::spawn_with(&[]).await;
    let devices = stack.devices(50, DeviceState::Active, &[]).await;
    let ids: Vec<String> = devices.iter().map(|d| d.id.to_hex()).collect();
    let answer = stack
        .bulk(&json!({ "info": ["os"], "deviceIds": ids }))
        .await;
    let batch = stack.wait_for_batch(&answer.batch_id(), DEADLINE).await;
    assert_eq!(batch.counts.reported, 50, "{batch:?}");
    let page = stack.metrics(&stack.worker).await;
    let held = sample(&page, "refresh_worker_deliveries_held_total", "").unwrap_or(0.0);
    assert_eq!(held, 0.0, "deliveries held on a healthy stack");
    assert_eq!(pushes_per_device(&stack).await.len(), 50);
}

#[tokio::test]
async fn a_batch_jobs_first_message_run_again_after_the_job_ended_leaves_no_claim_behind() {
    // A resumed chunk publishes again the first message of a job it had made; that copy may
    // run after the job ended, when the device's claim is free again. Processes of their own
    // (the worker's metrics tell when the copy was handled); no skip window, so the copy's
    // claim is free to take and a later refresh is not answered as fresh.
    let stack = TestStack::spawn_with(&[("REFRESH_SKIP_WINDOW_SECS", "0".to_owned())]).await;
    let device = stack.device().await;
    let answer = stack
        .bulk(&json!({ "info": ["hardware"], "deviceIds": [device.id.to_hex()] }))
        .await;
    let batch = stack.wait_for_batch(&answer.batch_id(), DEADLINE).await;
    assert_eq!(batch.counts.reported, 1, "{batch:?}");
    let job = stack
        .collection::<store::JobRecord>(store::JOBS)
        .find_one(bson::doc! { "device": device.id })
        .await
        .unwrap()
        .expect("the batch's job");

    let copy = RefreshJob {
        claim_unless_reported_after: Some(time::OffsetDateTime::now_utc()),
        ..job.message(vec![Category::Hardware], None)
    };
    let publisher = Publisher::connect(&stack.settings.core.amqp, "refresh-tests")
        .await
        .unwrap();
    publisher.publish(&copy).await.unwrap();
    let bulk_queue = format!(
        "queue=\"{}\"",
        Topology::new(&stack.settings.core.amqp).jobs_queue(Lane::Bulk)
    );
    refresh_tests::wait_until("the copy to be handled", DEADLINE, || async {
        let page = stack.metrics(&stack.worker).await;
        let taken = sample(
            &page,
            "refresh_job_queue_wait_seconds_count",
            "lane=\"bulk\"",
        );
        let unacked = sample(&page, "refresh_worker_unacked_deliveries", &bulk_queue);
        (taken == Some(2.0) && unacked == Some(0.0)).then_some(())
    })
    .await;

    let stored = stack.stored_device(device.id).await;
    assert!(stored.refresh_info_needed.is_empty(), "{stored:?}");
    // What a caller sees: a refresh of the device gets a job of its own and is pushed, rather
    // than being merged into the batch's ended job.
    let refreshed = stack.refresh_device(&device, &["hardware"]).await;
    assert_ne!(refreshed.job_id(), job.id.to_hex(), "{:?}", refreshed.body);
    let settled = stack.wait_for_settled_job(&refreshed.job_id()).await;
    assert_eq!(settled.state().as_str(), "completed", "{settled:?}");
    assert_eq!(
        pushes_per_device(&stack).await.get(&device.id.to_hex()),
        Some(&2)
    );
}

/// Single-device refreshes go through their own lane: they finish while a batch is draining.
#[tokio::test]
async fn single_device_requests_complete_while_a_batch_drains() {
    // Chunks of 100: the batch starts draining after its first 100 devices are queued, not
    // 500 (seconds of writes on the test database, with the other tests of this file running).
    let stack = TestStack::start_with(&[
        ("WORKER_BULK_CONCURRENCY", "2".to_owned()),
        ("BATCH_CHUNK_SIZE", "100".to_owned()),
    ])
    .await;
    // Every push takes 20 ms: two bulk slots drain at most ~100 devices a second.
    stack
        .fault(json!({ "mode": "fault", "latencyMs": 20 }))
        .await;
    let fleet = stack.devices(1_000, DeviceState::Active, &[]).await;
    let ids: Vec<String> = fleet.iter().map(|d| d.id.to_hex()).collect();
    let batch_id = stack
        .bulk(&json!({ "info": ["applications"], "deviceIds": ids }))
        .await
        .batch_id();
    refresh_tests::wait_until("the batch to be draining", DEADLINE, || async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let view: BatchView = stack.batch(&batch_id).await;
        (view.counts.reported > 0).then_some(())
    })
    .await;

    let mut latencies = Vec::new();
    for _ in 0..5 {
        let device = stack.device_with(DeviceState::Active, true, false).await;
        let started = Instant::now();
        stack.settled_refresh(&device, &["hardware"]).await;
        latencies.push(started.elapsed());
    }
    let view = stack.batch(&batch_id).await;
    println!(
        "single refreshes while the batch drains: {latencies:?}; batch then {:?}",
        view.counts
    );
    assert_ne!(
        view.state.as_str(),
        "completed",
        "the singles finished before the batch: {view:?}"
    );
    assert!(view.counts.reported < view.total, "{view:?}");
}

#[tokio::test]
async fn a_batch_is_recorded_finished_when_its_last_job_settles_not_when_someone_polls() {
    let stack = TestStack::start().await;
    let devices = stack.devices(5, DeviceState::Active, &["unpolled"]).await;
    let ids: Vec<String> = devices.iter().map(|d| d.id.to_hex()).collect();
    let batch_id = stack
        .bulk(&json!({ "info": ["os"], "deviceIds": ids }))
        .await
        .batch_id();
    let id = bson::oid::ObjectId::parse_str(&batch_id).expect("batch id");
    // Read straight from the database: nobody calls the status route.
    let finished =
        refresh_tests::wait_until("the batch's end to be recorded", DEADLINE, || async {
            let batch = stack
                .store
                .batch_by_id(id)
                .await
                .expect("read")
                .expect("batch");
            batch.finished_at.map(|at| (at, batch))
        })
        .await;
    let (at, batch) = finished;
    assert_eq!(batch.outcomes.values().sum::<u64>(), 5);
    assert_eq!(
        Some(at),
        batch.last_settled_at,
        "finished when the last settled"
    );
    assert_eq!(stack.batch(&batch_id).await.state.as_str(), "completed");
}
