//! The worker as a real process, stopped politely and killed: nothing accepted is lost, and no
//! category is pushed again once it is recorded `pushed`.

use futures::{StreamExt, TryStreamExt, stream};
use refresh_shared::{device::DeviceState, store};
use refresh_tests::{PushAudit, TestStack, wait_until};
use serde_json::json;
use std::time::Duration;

const CATEGORIES: [&str; 3] = ["hardware", "applications", "certificates"];

/// Refreshes the three categories of `count` fresh devices; returns the job ids.
async fn submit(stack: &TestStack, count: usize) -> Vec<String> {
    let devices: Vec<_> = stream::iter(0..count)
        .map(|_| stack.device_with(DeviceState::Active, true, false))
        .buffer_unordered(16)
        .collect()
        .await;
    let body = json!({ "info": CATEGORIES });
    let org = stack.org_id();
    stream::iter(devices)
        .map(|device| {
            let (body, org) = (&body, &org);
            async move { stack.refresh(org, &device.id.to_hex(), body).await.job_id() }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

/// Jobs in the kill test: `CRASH_TEST_JOBS`, default 200 so the suite stays quick on the
/// in-memory test database; the 1,000 runs by hand with `CRASH_TEST_JOBS=1000`.
fn crash_test_jobs() -> usize {
    std::env::var("CRASH_TEST_JOBS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
}

#[tokio::test]
async fn killing_the_worker_mid_stream_loses_nothing_and_repushes_nothing_recorded() {
    let count = crash_test_jobs();
    let stack = TestStack::spawn_with(&[
        ("RATE_LIMIT_PER_SECOND", "100000".to_owned()),
        ("RATE_LIMIT_BURST", "100000".to_owned()),
    ])
    .await;
    stack
        .fault(json!({ "mode": "fault", "latencyMs": 20 }))
        .await;
    // Kill it while requests are still coming in and a third of the pushes are done.
    let kill_at = count;
    let (jobs, pushed_at_kill) = tokio::join!(submit(&stack, count), async {
        wait_until(
            "the worker to be mid-stream",
            Duration::from_secs(300),
            || async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let pushes = stack.pushes().await.len();
                (pushes >= kill_at).then_some(pushes)
            },
        )
        .await;
        stack.kill_worker();
        stack.pushes().await.len()
    });
    assert_eq!(jobs.len(), count);
    stack.restart_worker().await;

    let PushAudit {
        accepted,
        after_recorded,
        twice_before,
        unrecorded,
    } = stack
        .settle_and_audit(&jobs, &CATEGORIES, Duration::from_secs(600))
        .await;
    assert_eq!(
        stack.all_jobs().await.len(),
        count,
        "no job but those accepted"
    );
    println!(
        "kill -9 after {pushed_at_kill} pushes: {count} jobs x 3 categories completed; \
         {accepted} pushes accepted, {after_recorded} after the category was recorded pushed, \
         {twice_before} repeated before it was recorded (pushes the kill interrupted), \
         {unrecorded} never recorded (the device reported first)"
    );
    assert_eq!(after_recorded, 0);
    assert!(accepted >= 3 * count);
}

#[tokio::test]
async fn sigterm_under_load_exits_0_within_the_deadline_and_loses_nothing() {
    let grace = Duration::from_secs(10);
    let stack = TestStack::spawn_with(&[
        ("SHUTDOWN_GRACE_MS", grace.as_millis().to_string()),
        // Eight jobs in flight: what is running at SIGTERM can finish well within the grace.
        ("WORKER_PREFETCH", "8".to_owned()),
        ("WORKER_CONCURRENCY", "8".to_owned()),
        ("RATE_LIMIT_PER_SECOND", "100000".to_owned()),
        ("RATE_LIMIT_BURST", "100000".to_owned()),
    ])
    .await;
    stack
        .fault(json!({ "mode": "fault", "latencyMs": 200 }))
        .await;
    let jobs = submit(&stack, 100).await;
    wait_until(
        "pushes to be under way",
        Duration::from_secs(30),
        || async { (!stack.pushes().await.is_empty()).then_some(()) },
    )
    .await;
    let (status, took) = stack.terminate_worker(grace + Duration::from_secs(3)).await;
    println!("SIGTERM under load: exit {status}, after {took:?}");
    assert!(status.success(), "{status}");
    assert!(took <= grace + Duration::from_secs(1), "{took:?}");

    stack.restart_worker().await;
    let PushAudit {
        accepted,
        after_recorded,
        twice_before,
        unrecorded,
    } = stack
        .settle_and_audit(&jobs, &CATEGORIES, Duration::from_secs(120))
        .await;
    println!(
        "then: {accepted} pushes accepted, {after_recorded} after recorded, {twice_before} repeated"
    );
    assert_eq!(unrecorded, 0, "a polite stop records what it pushed");
    assert_eq!(after_recorded, 0);
    assert_eq!(
        twice_before, 0,
        "a polite stop finishes or hands back, never half-does"
    );
    assert_eq!(accepted, 300);
}

/// Reports waiting in their queue survive the worker being killed while it applies them: every
/// one is applied, each exactly once in effect (one inventory document per device, with that
/// device's own values).
#[tokio::test]
async fn killing_the_worker_while_reports_are_queued_loses_none() {
    const REPORTS: usize = 1_000;
    let stack = TestStack::spawn_with(&[]).await;
    let devices = stack
        .devices_with_keys(REPORTS, DeviceState::Active, &[])
        .await;
    // No worker: the reports queue up.
    stack.kill_worker();
    let collected_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let stack = &stack;
    let statuses: Vec<u16> = stream::iter(&devices)
        .map(|(device, key)| {
            let body = json!({
                "collectedAt": collected_at,
                "categories": { "os": { "nodes": { "./DevDetail/SwV": format!("v-{}", device.id) } } },
            });
            async move {
                stack
                    .report(&device.id.to_hex(), Some(key), &body)
                    .await
                    .status
                    .as_u16()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(statuses.iter().all(|&s| s == 202), "{statuses:?}");

    let inventory = stack.collection::<bson::Document>(store::INVENTORY);
    let applied = || async { inventory.count_documents(bson::doc! {}).await.unwrap() };
    stack.restart_worker().await;
    let at_kill = wait_until(
        "the worker to be applying reports",
        Duration::from_secs(120),
        || async {
            let applied = applied().await;
            (applied >= 100).then_some(applied)
        },
    )
    .await;
    stack.kill_worker();
    stack.restart_worker().await;
    wait_until(
        "every report to be applied",
        Duration::from_secs(300),
        || async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            (applied().await == REPORTS as u64).then_some(())
        },
    )
    .await;
    println!("kill -9 after {at_kill} of {REPORTS} reports applied: all {REPORTS} applied");
    let records: Vec<store::InventoryRecord> = stack
        .collection::<store::InventoryRecord>(store::INVENTORY)
        .find(bson::doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(records.len(), REPORTS);
    for record in records {
        assert_eq!(record.nodes.len(), 1);
        assert_eq!(record.nodes[0].value, format!("v-{}", record.device));
    }
}
