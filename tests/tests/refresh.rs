//! The main path, end to end: HTTP → RabbitMQ → worker → push-gateway-sim → MongoDB.

use push_gateway_sim::SimGateway;
use refresh_shared::{
    Category,
    device::{DeviceState, Gateway},
    job::{CategoryState, JobState},
    report::ReportSource,
};
use refresh_tests::{Answer, TestStack};
use reqwest::StatusCode;
use serde_json::json;

fn upstream_example() -> serde_json::Value {
    json!({ "info": ["hardware", "applications", "certificates"] })
}

/// The upstream 200 shape plus `jobId`, then one push per category, the device's report of
/// each, and a `completed` job.
async fn refresh_completes(stack: &TestStack, organization: &str, device_key: &str) {
    let answer = stack
        .refresh(organization, device_key, &upstream_example())
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.body["status"], json!(true));
    assert_eq!(answer.body["data"]["status"], json!(true));
    let job_id = answer.job_id();
    assert_eq!(job_id.len(), 24);
    assert!(job_id.bytes().all(|b| b.is_ascii_hexdigit()));

    let job = stack.wait_for_settled_job(&job_id).await;
    assert_eq!(job.state(), JobState::Completed, "{job:?}");
    for category in [
        Category::Hardware,
        Category::Applications,
        Category::Certificates,
    ] {
        let record = &job.categories[&category];
        assert_eq!(record.state, CategoryState::Reported, "{record:?}");
        assert_eq!(record.attempts, 1);
        assert_eq!(record.gateway, Some(Gateway::Agent));
        assert_eq!(record.report_source, Some(ReportSource::Agent));
        let (pushed, reported) = (record.pushed_at.unwrap(), record.reported_at.unwrap());
        assert!(reported >= pushed, "{record:?}");
    }

    let pushes = stack.pushes_for_job(&job_id).await;
    let mut categories: Vec<String> = pushes.iter().flat_map(|p| p.categories.clone()).collect();
    categories.sort();
    assert_eq!(
        categories,
        ["applications", "certificates", "hardware"],
        "{pushes:?}"
    );
    assert!(
        pushes
            .iter()
            .all(|p| p.gateway == SimGateway::Agent && p.categories.len() == 1)
    );
}

#[tokio::test]
async fn a_device_is_found_by_id_imei_and_serial_in_an_organization_named_by_id_or_slug() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let imei = device.summary.imei.clone().unwrap();
    let serial = device.summary.serial_number.clone().unwrap();
    let slug = stack.organization.slug.clone();

    refresh_completes(&stack, &stack.org_id(), &device.id.to_hex()).await;
    refresh_completes(&stack, &slug, &imei).await;
    refresh_completes(&stack, &stack.org_id(), &serial).await;
    refresh_completes(&stack, &slug, &device.id.to_hex().to_uppercase()).await;

    let device = stack
        .store
        .device(stack.organization.id, device.id)
        .await
        .unwrap()
        .unwrap();
    assert!(device.refresh_info_needed.is_empty(), "{device:?}");
    assert!(device.info_refreshed_at.contains_key(&Category::Hardware));
}

#[tokio::test]
async fn the_job_status_call_shows_every_category() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let body = json!({ "info": ["os", "network", "os"] });
    let job_id = stack
        .refresh(&stack.org_id(), &device.id.to_hex(), &body)
        .await
        .job_id();
    stack.wait_for_settled_job(&job_id).await;

    let answer = Answer::of(
        stack
            .http
            .get(stack.job_url(&stack.organization.slug, &job_id))
            .bearer_auth(&stack.token),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let data = &answer.body["data"];
    assert_eq!(data["id"], json!(job_id));
    assert_eq!(data["organizationId"], json!(stack.org_id()));
    assert_eq!(data["deviceId"], json!(device.id.to_hex()));
    assert_eq!(data["state"], json!("completed"));
    assert!(data["createdAt"].is_string() && data["updatedAt"].is_string());
    let categories = data["categories"].as_object().unwrap();
    assert_eq!(categories.len(), 2, "duplicates are merged: {categories:?}");
    for name in ["os", "network"] {
        let category = &categories[name];
        assert_eq!(category["state"], json!("reported"));
        assert_eq!(category["attempts"], json!(1));
        assert_eq!(category["gateway"], json!("agent"));
        assert!(category["lastError"].is_null());
        assert!(category["pushedAt"].is_string());
        assert!(category["reportedAt"].is_string());
        assert_eq!(category["reportSource"], json!("agent"));
    }
}

#[tokio::test]
async fn transient_gateway_failures_are_retried_until_pushed() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    stack
        .fault(json!({ "mode": "fault", "gateway": "agent", "script": [503, 503, 200] }))
        .await;
    let (job_id, job) = stack.settled_refresh(&device, &["hardware"]).await;
    let hardware = &job.categories[&Category::Hardware];
    assert_eq!(hardware.state, CategoryState::Reported, "{hardware:?}");
    assert_eq!(hardware.attempts, 3);
    assert_eq!(hardware.gateway, Some(Gateway::Agent));
    let statuses: Vec<u16> = stack
        .pushes_for_job(&job_id)
        .await
        .iter()
        .map(|p| p.status)
        .collect();
    assert_eq!(statuses, [503, 503, 200]);
}

#[tokio::test]
async fn a_gone_wns_channel_fails_after_one_attempt_and_is_marked_dead() {
    let stack = TestStack::start().await;
    let device = stack.device_with(DeviceState::Active, false, true).await;
    stack
        .fault(json!({ "mode": "fault", "gateway": "wns", "status": 410 }))
        .await;
    let (job_id, job) = stack.settled_refresh(&device, &["security"]).await;
    let security = &job.categories[&Category::Security];
    assert_eq!(security.state, CategoryState::Failed);
    assert_eq!(security.attempts, 1);
    assert_eq!(security.gateway, Some(Gateway::Wns));
    assert!(
        security.last_error.as_deref().unwrap().contains("410"),
        "{security:?}"
    );
    assert_eq!(job.state(), JobState::Failed);
    assert_eq!(stack.pushes_for_job(&job_id).await.len(), 1);

    let device = stack
        .store
        .device(stack.organization.id, device.id)
        .await
        .unwrap()
        .unwrap();
    assert!(device.push.live_wns_channel().is_none(), "{device:?}");
    assert!(device.refresh_info_needed.is_empty());
}

#[tokio::test]
async fn a_permanent_agent_answer_is_not_retried() {
    let stack = TestStack::start().await;
    let device = stack.device_with(DeviceState::Active, true, false).await;
    stack
        .fault(json!({ "mode": "fault", "gateway": "agent", "status": 410 }))
        .await;
    let (_, job) = stack.settled_refresh(&device, &["os"]).await;
    let os = &job.categories[&Category::Os];
    assert_eq!(
        (os.state, os.attempts),
        (CategoryState::Failed, 1),
        "{os:?}"
    );
}

#[tokio::test]
async fn when_the_agent_gateway_is_unreachable_the_push_goes_through_wns() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let stack = TestStack::start_with(&[(
        "AGENT_GATEWAY_URL",
        format!("http://127.0.0.1:{closed_port}"),
    )])
    .await;
    let device = stack.device().await;
    // Woken through WNS, a device reports in an OMA-DM session, not through its agent: the
    // categories wait, pushed, for that report.
    let (job_id, job) = stack.pushed_refresh(&device, &["hardware", "os"]).await;
    assert_eq!(job.state(), JobState::InProgress, "{job:?}");
    for record in job.categories.values() {
        assert_eq!(record.state, CategoryState::Pushed);
        assert_eq!(record.gateway, Some(Gateway::Wns));
        assert_eq!(
            record.attempts, 2,
            "agent tried first, then WNS: {record:?}"
        );
    }
    let pushes = stack.pushes_for_job(&job_id).await;
    assert_eq!(pushes.len(), 2);
    assert!(
        pushes
            .iter()
            .all(|p| p.gateway == SimGateway::Wns && p.status == 200)
    );
    // As Windows expects an MDM push: kept for an offline device while the job lives (an
    // hour by default), and naming no category (the session hands out the reads).
    for push in &pushes {
        assert_eq!(push.cache_policy.as_deref(), Some("cache"), "{push:?}");
        assert!(
            push.ttl_secs
                .is_some_and(|ttl| (3_500..=3_600).contains(&ttl)),
            "{push:?}"
        );
        assert!(push.categories.is_empty(), "{push:?}");
    }
}

#[tokio::test]
async fn a_device_the_agent_cannot_reach_falls_back_to_wns() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    stack
        .fault(json!({ "mode": "fault", "gateway": "agent", "status": 404 }))
        .await;
    let (job_id, job) = stack.pushed_refresh(&device, &["network"]).await;
    let network = &job.categories[&Category::Network];
    assert_eq!(
        (network.state, network.gateway),
        (CategoryState::Pushed, Some(Gateway::Wns))
    );
    let gateways: Vec<SimGateway> = stack
        .pushes_for_job(&job_id)
        .await
        .iter()
        .map(|p| p.gateway)
        .collect();
    assert_eq!(gateways, [SimGateway::Agent, SimGateway::Wns]);
}

/// A stack with `overrides`, and an agent-only device whose gateway answers 503 to everything.
async fn stack_with_failing_agent(
    overrides: &[(&str, String)],
) -> (TestStack, refresh_shared::store::Device) {
    let stack = TestStack::start_with(overrides).await;
    let device = stack.device_with(DeviceState::Active, true, false).await;
    stack
        .fault(json!({ "mode": "fault", "gateway": "agent", "status": 503 }))
        .await;
    (stack, device)
}

#[tokio::test]
async fn a_gateway_that_keeps_failing_ends_the_category_failed_with_its_reason() {
    // Two attempts in process, then one round through the 1 s retry queue, then give up.
    let (stack, device) = stack_with_failing_agent(&[
        ("PUSH_MAX_ATTEMPTS", "2".to_owned()),
        ("RETRY_TIERS_SECS", "1".to_owned()),
    ])
    .await;
    let (job_id, job) = stack.settled_refresh(&device, &["applications"]).await;
    let applications = &job.categories[&Category::Applications];
    assert_eq!(applications.state, CategoryState::Failed);
    assert_eq!(applications.attempts, 4);
    assert_eq!(
        applications.last_error.as_deref(),
        Some("gave up after 2 rounds of retries: agent gateway answered 503 Service Unavailable")
    );
    let pushes = stack.pushes_for_job(&job_id).await;
    assert_eq!(pushes.len(), 4);
    let waited = pushes[2].time() - pushes[1].time();
    assert!(
        waited >= time::Duration::seconds(1),
        "the third push came from the retry queue: {waited}"
    );
    // The retry queue kept the job's trace.
    let traces = stack.push_trace_ids(&job_id).await;
    assert!(traces.iter().all(|trace| *trace == traces[0]), "{traces:?}");
}

#[tokio::test]
async fn a_refresh_carries_the_caller_s_trace_to_every_push_or_starts_one() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = stack
        .http
        .post(stack.refresh_url(&stack.org_id(), &device.id.to_hex()))
        .bearer_auth(&stack.token)
        .header("traceparent", caller)
        .json(&json!({ "info": ["hardware", "os"] }));
    let job_id = Answer::of(request).await.job_id();
    stack.wait_for_settled_job(&job_id).await;
    let pushes = stack.pushes_for_job(&job_id).await;
    assert_eq!(pushes.len(), 2);
    for push in &pushes {
        let sent = push.traceparent.as_deref().unwrap_or_default();
        assert!(
            sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{push:?}"
        );
        assert_ne!(sent, caller, "each hop is a span of its own");
    }

    // Without one, or with one that is not valid, the api starts a trace of its own.
    let mut started = Vec::new();
    for (header, categories) in [
        (None, json!(["network", "security"])),
        (Some("00-not-a-trace-01"), json!(["applications"])),
    ] {
        let mut request = stack
            .http
            .post(stack.refresh_url(&stack.org_id(), &device.id.to_hex()))
            .bearer_auth(&stack.token)
            .json(&json!({ "info": categories }));
        if let Some(header) = header {
            request = request.header("traceparent", header);
        }
        let job_id = Answer::of(request).await.job_id();
        stack.wait_for_settled_job(&job_id).await;
        let traces = stack.push_trace_ids(&job_id).await;
        assert!(!traces.is_empty());
        assert!(traces.iter().all(|trace| *trace == traces[0]), "{traces:?}");
        started.push(traces[0].clone());
    }
    assert_ne!(started[0], started[1]);
    assert!(!started.contains(&"4bf92f3577b34da6a3ce929d0e0e4736".to_owned()));
}

#[tokio::test]
async fn a_category_not_pushed_within_the_maximum_age_expires() {
    let (stack, device) = stack_with_failing_agent(&[
        ("PUSH_MAX_ATTEMPTS", "1".to_owned()),
        ("RETRY_TIERS_SECS", "2".to_owned()),
        ("JOB_MAX_AGE_SECS", "1".to_owned()),
    ])
    .await;
    let (job_id, job) = stack.settled_refresh(&device, &["hardware"]).await;
    let hardware = &job.categories[&Category::Hardware];
    assert_eq!(hardware.state, CategoryState::Expired, "{hardware:?}");
    assert_eq!(hardware.attempts, 1);
    assert_eq!(
        hardware.last_error.as_deref(),
        Some("not pushed within 1s of the request")
    );
    assert_eq!(job.state(), JobState::Failed);
    assert_eq!(stack.pushes_for_job(&job_id).await.len(), 1);
    let device = stack
        .store
        .device(stack.organization.id, device.id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        device.refresh_info_needed.is_empty(),
        "an expired category is no longer outstanding"
    );
}

#[tokio::test]
async fn a_message_that_cannot_be_decoded_is_dead_lettered() {
    use lapin::{
        BasicProperties,
        options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions},
        types::AMQPValue,
    };
    use refresh_shared::{broker::Topology, job::Lane};

    let stack = TestStack::start().await;
    let topology = Topology::new(&stack.settings.core.amqp);
    let connection =
        refresh_shared::broker::connect(&stack.settings.core.amqp.url, "refresh-tests")
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            topology.jobs_exchange().into(),
            Topology::routing_key(Lane::Interactive).into(),
            BasicPublishOptions::default(),
            b"{\"version\":1,\"garbage\":true}",
            BasicProperties::default(),
        )
        .await
        .unwrap();

    let dead = refresh_tests::wait_until(
        "the message in the dead-letter queue",
        refresh_tests::DEADLINE,
        || async {
            channel
                .basic_get(topology.dead_queue().into(), BasicGetOptions::default())
                .await
                .unwrap()
        },
    )
    .await;
    assert_eq!(dead.delivery.data, b"{\"version\":1,\"garbage\":true}");
    let headers = dead.delivery.properties.headers().clone().unwrap();
    let reason = headers.inner().get("x-first-death-reason").cloned();
    assert_eq!(
        reason,
        Some(AMQPValue::LongString("rejected".into())),
        "{headers:?}"
    );
    dead.delivery.ack(BasicAckOptions::default()).await.unwrap();
    connection.close(200, "bye".into()).await.unwrap();
}
