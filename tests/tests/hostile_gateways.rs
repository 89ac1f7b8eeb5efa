//! What a hostile or broken gateway, a device's channel URI, a lost broker channel or a long
//! database outage can do to the worker: never steal its WNS token, never crash or stall it,
//! never push a category twice where the first push was recorded.

use axum::{Router, http::StatusCode as AxumStatus, response::IntoResponse, routing::any};
use bson::doc;
use refresh_shared::{
    Category,
    broker::Topology,
    device::DeviceState,
    job::{CategoryState, Lane},
};
use refresh_tests::{DEADLINE, TestStack, proxy::Proxy, sample, wait_until};
use serde_json::json;
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};
use tokio::net::TcpListener;

/// A listener that only counts who connects: where a stolen token would go.
struct Thief {
    url: String,
    visits: Arc<AtomicUsize>,
}

impl Thief {
    async fn start() -> Thief {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let visits = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&visits);
        tokio::spawn(async move {
            while let Ok((_connection, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        Thief { url, visits }
    }

    fn visits(&self) -> usize {
        self.visits.load(Ordering::SeqCst)
    }
}

/// Deliveries of the interactive queue the worker holds unacknowledged, from its `/metrics`.
async fn interactive_unacked(stack: &TestStack) -> Option<f64> {
    let queue = Topology::new(&stack.settings.core.amqp).jobs_queue(Lane::Interactive);
    let page = stack.metrics(&stack.worker).await;
    sample(
        &page,
        "refresh_worker_unacked_deliveries",
        &format!("queue=\"{queue}\""),
    )
}

#[tokio::test]
async fn a_channel_uri_outside_the_wns_hosts_is_refused_when_written_and_never_contacted() {
    let stack = TestStack::start().await;
    let thief = Thief::start().await;
    let steal = format!("{}/steal", thief.url);

    let output = stack
        .refreshctl_output(&[
            "device",
            "create",
            "--org",
            &stack.org_id(),
            "--push",
            "wns",
            "--channel-uri",
            &steal,
        ])
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refreshctl accepted {steal}");
    assert!(
        stderr.contains("WNS_CHANNEL_HOST_SUFFIXES"),
        "says why: {stderr}"
    );
    let devices = stack
        .store
        .database()
        .collection::<bson::Document>("win_devices");
    assert_eq!(
        devices
            .count_documents(doc! { "push.wns.channelUri": &steal })
            .await
            .expect("count"),
        0,
        "nothing written"
    );

    // A URI that reached the database some other way is checked again before the push.
    let device = stack.device_with(DeviceState::Active, false, true).await;
    devices
        .update_one(
            doc! { "_id": device.id },
            doc! { "$set": { "push.wns.channelUri": &steal } },
        )
        .await
        .expect("plant the URI");
    let (_, job) = stack.settled_refresh(&device, &["hardware"]).await;
    let hardware = &job.categories[&Category::Hardware];
    assert_eq!(hardware.state, CategoryState::Failed, "{hardware:?}");
    let error = hardware.last_error.as_deref().unwrap_or_default();
    assert!(error.contains("channel URI refused"), "{error}");
    assert_eq!(thief.visits(), 0, "the worker contacted {steal}");
}

#[tokio::test]
async fn a_gateway_redirect_is_not_followed() {
    let thief = Thief::start().await;
    let location = format!("{}/steal", thief.url);
    let redirecting = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gateway = format!("http://{}", redirecting.local_addr().expect("address"));
    let router = Router::new().fallback(any(move || {
        let location = location.clone();
        async move { (AxumStatus::TEMPORARY_REDIRECT, [("location", location)]).into_response() }
    }));
    tokio::spawn(async move { axum::serve(redirecting, router).await });
    let stack = TestStack::start_with(&[("AGENT_GATEWAY_URL", gateway)]).await;
    let device = stack.device_with(DeviceState::Active, true, false).await;

    let (_, job) = stack.settled_refresh(&device, &["hardware"]).await;
    let hardware = &job.categories[&Category::Hardware];
    assert_eq!(hardware.state, CategoryState::Failed, "{hardware:?}");
    assert_eq!(thief.visits(), 0, "the redirect was followed");
}

#[tokio::test]
async fn a_gateway_asking_for_an_absurd_wait_neither_crashes_nor_holds_the_worker() {
    let stack = TestStack::start().await;
    // u64::MAX seconds overflowed an Instant (a panic); a year was slept in a worker slot.
    for retry_after in [u64::MAX, 365 * 86_400] {
        let device = stack.device_with(DeviceState::Active, true, false).await;
        stack
            .fault(json!({ "mode": "fault", "gateway": "agent", "status": 429, "retryAfter": retry_after }))
            .await;
        let job_id = stack.refresh_device(&device, &["hardware"]).await.job_id();
        wait_until(
            &format!("Retry-After {retry_after}: the job to wait in a retry queue"),
            DEADLINE,
            || async {
                let job = stack.job(&job_id).await;
                let held = interactive_unacked(&stack).await;
                (job.categories[&Category::Hardware].state == CategoryState::Retrying
                    && held == Some(0.0))
                .then_some(())
            },
        )
        .await;
        // The worker goes on: another device is pushed at once.
        stack.fault(json!({ "mode": "ok" })).await;
        let other = stack.device_with(DeviceState::Active, true, false).await;
        let (_, job) = stack.settled_refresh(&other, &["os"]).await;
        assert_eq!(job.categories[&Category::Os].state, CategoryState::Reported);
    }
}

#[tokio::test]
async fn a_lost_broker_channel_never_pushes_a_recorded_category_twice() {
    let (proxy, amqp_url) = Proxy::rabbitmq().await;
    let stack = TestStack::start_with(&[("AMQP_URL", amqp_url)]).await;
    let device = stack.device_with(DeviceState::Active, true, false).await;
    // Pushes are slow, so the broker connection goes while they are under way.
    stack
        .fault(json!({ "mode": "fault", "latencyMs": 1500 }))
        .await;
    let categories = ["hardware", "network", "os"];
    let job_id = stack.refresh_device(&device, &categories).await.job_id();
    wait_until("the pushes to be under way", DEADLINE, || async {
        let job = stack.job(&job_id).await;
        job.categories
            .values()
            .all(|c| c.state == CategoryState::Pushing)
            .then_some(())
    })
    .await;
    proxy.cut();
    proxy.restore();

    let job = stack.wait_for_settled_job(&job_id).await;
    assert!(
        job.categories
            .values()
            .all(|c| c.state == CategoryState::Reported),
        "{job:?}"
    );
    // The redelivered copy is done too (its pushes, if it made any, answered).
    wait_until("the worker to hold no delivery", DEADLINE, || async {
        (interactive_unacked(&stack).await == Some(0.0)).then_some(())
    })
    .await;
    let mut per_category: HashMap<String, usize> = HashMap::new();
    for push in stack.pushes_for_job(&job_id).await {
        for category in push.categories {
            *per_category.entry(category).or_default() += 1;
        }
    }
    for category in categories {
        assert_eq!(per_category.get(category), Some(&1), "{per_category:?}");
    }
}

/// A stack whose database connection the test can cut, the worker holding a delivery for at
/// most a second while it is away.
async fn stack_with_a_cuttable_database(overrides: &[(&str, String)]) -> (Proxy, TestStack) {
    let (proxy, mongodb_uri) = Proxy::mongodb().await;
    let mut settings = vec![
        ("MONGODB_URI", mongodb_uri),
        ("WORKER_HOLD_LIMIT_MS", "1000".to_owned()),
    ];
    settings.extend_from_slice(overrides);
    (proxy, TestStack::start_with(&settings).await)
}

async fn wait_for_hardware(stack: &TestStack, job_id: &str, state: CategoryState) {
    wait_until(&format!("hardware to be {state:?}"), DEADLINE, || async {
        (stack.job(job_id).await.categories[&Category::Hardware].state == state).then_some(())
    })
    .await;
}

async fn wait_for_a_delivery_handed_back(stack: &TestStack) {
    wait_until("a held delivery to be handed back", DEADLINE, || async {
        let page = stack.metrics(&stack.worker).await;
        (sample(&page, "refresh_worker_deliveries_handed_back_total", "")? >= 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_delivery_is_handed_back_when_the_database_stays_away_past_the_hold_limit() {
    let (proxy, stack) = stack_with_a_cuttable_database(&[
        // A retry waits long enough in the worker for the database to go meanwhile.
        ("PUSH_RETRY_INITIAL_MS", "1500".to_owned()),
        ("PUSH_RETRY_MAX_INTERVAL_MS", "1500".to_owned()),
    ])
    .await;
    let device = stack.device_with(DeviceState::Active, true, false).await;
    stack
        .fault(json!({ "mode": "fault", "gateway": "agent", "script": [503, 200] }))
        .await;
    let job_id = stack.refresh_device(&device, &["hardware"]).await.job_id();
    wait_for_hardware(&stack, &job_id, CategoryState::Retrying).await;
    // The database goes while no push a gateway took is waiting to be recorded.
    proxy.cut();
    wait_for_a_delivery_handed_back(&stack).await;
    proxy.restore();
    let job = stack.wait_for_settled_job(&job_id).await;
    assert_eq!(
        job.categories[&Category::Hardware].state,
        CategoryState::Reported
    );
}

#[tokio::test]
async fn a_push_made_while_the_database_stays_away_past_the_hold_limit_is_recorded_and_not_made_again()
 {
    let (proxy, stack) = stack_with_a_cuttable_database(&[]).await;
    let device = stack.device_with(DeviceState::Active, true, false).await;
    stack
        .fault(json!({ "mode": "fault", "latencyMs": 500 }))
        .await;
    let job_id = stack.refresh_device(&device, &["hardware"]).await.job_id();
    wait_for_hardware(&stack, &job_id, CategoryState::Pushing).await;
    // The gateway takes the push while the worker cannot write it down: the delivery is
    // handed on, with the push, to a copy of the job.
    proxy.cut();
    wait_for_a_delivery_handed_back(&stack).await;
    proxy.restore();
    // Settled means reported with its push recorded (`pushedAt`).
    let job = stack.wait_for_settled_job(&job_id).await;
    let hardware = &job.categories[&Category::Hardware];
    assert_eq!(hardware.state, CategoryState::Reported, "{job:?}");
    assert_eq!(hardware.attempts, 1, "{job:?}");
    // Whatever is still running settles before the pushes are counted.
    wait_until("the worker to hold no delivery", DEADLINE, || async {
        (interactive_unacked(&stack).await == Some(0.0)).then_some(())
    })
    .await;
    let pushes = stack.pushes_for_job(&job_id).await;
    assert_eq!(pushes.len(), 1, "the push was made again: {pushes:?}");
}
