//! The report-back loop (CONTRACT §5), end to end: a push wakes the device, the device (the
//! sim, through the api's real device route) reports, the worker applies the report; a device
//! that does not report is pushed again, then its categories end `unreported`.

use push_gateway_sim::devices::fixture;
use refresh_shared::{
    Category,
    device::DeviceState,
    job::{CategoryState, JobState},
    report::ReportSource,
    store::{Device, INVENTORY},
    token::{PERMISSION_DEVICE_INFO, PERMISSION_DEVICE_READ},
};
use refresh_tests::{Answer, DEADLINE, TestStack, sample, wait_until};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

/// A report of `category` with `value` for each of its nodes, collected at `at`.
fn report_body(job: Option<&str>, category: Category, value: &str, at: OffsetDateTime) -> Value {
    let nodes: BTreeMap<&str, &str> = category.nodes().map(|uri| (uri, value)).collect();
    json!({
        "jobId": job,
        "collectedAt": rfc3339(at),
        "categories": { category.as_str(): { "nodes": nodes } },
    })
}

/// An active agent device of the stack's organization and its node key.
async fn device_and_key(stack: &TestStack) -> (Device, String) {
    stack
        .device_with_key(stack.organization.id, DeviceState::Active, true, false)
        .await
}

async fn counter(stack: &TestStack, base: &str, name: &str) -> f64 {
    sample(&stack.metrics(base).await, name, "").unwrap_or(0.0)
}

/// Waits until the worker has applied `count` reports in all.
async fn wait_for_reports_applied(stack: &TestStack, count: f64) {
    wait_until("the reports to be applied", DEADLINE, || async {
        (counter(stack, &stack.worker, "refresh_reports_applied_total").await >= count)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_device_that_reports_completes_its_job_and_its_inventory_shows_every_node() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let categories = ["hardware", "applications", "certificates"];
    let (job_id, job) = stack.settled_refresh(&device, &categories).await;
    assert_eq!(job.state(), JobState::Completed, "{job:?}");
    for record in job.categories.values() {
        assert_eq!(record.state, CategoryState::Reported, "{record:?}");
        assert_eq!(record.report_source, Some(ReportSource::Agent));
        assert!(
            record.reported_at.unwrap() >= record.pushed_at.unwrap(),
            "{record:?}"
        );
    }
    let stored = stack
        .store
        .device(stack.organization.id, device.id)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.refresh_info_needed.is_empty(), "{stored:?}");

    let reader = stack.token_with(&[PERMISSION_DEVICE_READ]).await;
    let answer = stack.inventory(&device.id.to_hex(), None, &reader).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let data = &answer.body["data"];
    assert_eq!(data["deviceId"], json!(device.id.to_hex()));
    let reported = data["categories"].as_object().unwrap();
    assert_eq!(reported.len(), 3, "{reported:?}");
    for name in categories {
        let category: Category = name.parse().unwrap();
        let inventory = &reported[name];
        assert_eq!(inventory["source"], json!("agent"));
        assert_eq!(inventory["jobId"], json!(job_id));
        assert!(inventory["reportedAt"].is_string() && inventory["collectedAt"].is_string());
        let nodes = inventory["nodes"].as_object().unwrap();
        assert_eq!(nodes.len(), category.nodes().count(), "{name}: {nodes:?}");
        for uri in category.nodes() {
            assert_eq!(
                nodes[uri],
                json!(fixture(&device.id.to_hex(), uri)),
                "{uri}"
            );
        }
    }
    // By IMEI, one category.
    let imei = device.summary.imei.clone().unwrap();
    let one = stack.inventory(&imei, Some("certificates"), &reader).await;
    assert_eq!(one.status, StatusCode::OK, "{:?}", one.body);
    let keys: Vec<&String> = one.body["data"]["categories"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(keys, ["certificates"]);

    assert!(counter(&stack, &stack.api, "refresh_reports_received_total").await >= 3.0);
    let worker = stack.metrics(&stack.worker).await;
    assert!(sample(&worker, "refresh_reports_applied_total", "").unwrap_or(0.0) >= 3.0);
    assert!(sample(&worker, "refresh_report_latency_seconds_count", "").unwrap_or(0.0) >= 3.0);
}

#[tokio::test]
async fn the_inventory_read_needs_its_permission_and_stays_in_its_tenant() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    stack.settled_refresh(&device, &["os"]).await;
    let id = device.id.to_hex();

    let refresher = stack.token_with(&[PERMISSION_DEVICE_INFO]).await;
    stack.inventory(&id, None, &refresher).await.assert_error(
        StatusCode::FORBIDDEN,
        4003,
        "Forbidden",
    );
    let reader = stack.token_with(&[PERMISSION_DEVICE_READ]).await;
    let bad = stack.inventory(&id, Some("os,disks"), &reader).await;
    bad.assert_error(StatusCode::BAD_REQUEST, 1001, "Validation failed");

    let (other, _) = stack.other_tenant().await;
    let other_reader = stack
        .store
        .create_token(other.id, vec![PERMISSION_DEVICE_READ.to_owned()], None)
        .await
        .unwrap()
        .1;
    let url = format!(
        "{}/v1/organizations/{}/mdm/windows/enterprise/devices/{id}/inventory",
        stack.api,
        other.id.to_hex()
    );
    Answer::of(stack.http.get(url).bearer_auth(&other_reader))
        .await
        .assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
    stack
        .inventory(&id, None, &other_reader)
        .await
        .assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
}

#[tokio::test]
async fn a_device_that_never_reports_is_pushed_again_then_ends_unreported() {
    let stack = TestStack::start_with(&[
        ("REPORT_DEADLINE_SECS", "2".to_owned()),
        ("REPUSH_LIMIT", "1".to_owned()),
    ])
    .await;
    stack.fault(json!({ "mode": "ok", "report": "off" })).await;
    let device = stack.device().await;
    let categories = ["hardware", "os", "security"];
    let (job_id, job) = stack.settled_refresh(&device, &categories).await;
    assert_eq!(job.state(), JobState::Failed, "{job:?}");
    for record in job.categories.values() {
        assert_eq!(record.state, CategoryState::Unreported, "{record:?}");
        assert_eq!(record.attempts, 2, "{record:?}");
        let error = record.last_error.as_deref().unwrap_or_default();
        assert!(error.contains("did not report within 2 s"), "{error}");
    }
    let mut per_category: BTreeMap<String, usize> = BTreeMap::new();
    for push in stack.pushes_for_job(&job_id).await {
        *per_category.entry(push.categories[0].clone()).or_default() += 1;
    }
    assert_eq!(per_category.len(), 3, "{per_category:?}");
    assert!(
        per_category.values().all(|&n| n == 2),
        "exactly 2 pushes each: {per_category:?}"
    );
    // The deadline's repush went on in the refresh's trace.
    let traces = stack.push_trace_ids(&job_id).await;
    assert!(traces.iter().all(|trace| *trace == traces[0]), "{traces:?}");
    let stored = stack
        .store
        .device(stack.organization.id, device.id)
        .await
        .unwrap()
        .unwrap();
    assert!(stored.refresh_info_needed.is_empty(), "{stored:?}");
    let worker = stack.metrics(&stack.worker).await;
    assert_eq!(sample(&worker, "refresh_unreported_total", ""), Some(3.0));
    assert_eq!(sample(&worker, "refresh_repushes_total", ""), Some(3.0));

    // A device that reports some of what it is asked: the job is partial.
    stack
        .fault(json!({ "mode": "ok", "report": "partial" }))
        .await;
    let other = stack.device().await;
    let (_, job) = stack.settled_refresh(&other, &categories).await;
    assert_eq!(job.state(), JobState::Partial, "{job:?}");
    let states: Vec<CategoryState> = job.categories.values().map(|c| c.state).collect();
    let reported = states
        .iter()
        .filter(|s| **s == CategoryState::Reported)
        .count();
    let unreported = states
        .iter()
        .filter(|s| **s == CategoryState::Unreported)
        .count();
    assert_eq!((reported, unreported), (1, 2), "{states:?}");
}

#[tokio::test]
async fn a_node_key_reports_for_its_own_device_only_and_stops_when_revoked() {
    let stack = TestStack::start().await;
    let (device, key) = device_and_key(&stack).await;
    let (other, other_key) = device_and_key(&stack).await;
    let id = device.id.to_hex();
    let body = report_body(None, Category::Os, "v", OffsetDateTime::now_utc());

    stack.report(&id, None, &body).await.assert_error(
        StatusCode::UNAUTHORIZED,
        4002,
        "No auth token",
    );
    let unknown = format!("dnk_{}", "ab".repeat(32));
    stack.report(&id, Some(&unknown), &body).await.assert_error(
        StatusCode::UNAUTHORIZED,
        4001,
        "Unauthorized",
    );
    stack
        .report(&id, Some(&other_key), &body)
        .await
        .assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
    // An API token is not a node key.
    stack
        .report(&id, Some(&stack.token), &body)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, 4001, "Unauthorized");

    // Rotated: the old key stops, the new one reports.
    let rotated = stack
        .refreshctl(&["device", "node-key", "rotate", "--device", &id])
        .await;
    let new_key = rotated["nodeKey"].as_str().unwrap().to_owned();
    stack.report(&id, Some(&key), &body).await.assert_error(
        StatusCode::UNAUTHORIZED,
        4001,
        "Unauthorized",
    );
    let accepted = stack.report(&id, Some(&new_key), &body).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{:?}", accepted.body);
    assert_eq!(
        accepted.body,
        json!({ "status": true, "data": { "accepted": ["os"] } })
    );

    let revoked = stack
        .refreshctl(&["device", "node-key", "revoke", "--device", &id])
        .await;
    assert_eq!(revoked["revoked"], json!(true));
    stack.report(&id, Some(&new_key), &body).await.assert_error(
        StatusCode::UNAUTHORIZED,
        4001,
        "Unauthorized",
    );

    // Only the one accepted report was applied, to its own device.
    wait_for_reports_applied(&stack, 1.0).await;
    let inventory = stack.collection::<bson::Document>(INVENTORY);
    assert_eq!(inventory.count_documents(bson::doc! {}).await.unwrap(), 1);
    assert_eq!(
        inventory
            .count_documents(bson::doc! { "device": other.id })
            .await
            .unwrap(),
        0
    );
    let stored = stack.store.device_by_id(device.id).await.unwrap().unwrap();
    assert!(stored.node_key.is_none(), "revoked: {stored:?}");
}

#[tokio::test]
async fn malformed_reports_are_400_and_an_oversized_one_413_never_5xx() {
    let stack = TestStack::start_with(&[("REPORT_BODY_LIMIT_BYTES", "200000".to_owned())]).await;
    let (device, key) = device_and_key(&stack).await;
    let url = format!(
        "{}/v1/agent/windows/devices/{}/reports",
        stack.devices,
        device.id.to_hex()
    );
    let now = rfc3339(OffsetDateTime::now_utc());
    let tomorrow = rfc3339(OffsetDateTime::now_utc() + time::Duration::days(1));
    let os =
        |nodes: Value| json!({ "collectedAt": now, "categories": { "os": { "nodes": nodes } } });
    let long_uri = format!("./{}", "a".repeat(600));
    let bodies: Vec<String> = vec![
        "not json".into(),
        "[]".into(),
        "".into(),
        json!({ "categories": { "os": { "nodes": {} } } }).to_string(),
        json!({ "collectedAt": "yesterday", "categories": { "os": { "nodes": {} } } }).to_string(),
        json!({ "collectedAt": tomorrow, "categories": { "os": { "nodes": {} } } }).to_string(),
        json!({ "collectedAt": now, "categories": {} }).to_string(),
        json!({ "collectedAt": now, "categories": { "disks": { "nodes": {} } } }).to_string(),
        json!({ "collectedAt": now, "categories": "os" }).to_string(),
        json!({ "collectedAt": now, "categories": { "os": { "nodes": [] } } }).to_string(),
        json!({ "collectedAt": now, "categories": { "os": { "values": {} } } }).to_string(),
        os(json!({ "./DevDetail/SwV": 10 })).to_string(),
        os(json!({ "DevDetail/SwV": "10" })).to_string(),
        os(json!({ long_uri: "x" })).to_string(),
        os(json!({ "./DevDetail/SwV": "v".repeat(70 * 1024) })).to_string(),
        json!({ "collectedAt": now, "categories": { "os": { "nodes": {}, "errors": [] } } })
            .to_string(),
        json!({ "jobId": "123", "collectedAt": now, "categories": { "os": { "nodes": {} } } })
            .to_string(),
        json!({ "collectedAt": now, "categories": { "os": { "nodes": {} } }, "extra": 1 })
            .to_string(),
        format!(
            r#"{{"collectedAt":"{now}","collectedAt":"{now}","categories":{{"os":{{"nodes":{{}}}}}}}}"#
        ),
        json!({ "jobId": 7, "collectedAt": now, "categories": { "os": { "nodes": {} } } })
            .to_string(),
    ];
    assert_eq!(bodies.len(), 20);
    for body in &bodies {
        let request = stack
            .http
            .post(&url)
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body.clone());
        let answer = Answer::of(request).await;
        assert_eq!(
            (answer.status, answer.error_code()),
            (StatusCode::BAD_REQUEST, 1001),
            "{}: {:?}",
            &body[..body.len().min(80)],
            answer.body
        );
    }
    let wrong_type = stack
        .http
        .post(&url)
        .bearer_auth(&key)
        .header("content-type", "text/plain")
        .body(os(json!({})).to_string());
    assert_eq!(Answer::of(wrong_type).await.error_code(), 1001);
    let huge = os(
        json!({ "./a": "v".repeat(60_000), "./b": "v".repeat(60_000), "./c": "v".repeat(60_000), "./d": "v".repeat(60_000) }),
    );
    stack
        .report(&device.id.to_hex(), Some(&key), &huge)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, 1002, "Payload too large");
    stack
        .report("not-an-id", Some(&key), &os(json!({})))
        .await
        .assert_error(StatusCode::BAD_REQUEST, 1001, "Validation failed");
    assert_eq!(
        stack
            .collection::<bson::Document>(INVENTORY)
            .count_documents(bson::doc! {})
            .await
            .unwrap(),
        0,
        "nothing applied"
    );
}

#[tokio::test]
async fn a_report_for_another_organizations_job_changes_nothing_there() {
    let stack = TestStack::start().await;
    // The other tenant's device does not report by itself: its job waits, pushed.
    stack.fault(json!({ "mode": "ok", "report": "off" })).await;
    let (other, other_token) = stack.other_tenant().await;
    let theirs = stack
        .device_in(other.id, DeviceState::Active, true, false)
        .await;
    let request = stack
        .http
        .post(stack.refresh_url(&other.id.to_hex(), &theirs.id.to_hex()))
        .bearer_auth(&other_token)
        .json(&json!({ "info": ["os"] }));
    let their_job = Answer::of(request).await.job_id();
    stack.wait_for_pushed_job(&their_job).await;

    let (mine, key) = device_and_key(&stack).await;
    let body = report_body(
        Some(&their_job),
        Category::Os,
        "forged",
        OffsetDateTime::now_utc(),
    );
    let answer = stack.report(&mine.id.to_hex(), Some(&key), &body).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
    wait_for_reports_applied(&stack, 1.0).await;

    let job = stack.job(&their_job).await;
    assert_eq!(
        job.categories[&Category::Os].state,
        CategoryState::Pushed,
        "{job:?}"
    );
    let inventory = stack.collection::<bson::Document>(INVENTORY);
    assert_eq!(
        inventory
            .count_documents(bson::doc! { "device": theirs.id })
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        inventory
            .count_documents(
                bson::doc! { "device": mine.id, "organization": stack.organization.id }
            )
            .await
            .unwrap(),
        1,
        "the report counts for the reporting device, in its own organization"
    );
}

#[tokio::test]
async fn a_report_applies_once_and_an_older_one_never_overwrites_a_newer() {
    let stack = TestStack::start().await;
    stack.fault(json!({ "mode": "ok", "report": "off" })).await;
    let (device, key) = device_and_key(&stack).await;
    let id = device.id.to_hex();
    let (job_id, _) = stack.pushed_refresh(&device, &["os"]).await;
    let reader = stack.token_with(&[PERMISSION_DEVICE_READ]).await;
    let os_value = |answer: &Answer| {
        answer.body["data"]["categories"]["os"]["nodes"]["./DevDetail/SwV"].clone()
    };

    let at = OffsetDateTime::now_utc() - time::Duration::minutes(10);
    let newer = report_body(Some(&job_id), Category::Os, "newer", at);
    assert_eq!(
        stack.report(&id, Some(&key), &newer).await.status,
        StatusCode::ACCEPTED
    );
    let job = stack.wait_for_settled_job(&job_id).await;
    let reported_at = job.categories[&Category::Os].reported_at;
    assert_eq!(job.state(), JobState::Completed);
    let first = stack.inventory(&id, None, &reader).await;
    assert_eq!(os_value(&first), json!("newer"));

    // The same report again (a device retrying, or a redelivery): applied, changing nothing.
    assert_eq!(
        stack.report(&id, Some(&key), &newer).await.status,
        StatusCode::ACCEPTED
    );
    let older = report_body(None, Category::Os, "older", at - time::Duration::minutes(5));
    assert_eq!(
        stack.report(&id, Some(&key), &older).await.status,
        StatusCode::ACCEPTED
    );
    wait_for_reports_applied(&stack, 3.0).await;
    let after = stack.inventory(&id, None, &reader).await;
    assert_eq!(
        after.body, first.body,
        "neither the repeat nor the older report wrote"
    );
    let job = stack.job(&job_id).await;
    assert_eq!(job.categories[&Category::Os].reported_at, reported_at);

    // A newer one without a job: the inventory moves on, no job is touched.
    let latest = report_body(None, Category::Os, "latest", OffsetDateTime::now_utc());
    assert_eq!(
        stack.report(&id, Some(&key), &latest).await.status,
        StatusCode::ACCEPTED
    );
    // Waited for by its value: the applied-reports counter is this test process's, which the
    // other tests of the file share, so a count can be reached before this report is applied.
    let now = wait_until("the newer report in the inventory", DEADLINE, || async {
        let now = stack.inventory(&id, None, &reader).await;
        (os_value(&now) == json!("latest")).then_some(now)
    })
    .await;
    assert!(now.body["data"]["categories"]["os"]["jobId"].is_null());
    assert_eq!(
        stack.job(&job_id).await.categories[&Category::Os].reported_at,
        reported_at
    );
}

#[tokio::test]
async fn a_device_over_its_report_rate_is_429() {
    let stack = TestStack::start_with(&[
        ("DEVICE_RATE_LIMIT_PER_SECOND", "1".to_owned()),
        ("DEVICE_RATE_LIMIT_BURST", "2".to_owned()),
    ])
    .await;
    let (device, key) = device_and_key(&stack).await;
    let (other, other_key) = device_and_key(&stack).await;
    let body = report_body(None, Category::Os, "v", OffsetDateTime::now_utc());
    let id = device.id.to_hex();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(stack.report(&id, Some(&key), &body).await.status);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::ACCEPTED,
            StatusCode::ACCEPTED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let limited = stack.report(&device.id.to_hex(), Some(&key), &body).await;
    limited.assert_error(StatusCode::TOO_MANY_REQUESTS, 4290, "Too many requests");
    assert!(limited.headers.contains_key("retry-after"));
    // Another device is not held back.
    let answer = stack
        .report(&other.id.to_hex(), Some(&other_key), &body)
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_poison_report_message_is_dead_lettered_with_its_reason() {
    use lapin::{BasicProperties, options::BasicPublishOptions};

    let stack = TestStack::start().await;
    let topology = refresh_shared::broker::Topology::new(&stack.settings.core.amqp);
    let connection =
        refresh_shared::broker::connect(&stack.settings.core.amqp.url, "refresh-tests")
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            topology.reports_queue().as_str().into(),
            BasicPublishOptions::default(),
            b"{\"version\":1,\"categories\":\"all of them\"}",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let listed = wait_until("the dead letter", DEADLINE, || async {
        let listed = stack.refreshctl(&["dead-letters", "list"]).await;
        (listed["deadLetters"].as_array()?.len() == 1).then_some(listed)
    })
    .await;
    let letter = &listed["deadLetters"][0];
    assert_eq!(letter["reason"], json!("rejected"));
    assert_eq!(letter["queue"], json!(topology.reports_queue()));
    connection.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn reports_are_served_over_tls_when_a_certificate_is_configured() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("refresh-tls-{}", bson::oid::ObjectId::new()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let stack = TestStack::start_with(&[
        ("DEVICE_TLS_CERT", cert.display().to_string()),
        ("DEVICE_TLS_KEY", key.display().to_string()),
    ])
    .await;
    let (device, node_key) = device_and_key(&stack).await;
    let port = stack.devices.rsplit(':').next().unwrap().to_owned();
    let path = format!("/v1/agent/windows/devices/{}/reports", device.id.to_hex());
    let body = report_body(None, Category::Os, "over tls", OffsetDateTime::now_utc());

    let trusting = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let request = trusting
        .post(format!("https://localhost:{port}{path}"))
        .bearer_auth(&node_key)
        .json(&body);
    let answer = Answer::of(request).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
    wait_for_reports_applied(&stack, 1.0).await;

    // Plain HTTP to the TLS listener gets no answer it could take for one.
    let plain = stack
        .http
        .post(format!("http://localhost:{port}{path}"))
        .json(&body)
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP was served"
    );
    std::fs::remove_dir_all(&dir).ok();
}
