//! A deployment over a three-node RabbitMQ cluster (`scripts/rabbitmq-cluster`): two apis and two
//! workers as real processes, a broker node killed under a stream of refreshes. Its own test
//! binary: cargo runs test binaries one at a time, so no other test sees a node go away.

use futures::{StreamExt, stream};
use refresh_shared::{broker::Topology, device::DeviceState, job::Lane};
use refresh_tests::{PushAudit, TestStack, cluster::Cluster, wait_until};
use reqwest::StatusCode;
use serde_json::json;
use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

/// Refreshes in the stream: `CLUSTER_TEST_REFRESHES`, default 400 so the suite stays quick on
/// the in-memory test database (which scans what it cannot index, and slows down as devices
/// accumulate); the 2,000 runs by hand with `CLUSTER_TEST_REFRESHES=2000` against
/// secantusd-rs.
fn refreshes() -> usize {
    std::env::var("CLUSTER_TEST_REFRESHES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(400)
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_node_that_leads_the_work_queue_loses_no_refresh_and_pushes_none_twice() {
    let cluster = Cluster::from_env();
    let count = refreshes();
    let stack = TestStack::spawn_with(&[
        ("AMQP_URL", cluster.url.clone()),
        ("RATE_LIMIT_PER_SECOND", "100000".to_owned()),
        ("RATE_LIMIT_BURST", "100000".to_owned()),
    ])
    .await
    .cleaning_up_on(&cluster.url);
    let other_api = stack.spawn_another("refresh-api").await;
    let other_worker = stack.spawn_another("refresh-worker").await;
    let apis = [stack.api.clone(), other_api.base.clone()];
    let workers = [stack.worker.clone(), other_worker.base.clone()];
    let devices = stack.devices(count, DeviceState::Active, &[]).await;
    // Refreshed through each api after the kill, to see both serve again.
    let probes = stack.devices(2, DeviceState::Active, &[]).await;
    let work_queue = Topology::new(&stack.settings.core.amqp).jobs_queue(Lane::Interactive);
    let consumers_before = cluster
        .consumer_nodes(&work_queue)
        .await
        .expect("the cluster lists consumers")
        .len();
    assert!(
        consumers_before >= 2,
        "both workers consume: {consumers_before}"
    );

    let org = stack.org_id();
    let refresh = |api: &str, device: &str| {
        let request = stack
            .http
            .post(TestStack::refresh_url_at(api, &org, device))
            .bearer_auth(&stack.token)
            .json(&json!({ "info": ["hardware"] }));
        refresh_tests::Answer::of(request)
    };
    let answered = AtomicUsize::new(0);
    let probes_refused = AtomicUsize::new(0);
    let requests = stream::iter(devices.iter().enumerate())
        .map(|(i, device)| {
            let (refresh, answered, apis) = (&refresh, &answered, &apis);
            async move {
                let answer = refresh(&apis[i % 2], &device.id.to_hex()).await;
                answered.fetch_add(1, Ordering::Relaxed);
                answer
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>();
    let kill = async {
        let at = wait_until(
            "a third of the stream to be answered",
            Duration::from_secs(300),
            || async {
                let n = answered.load(Ordering::Relaxed);
                (n >= count / 3).then_some(n)
            },
        )
        .await;
        let leader = cluster.leader(&work_queue).await;
        cluster.kill(leader).await;
        let killed = Instant::now();
        // Whole again: each api accepts a refresh, each worker is ready, and the work queue
        // has as many consumers on the surviving nodes as it had before.
        wait_until(
            "every process to be back on the surviving nodes",
            Duration::from_secs(60),
            || async {
                for (api, probe) in apis.iter().zip(&probes) {
                    if refresh(api, &probe.id.to_hex()).await.status != StatusCode::OK {
                        probes_refused.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                }
                for worker in &workers {
                    let ready = stack.http.get(format!("{worker}/readyz")).send().await;
                    if !ready.is_ok_and(|r| r.status() == StatusCode::OK) {
                        return None;
                    }
                }
                let nodes = cluster.consumer_nodes(&work_queue).await?;
                let alive = nodes.iter().filter(|node| **node != leader).count();
                (alive == consumers_before).then_some(())
            },
        )
        .await;
        (at, leader, killed.elapsed())
    };
    let (answers, (answered_at_kill, leader, back_after)) = tokio::join!(requests, kill);

    let mut statuses = BTreeMap::new();
    for answer in &answers {
        *statuses.entry(answer.status.as_u16()).or_insert(0) += 1;
    }
    let accepted: Vec<String> = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .map(|a| a.job_id())
        .collect();
    println!(
        "node {leader} (the leader of {work_queue}) killed after {answered_at_kill} of {count} \
         answers; answers {statuses:?}; every process back after {back_after:?}"
    );
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "only 200 or 503: {statuses:?}"
    );
    assert!(answered_at_kill < count, "the kill came mid-stream");
    assert!(
        back_after <= Duration::from_secs(30),
        "reconnected by themselves within 30 s: {back_after:?}"
    );

    let PushAudit {
        accepted: pushes,
        after_recorded,
        twice_before,
        unrecorded,
    } = stack
        .settle_and_audit(&accepted, &["hardware"], Duration::from_secs(600))
        .await;
    // Whole again before the stack's queues are deleted (quicker with every member up).
    cluster.restart_killed();
    let jobs = stack.all_jobs().await;
    let abandoned = jobs
        .iter()
        .filter(|job| job.state() == refresh_shared::job::JobState::Failed)
        .count();
    println!(
        "{} accepted jobs all completed; {abandoned} jobs answered 503 recorded failed; \
         {pushes} pushes accepted, {after_recorded} after the category was recorded pushed, \
         {twice_before} repeated before it was recorded, {unrecorded} never recorded (the \
         device reported first)",
        accepted.len()
    );
    assert_eq!(
        after_recorded, 0,
        "nothing pushed twice after being recorded"
    );
    // No worker died: each recorded what it pushed, whatever the broker did meanwhile.
    assert_eq!(unrecorded, 0, "every push recorded");
    // Every job is accounted for: completed (a 200) or failed unqueued (a 503), besides the
    // probes' jobs.
    let unaccounted = jobs.len() - accepted.len() - abandoned;
    assert!(
        unaccounted <= probes.len(),
        "{unaccounted} jobs neither 200 nor failed"
    );
    let refused = statuses.get(&503).copied().unwrap_or(0);
    assert_eq!(
        abandoned,
        refused + probes_refused.load(Ordering::Relaxed),
        "each 503 left a failed job"
    );
}
