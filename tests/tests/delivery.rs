//! Delivery guarantees (issue 3): no duplicate pushes from repeated requests.

use futures::{StreamExt, stream};
use refresh_shared::store;
use refresh_shared::{Category, job::CategoryState};
use refresh_tests::TestStack;
use reqwest::StatusCode;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

#[tokio::test]
async fn five_hundred_identical_requests_push_each_category_at_most_once() {
    let stack = TestStack::start_with(&[
        ("RATE_LIMIT_PER_SECOND", "10000".to_owned()),
        ("RATE_LIMIT_BURST", "10000".to_owned()),
        // All 500 fall within one skip window however slow the test database is today: after
        // the window a new request rightly gets a new job.
        ("REFRESH_SKIP_WINDOW_SECS", "600".to_owned()),
    ])
    .await;
    let device = stack.device().await;
    let body = json!({ "info": ["hardware", "applications", "certificates"] });
    let (org, key) = (stack.org_id(), device.id.to_hex());
    let started = std::time::Instant::now();
    let answers: Vec<_> = stream::iter(0..500)
        .map(|_| stack.refresh(&org, &key, &body))
        .buffer_unordered(64)
        .collect()
        .await;
    let took = started.elapsed();
    let mut statuses = BTreeMap::new();
    let mut job_ids = BTreeSet::new();
    for answer in &answers {
        *statuses.entry(answer.status.as_u16()).or_insert(0) += 1;
        if answer.status == StatusCode::OK {
            job_ids.insert(answer.job_id());
        }
    }
    println!("500 identical requests in {took:?}: statuses {statuses:?}, job ids {job_ids:?}");
    assert_eq!(statuses.get(&200), Some(&500), "{statuses:?}");
    assert_eq!(
        job_ids.len(),
        1,
        "every answer names the one job: {job_ids:?}"
    );

    let job_id = job_ids.into_iter().next().unwrap();
    let job = stack.wait_for_settled_job(&job_id).await;
    assert!(
        job.categories
            .values()
            .all(|c| c.state == CategoryState::Reported)
    );
    let pushes = stack.pushes().await;
    let mut per_category = BTreeMap::new();
    for push in &pushes {
        for category in &push.categories {
            *per_category.entry(category.clone()).or_insert(0) += 1;
        }
    }
    println!("pushes per category: {per_category:?}");
    assert_eq!(per_category.len(), 3);
    assert!(per_category.values().all(|&n| n == 1), "{per_category:?}");
    let jobs = stack
        .collection::<store::JobRecord>(store::JOBS)
        .count_documents(bson::doc! {})
        .await
        .unwrap();
    assert_eq!(jobs, 1, "merged requests leave no job behind");
}

#[tokio::test]
async fn a_request_overlapping_an_outstanding_job_gets_a_job_with_only_the_rest() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    // Keeps the first job outstanding while the second request arrives.
    stack
        .fault(json!({ "mode": "fault", "latencyMs": 1500 }))
        .await;
    let first = stack.refresh_device(&device, &["hardware"]).await.job_id();
    let second = stack
        .refresh_device(&device, &["hardware", "os"])
        .await
        .job_id();
    assert_ne!(first, second);
    let first_job = stack.wait_for_settled_job(&first).await;
    let second_job = stack.wait_for_settled_job(&second).await;
    assert_eq!(
        first_job.categories.keys().copied().collect::<Vec<_>>(),
        [Category::Hardware]
    );
    assert_eq!(
        second_job.categories.keys().copied().collect::<Vec<_>>(),
        [Category::Os]
    );
    assert_eq!(stack.pushes().await.len(), 2, "hardware once, os once");
}

#[tokio::test]
async fn a_category_refreshed_within_the_skip_window_is_not_pushed_again() {
    let stack = TestStack::start_with(&[("REFRESH_SKIP_WINDOW_SECS", "60".to_owned())]).await;
    let device = stack.device().await;
    let (first, _) = stack.settled_refresh(&device, &["security"]).await;
    let again = stack.refresh_device(&device, &["security"]).await.job_id();
    assert_eq!(again, first, "answered with the job that pushed it");
    assert_eq!(stack.pushes().await.len(), 1);

    let unwindowed = TestStack::start_with(&[("REFRESH_SKIP_WINDOW_SECS", "0".to_owned())]).await;
    let device = unwindowed.device().await;
    let (first, _) = unwindowed.settled_refresh(&device, &["security"]).await;
    let (second, _) = unwindowed.settled_refresh(&device, &["security"]).await;
    assert_ne!(
        first, second,
        "with the window off, a new request pushes again"
    );
    assert_eq!(unwindowed.pushes().await.len(), 2);
}

/// Throttles one target with `status` (`retryAfter: 2`), then checks that target gets no push
/// for 2 s while another device on the same gateway is pushed meanwhile.
async fn throttled_target_waits_while_others_flow(gateway: &str, status: u16) {
    use refresh_shared::device::DeviceState;

    let stack = TestStack::start().await;
    let (agent, wns) = (gateway == "agent", gateway == "wns");
    let throttled = stack.device_with(DeviceState::Active, agent, wns).await;
    let other = stack.device_with(DeviceState::Active, agent, wns).await;
    let target = |device: &refresh_shared::store::Device| match &device.push.wns {
        Some(channel) => channel.uri().rsplit('/').next().unwrap().to_owned(),
        None => device.id.to_hex(),
    };
    stack
        .fault(json!({ "mode": "fault", "gateway": gateway, "script": [status], "retryAfter": 2 }))
        .await;
    let first = stack
        .refresh_device(&throttled, &["hardware"])
        .await
        .job_id();
    let throttled_at =
        refresh_tests::wait_until("the throttling answer", refresh_tests::DEADLINE, || async {
            stack
                .pushes()
                .await
                .into_iter()
                .find(|p| p.status == status)
                .map(|p| p.time())
        })
        .await;
    let second = stack.refresh_device(&throttled, &["os"]).await.job_id();
    let meanwhile = stack.refresh_device(&other, &["os"]).await.job_id();
    // The agent's device reports; a device woken through WNS waits, pushed, for its session.
    let ended = if agent {
        CategoryState::Reported
    } else {
        CategoryState::Pushed
    };
    for job in [&first, &second, &meanwhile] {
        let job = if agent {
            stack.wait_for_settled_job(job).await
        } else {
            stack.wait_for_pushed_job(job).await
        };
        assert!(job.categories.values().all(|c| c.state == ended), "{job:?}");
    }

    let since = |push: &push_gateway_sim::PushRecord| push.time() - throttled_at;
    let pushes = stack.pushes().await;
    let later_to_throttled: Vec<_> = pushes
        .iter()
        .filter(|p| p.target == target(&throttled) && p.status != status)
        .map(since)
        .collect();
    println!(
        "{gateway} {status}: pushes to the throttled target at {later_to_throttled:?} after the throttle"
    );
    assert_eq!(later_to_throttled.len(), 2, "{pushes:?}");
    assert!(
        later_to_throttled
            .iter()
            .all(|d| *d >= time::Duration::seconds(2))
    );
    let to_other: Vec<_> = pushes
        .iter()
        .filter(|p| p.target == target(&other))
        .map(since)
        .collect();
    println!("{gateway} {status}: the other device pushed at {to_other:?}");
    assert_eq!(to_other.len(), 1);
    assert!(
        to_other[0] < time::Duration::seconds(2),
        "other devices keep flowing"
    );
}

#[tokio::test]
async fn a_wns_channel_throttled_with_406_gets_no_push_until_continue_after() {
    throttled_target_waits_while_others_flow("wns", 406).await;
}

#[tokio::test]
async fn a_device_throttled_by_the_agent_gateway_with_429_waits_for_retry_after() {
    throttled_target_waits_while_others_flow("agent", 429).await;
}
