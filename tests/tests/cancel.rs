//! Cancel (CONTRACT §6): `DELETE …/refresh-jobs/{jobId}` ends every category that has not
//! ended as `canceled`; nothing pushes it afterwards, not even a message of the job already
//! waiting in a retry queue. `DELETE …/refresh-batches/{batchId}` stops the expansion and
//! cancels every job the batch made.

use refresh_shared::{
    Category,
    broker::Topology,
    device::DeviceState,
    job::{CategoryState, JobState, Lane},
    store::{BATCHES, BatchRecord, Device, JobRecord},
    token::{PERMISSION_DEVICE_READ, PERMISSION_OPS_QUEUES},
};
use refresh_tests::{Answer, DEADLINE, TestStack, sample, wait_until};
use reqwest::StatusCode;
use serde_json::json;
use std::{collections::HashSet, process::Stdio};
use tokio::io::AsyncWriteExt;

async fn cancel(stack: &TestStack, job: &str, token: &str) -> Answer {
    let url = stack.job_url(&stack.org_id(), job);
    Answer::of(stack.http.delete(url).bearer_auth(token)).await
}

/// Waits until every category of `job` is `state`.
async fn wait_for_state(stack: &TestStack, job: &str, state: CategoryState) -> JobRecord {
    wait_until(
        &format!("job {job} to read {state:?}"),
        DEADLINE,
        || async {
            let record = stack.job(job).await;
            record
                .categories
                .values()
                .all(|c| c.state == state)
                .then_some(record)
        },
    )
    .await
}

/// The pushes the sim took for `job`, by the status it answered.
async fn push_statuses(stack: &TestStack, job: &str) -> Vec<u16> {
    let pushes = stack.pushes_for_job(job).await;
    pushes.iter().map(|push| push.status).collect()
}

async fn agent_device(stack: &TestStack) -> Device {
    stack.device_with(DeviceState::Active, true, false).await
}

#[tokio::test]
async fn a_job_canceled_while_it_waits_in_a_retry_queue_is_never_pushed_again() {
    // One push in process, then one round through a 3 s retry queue.
    let stack = TestStack::start_with(&[
        ("PUSH_MAX_ATTEMPTS", "1".to_owned()),
        ("RETRY_TIERS_SECS", "3".to_owned()),
    ])
    .await;
    let (device, witness_device) = (agent_device(&stack).await, agent_device(&stack).await);
    stack
        .fault(json!({ "mode": "fault", "gateway": "agent", "status": 503 }))
        .await;
    let job = stack
        .refresh_device(&device, &["hardware", "os"])
        .await
        .job_id();
    wait_for_state(&stack, &job, CategoryState::Retrying).await;
    // A second job behind it in the same retry queue: once it is back and pushed, the first
    // one's message has come back and been handled too (first in, first out).
    let witness = stack
        .refresh_device(&witness_device, &["hardware"])
        .await
        .job_id();
    wait_for_state(&stack, &witness, CategoryState::Retrying).await;

    let before = push_statuses(&stack, &job).await;
    let canceled = cancel(&stack, &job, &stack.token).await;
    assert_eq!(canceled.status, StatusCode::OK, "{:?}", canceled.body);
    let data = &canceled.body["data"];
    assert_eq!(data["state"], json!("canceled"), "{data}");
    for category in ["hardware", "os"] {
        assert_eq!(data["categories"][category]["state"], json!("canceled"));
    }
    // The device's claims are free: a new refresh is a new job, not the canceled one.
    let stored = stack.stored_device(device.id).await;
    assert!(stored.refresh_info_needed.is_empty(), "{stored:?}");

    // The gateway recovers; the witness comes back from the retry queue and is pushed.
    stack.fault(json!({ "mode": "ok" })).await;
    stack.wait_for_settled_job(&witness).await;
    // (Its own queue's: the page is this test process's, which other tests' stacks share.)
    let jobs_queue = Topology::new(&stack.settings.core.amqp).jobs_queue(Lane::Interactive);
    let label = format!("queue=\"{jobs_queue}\"");
    let what = "the worker to finish every delivery of its work queue";
    wait_until(what, DEADLINE, || async {
        let page = stack.metrics(&stack.worker).await;
        let unacked = sample(&page, "refresh_worker_unacked_deliveries", &label);
        (unacked == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(
        push_statuses(&stack, &job).await,
        before,
        "no push after the cancel"
    );
    assert!(before.iter().all(|status| *status == 503), "{before:?}");
    assert_eq!(push_statuses(&stack, &witness).await.last(), Some(&202));
    let record = stack.job(&job).await;
    assert_eq!(record.state(), JobState::Canceled, "{record:?}");

    let again = stack.refresh_device(&device, &["hardware"]).await.job_id();
    assert_ne!(again, job);
    stack.wait_for_settled_job(&again).await;
}

#[tokio::test]
async fn a_pushed_category_canceled_stays_canceled_when_the_device_reports_late() {
    let stack = TestStack::start().await;
    let (device, node_key) = stack
        .device_with_key(stack.organization.id, DeviceState::Active, true, false)
        .await;
    stack.fault(json!({ "mode": "ok", "report": "off" })).await;
    let job = stack.refresh_device(&device, &["network"]).await.job_id();
    wait_for_state(&stack, &job, CategoryState::Pushed).await;
    let canceled = cancel(&stack, &job, &stack.token).await;
    assert_eq!(canceled.status, StatusCode::OK, "{:?}", canceled.body);

    // The device's report still updates its inventory, but not the canceled job.
    let node = Category::Network.nodes().next().expect("a node");
    let report = json!({
        "jobId": job,
        "collectedAt": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap(),
        "categories": { "network": { "nodes": { node: "late" } } },
    });
    let url = format!(
        "{}/v1/agent/windows/devices/{}/reports",
        stack.devices,
        device.id.to_hex()
    );
    let sent = Answer::of(stack.http.post(url).bearer_auth(&node_key).json(&report)).await;
    assert_eq!(sent.status, StatusCode::ACCEPTED, "{:?}", sent.body);
    let reader = stack.token_with(&[PERMISSION_DEVICE_READ]).await;
    wait_until("the late report in the inventory", DEADLINE, || async {
        let inventory = stack.inventory(&device.id.to_hex(), None, &reader).await;
        inventory.body["data"]["categories"]["network"]["jobId"]
            .as_str()
            .map(|_| ())
    })
    .await;
    let record = stack.job(&job).await;
    assert_eq!(
        record.categories[&Category::Network].state,
        CategoryState::Canceled,
        "{record:?}"
    );
}

#[tokio::test]
async fn a_finished_job_cannot_be_canceled_and_cancel_stays_in_its_tenant() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let (job, _) = stack.settled_refresh(&device, &["os"]).await;
    cancel(&stack, &job, &stack.token).await.assert_error(
        StatusCode::CONFLICT,
        3003,
        "Job already finished",
    );

    stack.fault(json!({ "mode": "ok", "report": "off" })).await;
    let open = stack.refresh_device(&device, &["security"]).await.job_id();
    let reader = stack.token_with(&[PERMISSION_DEVICE_READ]).await;
    cancel(&stack, &open, &reader)
        .await
        .assert_error(StatusCode::FORBIDDEN, 4003, "Forbidden");
    let (other, other_token) = stack.other_tenant().await;
    cancel(&stack, &open, &other_token).await.assert_error(
        StatusCode::NOT_FOUND,
        3001,
        "Entity not found",
    );
    let url = format!(
        "{}/v1/organizations/{}/mdm/windows/enterprise/refresh-jobs/{open}",
        stack.api,
        other.id.to_hex()
    );
    Answer::of(stack.http.delete(url).bearer_auth(&other_token))
        .await
        .assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
    cancel(&stack, "0123456789abcdef01234567", &stack.token)
        .await
        .assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
    cancel(&stack, "not-an-id", &stack.token)
        .await
        .assert_error(StatusCode::BAD_REQUEST, 1001, "Validation failed");
    // Untouched by all of that; then canceled, and a second cancel finds it finished.
    assert_ne!(stack.job(&open).await.state(), JobState::Canceled);
    let canceled = cancel(&stack, &open, &stack.token).await;
    assert_eq!(canceled.status, StatusCode::OK, "{:?}", canceled.body);
    cancel(&stack, &open, &stack.token).await.assert_error(
        StatusCode::CONFLICT,
        3003,
        "Job already finished",
    );

    // The operator's way: `refreshctl job cancel`, and its refusal of a finished job.
    let pending = stack.refresh_device(&device, &["network"]).await.job_id();
    let canceled = stack.refreshctl(&["job", "cancel", &pending]).await;
    assert_eq!(canceled["state"], json!("canceled"), "{canceled}");
    assert_eq!(canceled["canceled"], json!(["network"]), "{canceled}");
    assert_eq!(stack.job(&pending).await.state(), JobState::Canceled);
    let refused = stack.refreshctl_output(&["job", "cancel", &pending]).await;
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("had already finished"), "{said}");
}

/// Devices in the batch-cancel test: `CANCEL_TEST_DEVICES`, default 1,000 so the suite stays
/// quick on the in-memory Python test database; the 10,000 runs with
/// `CANCEL_TEST_DEVICES=10000`.
fn cancel_test_devices() -> usize {
    std::env::var("CANCEL_TEST_DEVICES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000)
}

/// Devices a batch expands per checkpoint in the test, and pushes a worker makes at once for
/// batches: together, the most that may still be pushed after a cancel is answered.
const CHUNK: usize = 50;
const BULK_SLOTS: usize = 8;

#[tokio::test]
async fn a_batch_canceled_mid_expansion_pushes_nothing_more_than_what_was_in_flight() {
    let size = cancel_test_devices();
    let stack = TestStack::start_with(&[
        ("BATCH_CHUNK_SIZE", CHUNK.to_string()),
        ("WORKER_BULK_CONCURRENCY", BULK_SLOTS.to_string()),
    ])
    .await;
    // Every push takes 20 ms, so the batch is still expanding and draining when canceled.
    stack
        .fault(json!({ "mode": "fault", "latencyMs": 20 }))
        .await;
    let devices = stack.devices(size, DeviceState::Active, &["fleet"]).await;
    let ids: Vec<String> = devices.iter().map(|d| d.id.to_hex()).collect();
    let batch = stack
        .bulk(&json!({ "info": ["hardware", "os"], "deviceIds": ids }))
        .await
        .batch_id();
    // Canceled once a chunk's worth of devices has been pushed: jobs are then in every state,
    // from not yet made to reported.
    wait_until("a chunk's worth of pushes", DEADLINE, || async {
        (stack.pushes().await.len() >= CHUNK).then_some(())
    })
    .await;

    let before = stack.batch(&batch).await;
    assert_eq!(before.state.as_str(), "expanding", "{before:?}");
    let url = format!("{}/{batch}", stack.batches_url(&stack.org_id()));
    let answer = Answer::of(stack.http.delete(&url).bearer_auth(&stack.token)).await;
    let canceled_at = time::OffsetDateTime::now_utc();
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let view = &answer.body["data"];
    assert_eq!(view["state"], json!("canceled"), "{view}");
    assert!(view["canceledAt"].is_string(), "{view}");
    let pending = view["counts"]["pending"].as_u64();
    assert_eq!(
        pending,
        Some(0),
        "devices not reached count as canceled: {view}"
    );

    // Quiet: nothing of the batch left in the bulk queue or in a worker's hands.
    let jobs_queue = Topology::new(&stack.settings.core.amqp).jobs_queue(Lane::Bulk);
    let operator = stack.token_with(&[PERMISSION_OPS_QUEUES]).await;
    let label = format!("queue=\"{jobs_queue}\"");
    wait_until("the bulk queue to drain", DEADLINE, || async {
        let queues = Answer::of(
            stack
                .http
                .get(format!("{}/v1/ops/queues", stack.api))
                .bearer_auth(&operator),
        )
        .await;
        let ready = queues.body["data"]["queues"]
            .as_array()
            .and_then(|queues| queues.iter().find(|q| q["name"] == json!(jobs_queue)))
            .and_then(|queue| queue["ready"].as_u64());
        let page = stack.metrics(&stack.worker).await;
        let unacked = sample(&page, "refresh_worker_unacked_deliveries", &label);
        (ready == Some(0) && unacked == Some(0.0)).then_some(())
    })
    .await;

    let pushes = stack.pushes().await;
    let after: HashSet<&str> = pushes
        .iter()
        .filter(|push| push.time() > canceled_at)
        .map(|push| push.target.as_str())
        .collect();
    let reached: HashSet<&str> = pushes.iter().map(|push| push.target.as_str()).collect();
    let view = stack.batch(&batch).await;
    println!(
        "{size}-device batch canceled: {} devices pushed in all, {} after the cancel was answered; {:?}",
        reached.len(),
        after.len(),
        view.counts
    );
    assert!(
        after.len() <= CHUNK + BULK_SLOTS,
        "pushed after the cancel: {} devices (at most a chunk and the jobs in hand)",
        after.len()
    );
    assert!(reached.len() < size, "canceled before the end");
    assert_eq!(view.state.as_str(), "canceled");
    assert_eq!(view.counts.sum(), view.total, "{view:?}");
    assert_eq!(view.counts.pending + view.counts.queued, 0, "{view:?}");
    assert!(
        view.counts.canceled >= (size - reached.len()) as u64,
        "{view:?}"
    );

    // A device the batch never pushed is free: a refresh of it is a new job, pushed.
    let untouched = devices
        .iter()
        .find(|device| !reached.contains(device.id.to_hex().as_str()))
        .expect("a device the batch never reached");
    stack.fault(json!({ "mode": "ok" })).await;
    stack.settled_refresh(untouched, &["hardware"]).await;

    // An ended batch cannot be canceled again.
    Answer::of(stack.http.delete(&url).bearer_auth(&stack.token))
        .await
        .assert_error(StatusCode::CONFLICT, 3003, "Job already finished");
    let (other, other_token) = stack.other_tenant().await;
    let elsewhere = format!("{}/{batch}", stack.batches_url(&other.id.to_hex()));
    Answer::of(stack.http.delete(elsewhere).bearer_auth(&other_token))
        .await
        .assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
}

#[tokio::test]
async fn refreshctl_bulk_asks_at_ctrl_c_whether_to_cancel_the_batch() {
    let stack = TestStack::start().await;
    // The devices never report: the batch cannot end before it is canceled.
    stack.fault(json!({ "mode": "ok", "report": "off" })).await;
    stack.devices(5, DeviceState::Active, &["lab"]).await;
    let mut refreshctl = stack
        .refreshctl_command(&[
            "bulk",
            "--org",
            &stack.org_id(),
            "--info",
            "hardware",
            "--tag",
            "lab",
            "--cancel-on-interrupt",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run refreshctl");
    // Submitted (the command listens for Ctrl-C before it submits).
    let batches = stack.collection::<BatchRecord>(BATCHES);
    let batch = wait_until("the batch to be submitted", DEADLINE, || async {
        batches.find_one(bson::doc! {}).await.expect("read batches")
    })
    .await;

    let pid = refreshctl.id().expect("a running refreshctl").to_string();
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill runs");
    assert!(interrupted.success());
    let mut stdin = refreshctl.stdin.take().expect("stdin");
    stdin.write_all(b"y\n").await.expect("answer the question");
    drop(stdin);
    let output = tokio::time::timeout(DEADLINE, refreshctl.wait_with_output())
        .await
        .expect("refreshctl exits after the answer")
        .expect("refreshctl's output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("Cancel batch {}? [y/N]", batch.id.to_hex())),
        "{stderr}"
    );
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(printed["state"], json!("canceled"), "{printed}");
    assert_eq!(
        stack.batch(&batch.id.to_hex()).await.state.as_str(),
        "canceled"
    );
}
