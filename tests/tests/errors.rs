//! The contract's error table (§2), one test per row, plus its order of checks. Every answer
//! must be the envelope `{"status":false,"error":{"code":N,"message":"…"}}`.

use bson::{DateTime, doc};
use refresh_shared::{device::DeviceState, token::PERMISSION_DEVICE_INFO};
use refresh_tests::{Answer, DEADLINE, TestStack, wait_until};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};
use std::time::{Duration, Instant};

fn hardware() -> Value {
    json!({ "info": ["hardware"] })
}

#[tokio::test]
async fn no_token_is_401_4002() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let url = stack.refresh_url(&stack.org_id(), &device.id.to_hex());
    for authorization in [None, Some("Bearer"), Some("Bearer "), Some("bearer    ")] {
        let mut request = stack.http.post(&url).json(&hardware());
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let answer = Answer::of(request).await;
        answer.assert_error(StatusCode::UNAUTHORIZED, 4002, "No auth token");
    }
}

/// Sends refreshes with `token` until one is refused; returns when the last accepted one was
/// sent. Fails if the token is still accepted 5 s after `since`.
async fn last_accepted(stack: &TestStack, url: &str, token: &str, since: Instant) -> Instant {
    let mut last = since;
    loop {
        let sent = Instant::now();
        let request = stack.http.post(url).bearer_auth(token).json(&hardware());
        let answer = Answer::of(request).await;
        if answer.status == StatusCode::UNAUTHORIZED {
            answer.assert_error(StatusCode::UNAUTHORIZED, 4001, "Unauthorized");
            return last;
        }
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        last = sent;
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "still accepted after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The api caches tokens; expiry and revocation must still bite within a second. The revocation
/// here is written straight to the database, announcing nothing, so only the cache's own
/// bound can end it.
#[tokio::test]
async fn expiry_and_an_unannounced_revocation_bite_within_a_second_despite_the_cache() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let url = stack.refresh_url(&stack.org_id(), &device.id.to_hex());
    let permissions = || vec![PERMISSION_DEVICE_INFO.to_owned()];
    let expiry = Duration::from_millis(2_500);
    let expires_at = DateTime::from_millis(DateTime::now().timestamp_millis() + 2_500);
    let issued = Instant::now();
    let organization = stack.organization.id;
    let (_, expiring) = stack
        .store
        .create_token(organization, permissions(), Some(expires_at))
        .await
        .unwrap();
    let (revoked, revoked_token) = stack
        .store
        .create_token(organization, permissions(), None)
        .await
        .unwrap();
    for token in [&expiring, &revoked_token] {
        let answer = Answer::of(stack.http.post(&url).bearer_auth(token).json(&hardware())).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }

    let revoked_at = Instant::now();
    assert!(
        stack
            .store
            .revoke_token(organization, revoked.id)
            .await
            .unwrap()
    );
    let last = last_accepted(&stack, &url, &revoked_token, revoked_at).await;
    let accepted_for = last - revoked_at;
    assert!(
        accepted_for < Duration::from_secs(1),
        "accepted {accepted_for:?} after its revocation"
    );

    let last = last_accepted(&stack, &url, &expiring, issued).await;
    let past_expiry = last.saturating_duration_since(issued + expiry);
    assert!(
        past_expiry < Duration::from_secs(1),
        "accepted {past_expiry:?} past its expiry"
    );
}

#[tokio::test]
async fn unknown_revoked_expired_or_malformed_tokens_are_401_4001() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let url = stack.refresh_url(&stack.org_id(), &device.id.to_hex());

    let (revoked, revoked_token) = stack
        .store
        .create_token(
            stack.organization.id,
            vec![PERMISSION_DEVICE_INFO.to_owned()],
            None,
        )
        .await
        .unwrap();
    assert!(
        stack
            .store
            .revoke_token(stack.organization.id, revoked.id)
            .await
            .unwrap()
    );
    let expired_at = DateTime::from_millis(DateTime::now().timestamp_millis() - 1_000);
    let (_, expired_token) = stack
        .store
        .create_token(
            stack.organization.id,
            vec![PERMISSION_DEVICE_INFO.to_owned()],
            Some(expired_at),
        )
        .await
        .unwrap();

    let headers = [
        "Bearer drt_0000000000000000000000000000000000000000000000000000000000000000".to_owned(),
        format!("Bearer {revoked_token}"),
        format!("Bearer {expired_token}"),
        format!("Basic {}", stack.token),
        stack.token.clone(),
        format!("Bearer {} extra", stack.token),
    ];
    for authorization in headers {
        let request = stack
            .http
            .post(&url)
            .header(header::AUTHORIZATION, &authorization)
            .json(&hardware());
        let answer = Answer::of(request).await;
        answer.assert_error(StatusCode::UNAUTHORIZED, 4001, "Unauthorized");
    }
}

#[tokio::test]
async fn a_token_without_the_permission_is_403_4003() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let token = stack.token_with(&["mdm.windows.device.read"]).await;
    let request = stack
        .http
        .post(stack.refresh_url(&stack.org_id(), &device.id.to_hex()))
        .bearer_auth(&token)
        .json(&hardware());
    Answer::of(request)
        .await
        .assert_error(StatusCode::FORBIDDEN, 4003, "Forbidden");
    let request = stack
        .http
        .get(stack.job_url(&stack.org_id(), &device.id.to_hex()))
        .bearer_auth(&token);
    Answer::of(request)
        .await
        .assert_error(StatusCode::FORBIDDEN, 4003, "Forbidden");
}

#[tokio::test]
async fn invalid_input_is_400_1001_with_details() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let org = stack.org_id();
    let id = device.id.to_hex();
    let json = "application/json";
    // (organizationId, winDeviceId, content type, body, the field named in details)
    let cases: &[(&str, &str, Option<&str>, &str, &str)] = &[
        (
            "ab",
            &id,
            Some(json),
            r#"{"info":["hardware"]}"#,
            "organizationId",
        ),
        (
            "acme_corp",
            &id,
            Some(json),
            r#"{"info":["hardware"]}"#,
            "organizationId",
        ),
        (
            &org,
            "a-b",
            Some(json),
            r#"{"info":["hardware"]}"#,
            "winDeviceId",
        ),
        (
            &org,
            "a%20b",
            Some(json),
            r#"{"info":["hardware"]}"#,
            "winDeviceId",
        ),
        (&org, &id, Some(json), r#"{"info":["hardware"]"#, "body"),
        (&org, &id, Some(json), "", "body"),
        (&org, &id, Some(json), r#"["hardware"]"#, "body"),
        (
            &org,
            &id,
            Some("text/plain"),
            r#"{"info":["hardware"]}"#,
            "Content-Type",
        ),
        (&org, &id, None, r#"{"info":["hardware"]}"#, "Content-Type"),
        (&org, &id, Some(json), r#"{}"#, "info"),
        (&org, &id, Some(json), r#"{"info":"hardware"}"#, "info"),
        (&org, &id, Some(json), r#"{"info":null}"#, "info"),
        (&org, &id, Some(json), r#"{"info":[]}"#, "info"),
        (
            &org,
            &id,
            Some(json),
            r#"{"info":["hardware",7]}"#,
            "info[1]",
        ),
        (&org, &id, Some(json), r#"{"info":["bios"]}"#, "info[0]"),
        (&org, &id, Some(json), r#"{"info":["Hardware"]}"#, "info[0]"),
        (
            &org,
            &id,
            Some(json),
            r#"{"info":["hardware"],"force":true}"#,
            "force",
        ),
    ];
    for (organization, device, content_type, body, field) in cases {
        let mut request = stack
            .http
            .post(stack.refresh_url(organization, device))
            .bearer_auth(&stack.token)
            .body(body.to_string());
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, *content_type);
        }
        let answer = Answer::of(request).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{field}: {:?}",
            answer.body
        );
        assert_eq!(answer.error_code(), 1001);
        assert_eq!(answer.body["error"]["message"], json!("Validation failed"));
        let details = answer.body["error"]["details"].as_array().expect("details");
        assert!(
            details
                .iter()
                .any(|d| d["field"] == json!(field) && d["problem"].is_string()),
            "{field}: {details:?}"
        );
    }
    let bad_job_id = Answer::of(
        stack
            .http
            .get(stack.job_url(&org, "not-a-job"))
            .bearer_auth(&stack.token),
    )
    .await;
    assert_eq!(bad_job_id.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        bad_job_id.body["error"]["details"][0]["field"],
        json!("jobId")
    );
    assert!(
        stack.pushes().await.is_empty(),
        "nothing invalid reaches a device"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_1002() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let padding = "x".repeat(16 * 1024);
    let body = format!(r#"{{"info":["hardware"],"pad":"{padding}"}}"#);
    let request = stack
        .http
        .post(stack.refresh_url(&stack.org_id(), &device.id.to_hex()))
        .bearer_auth(&stack.token)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body);
    Answer::of(request).await.assert_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        1002,
        "Payload too large",
    );
}

#[tokio::test]
async fn unknown_foreign_or_deleted_entities_are_404_3001() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let other_org = stack
        .store
        .create_organization(&format!("other-{}", bson::oid::ObjectId::new()), "Other")
        .await
        .unwrap();
    let foreign = stack
        .device_in(other_org.id, DeviceState::Active, true, true)
        .await;
    let deleted = stack.device_with(DeviceState::Deleted, true, true).await;
    let delete_requested = stack
        .device_with(DeviceState::DeleteRequested, true, true)
        .await;
    let id = device.id.to_hex();
    let cases = [
        // an organization that does not exist, by id and by slug
        (bson::oid::ObjectId::new().to_hex(), id.clone()),
        ("no-such-org".to_owned(), id.clone()),
        // another organization that does exist, by id and by slug
        (other_org.id.to_hex(), id.clone()),
        (other_org.slug.clone(), foreign.id.to_hex()),
        // devices that do not exist, or not in this organization, or are deleted
        (stack.org_id(), bson::oid::ObjectId::new().to_hex()),
        (stack.org_id(), "SN_DOES_NOT_EXIST".to_owned()),
        (stack.org_id(), foreign.id.to_hex()),
        (stack.org_id(), foreign.summary.imei.clone().unwrap()),
        (
            stack.org_id(),
            foreign.summary.serial_number.clone().unwrap(),
        ),
        (stack.org_id(), deleted.id.to_hex()),
        (
            stack.org_id(),
            delete_requested.summary.serial_number.clone().unwrap(),
        ),
    ];
    for (organization, device) in cases {
        let answer = stack.refresh(&organization, &device, &hardware()).await;
        answer.assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
    }
    let unknown_job = Answer::of(
        stack
            .http
            .get(stack.job_url(&stack.org_id(), &id))
            .bearer_auth(&stack.token),
    )
    .await;
    unknown_job.assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
    assert!(stack.pushes().await.is_empty());
}

#[tokio::test]
async fn devices_not_yet_active_are_409_3002() {
    let stack = TestStack::start().await;
    for state in [DeviceState::Provisioning, DeviceState::Unknown] {
        let device = stack.device_with(state, true, true).await;
        let answer = stack
            .refresh(&stack.org_id(), &device.id.to_hex(), &hardware())
            .await;
        answer.assert_error(StatusCode::CONFLICT, 3002, "Device not active");
    }
}

/// Requests a second (and at once) an organization may make in the flood test.
const ORG_LIMIT: usize = 5;

#[tokio::test]
async fn too_many_requests_per_token_are_429_4290_with_retry_after() {
    let stack = TestStack::start_with(&[
        ("RATE_LIMIT_PER_SECOND", "1".to_owned()),
        ("RATE_LIMIT_BURST", "2".to_owned()),
    ])
    .await;
    let device = stack.device().await;
    let statuses = {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(
                stack
                    .refresh(&stack.org_id(), &device.id.to_hex(), &hardware())
                    .await,
            );
        }
        statuses
    };
    assert_eq!(statuses[0].status, StatusCode::OK);
    assert_eq!(statuses[1].status, StatusCode::OK);
    let rate_headers = |answer: &Answer| -> [u64; 3] {
        ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"].map(|name| {
            answer.headers[name]
                .to_str()
                .unwrap()
                .parse()
                .unwrap_or_else(|_| panic!("{name}"))
        })
    };
    assert_eq!(rate_headers(&statuses[0])[..2], [2, 1]);
    assert_eq!(rate_headers(&statuses[1])[..2], [2, 0]);
    let limited = &statuses[2];
    let [limit, remaining, reset] = rate_headers(limited);
    assert_eq!((limit, remaining), (2, 0));
    assert!((1..=2).contains(&reset), "{reset}");
    limited.assert_error(StatusCode::TOO_MANY_REQUESTS, 4290, "Too many requests");
    let retry_after: u64 = limited.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");

    // The limit is per token: another token of the same organization is not slowed down.
    let other = stack.token_with(&[PERMISSION_DEVICE_INFO]).await;
    let request = stack
        .http
        .post(stack.refresh_url(&stack.org_id(), &device.id.to_hex()))
        .bearer_auth(other)
        .json(&hardware());
    assert_eq!(Answer::of(request).await.status, StatusCode::OK);
}

/// The organization's limit counts all its tokens together, and a tenant held at its limit
/// does not hold back another tenant.
///
/// Paced by events, not by the clock: the flood runs until it has been limited and the other
/// tenant has been served 10 times while it was, however slowly this machine answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_tenant_is_limited_as_a_whole_and_another_tenant_is_served() {
    // The organization's limit is low enough that eight callers exceed it on any machine: each
    // admitted refresh waits for the database, so on a slow one (the Python SecantusDB, a debug
    // build) the flood's own pace can stay under 20 a second and never be limited.
    let stack = TestStack::start_with(&[
        ("RATE_LIMIT_PER_SECOND", "1000".to_owned()),
        ("RATE_LIMIT_BURST", "1000".to_owned()),
        ("ORG_RATE_LIMIT_PER_SECOND", ORG_LIMIT.to_string()),
        ("ORG_RATE_LIMIT_BURST", ORG_LIMIT.to_string()),
    ])
    .await;
    let flooded_device = stack.device().await;
    let flood_url = stack.refresh_url(&stack.org_id(), &flooded_device.id.to_hex());
    let mut flood_tokens = Vec::new();
    for _ in 0..8 {
        flood_tokens.push(stack.token_with(&[PERMISSION_DEVICE_INFO]).await);
    }
    let (other, other_token) = stack.other_tenant().await;
    let other_device = stack
        .device_in(other.id, DeviceState::Active, true, false)
        .await;
    let other_url = stack.refresh_url(&other.id.to_hex(), &other_device.id.to_hex());

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let limited_once = Arc::new(AtomicBool::new(false));
    let floods: Vec<_> = flood_tokens
        .into_iter()
        .map(|token| {
            let (http, url) = (stack.http.clone(), flood_url.clone());
            let (stop, limited_once) = (stop.clone(), limited_once.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < DEADLINE {
                    let request = http.post(&url).bearer_auth(&token).json(&hardware());
                    let answer = Answer::of(request).await;
                    if answer.status == StatusCode::TOO_MANY_REQUESTS {
                        limited_once.store(true, Ordering::Relaxed);
                    }
                    answers.push(answer);
                }
                answers
            })
        })
        .collect();
    wait_until("the flood is limited", DEADLINE, || async {
        limited_once.load(Ordering::Relaxed).then_some(())
    })
    .await;
    let mut served = Vec::new();
    // Within the other organization's own burst: each must be admitted.
    for _ in 0..ORG_LIMIT {
        let sent = Instant::now();
        let request = stack
            .http
            .post(&other_url)
            .bearer_auth(&other_token)
            .json(&hardware());
        let answer = Answer::of(request).await;
        served.push((answer.status, sent.elapsed()));
    }
    stop.store(true, Ordering::Relaxed);
    let mut flood_answers = Vec::new();
    for flood in floods {
        flood_answers.extend(flood.await.unwrap());
    }
    let flooded_for = started.elapsed();

    let accepted = flood_answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .count();
    let limited: Vec<&Answer> = flood_answers
        .iter()
        .filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(
        accepted + limited.len(),
        flood_answers.len(),
        "only 200 or 429"
    );
    // The burst plus the rate for as long as the flood ran, whatever the number of tokens (and
    // some slack for the refill while the first requests were in flight).
    let allowed = ORG_LIMIT + (ORG_LIMIT as f64 * flooded_for.as_secs_f64()).ceil() as usize + 5;
    assert!(
        accepted <= allowed,
        "{accepted} accepted in {flooded_for:?}, at most {allowed} allowed"
    );
    for answer in &limited {
        answer.assert_error(StatusCode::TOO_MANY_REQUESTS, 4290, "Too many requests");
        assert_eq!(answer.headers["ratelimit-limit"], ORG_LIMIT.to_string());
        assert_eq!(answer.headers["ratelimit-remaining"], "0");
    }
    for (status, took) in &served {
        assert_eq!(
            *status,
            StatusCode::OK,
            "the other tenant was refused: {served:?}"
        );
        assert!(
            *took < Duration::from_secs(1),
            "the other tenant waited {took:?}"
        );
    }
}

#[tokio::test]
async fn an_unexpected_failure_is_500_5000_without_internals() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    // A document another system wrote in a shape this service cannot read.
    stack
        .store
        .database()
        .collection::<bson::Document>("win_devices")
        .update_one(doc! { "_id": device.id }, doc! { "$set": { "state": 42 } })
        .await
        .unwrap();
    let answer = stack
        .refresh(&stack.org_id(), &device.id.to_hex(), &hardware())
        .await;
    answer.assert_error(StatusCode::INTERNAL_SERVER_ERROR, 5000, "Internal error");
    let text = answer.body.to_string();
    for internal in ["state", "bson", "mongo", "invalid type"] {
        assert!(!text.to_lowercase().contains(internal), "{text}");
    }
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_in_the_envelope() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let unknown = Answer::of(stack.http.get(format!("{}/v2/nothing", stack.api))).await;
    unknown.assert_error(StatusCode::NOT_FOUND, 4040, "Route not found");
    let wrong_method = Answer::of(
        stack
            .http
            .get(stack.refresh_url(&stack.org_id(), &device.id.to_hex()))
            .bearer_auth(&stack.token),
    )
    .await;
    wrong_method.assert_error(StatusCode::METHOD_NOT_ALLOWED, 4050, "Method not allowed");
}

#[tokio::test]
async fn checks_run_in_the_contract_order() {
    let stack = TestStack::start().await;
    let no_such_device = bson::oid::ObjectId::new().to_hex();
    let garbage = "{not json";
    let post = |token: Option<String>, organization: &str, device: &str, body: &str| {
        let mut request = stack
            .http
            .post(stack.refresh_url(organization, device))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_owned());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Answer::of(request)
    };
    // authentication before permission, validation and lookups
    let answer = post(None, "x", "a-b", garbage).await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::UNAUTHORIZED, 4002)
    );
    let answer = post(Some("drt_unknown".to_owned()), "x", "a-b", garbage).await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::UNAUTHORIZED, 4001)
    );
    // permission before validation and lookups
    let weak = stack.token_with(&["something.else"]).await;
    let answer = post(Some(weak), "x", "a-b", garbage).await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::FORBIDDEN, 4003)
    );
    // validation before lookups
    let answer = post(
        Some(stack.token.clone()),
        &stack.org_id(),
        &no_such_device,
        garbage,
    )
    .await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::BAD_REQUEST, 1001)
    );
    // and only then the lookups
    let answer = post(
        Some(stack.token.clone()),
        &stack.org_id(),
        &no_such_device,
        r#"{"info":["os"]}"#,
    )
    .await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::NOT_FOUND, 3001)
    );
}

#[tokio::test]
async fn a_token_of_another_organization_can_neither_refresh_nor_read_this_ones_devices_or_jobs() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let job_id = stack
        .refresh(&stack.org_id(), &device.id.to_hex(), &hardware())
        .await
        .job_id();
    stack.wait_for_settled_job(&job_id).await;
    let pushes_before = stack.pushes().await.len();

    let (other, other_token) = stack.other_tenant().await;
    let organizations = [
        stack.org_id(),
        stack.organization.slug.clone(),
        other.id.to_hex(),
        other.slug.clone(),
    ];
    let device_keys = [
        device.id.to_hex(),
        device.summary.imei.clone().unwrap(),
        device.summary.serial_number.clone().unwrap(),
    ];
    for organization in &organizations {
        for key in &device_keys {
            let request = stack
                .http
                .post(stack.refresh_url(organization, key))
                .bearer_auth(&other_token)
                .json(&hardware());
            let answer = Answer::of(request).await;
            answer.assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
        }
        let request = stack
            .http
            .get(stack.job_url(organization, &job_id))
            .bearer_auth(&other_token);
        Answer::of(request)
            .await
            .assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
    }
    assert_eq!(
        stack.pushes().await.len(),
        pushes_before,
        "nothing reached the device"
    );

    // The batch routes: this organization's batch cannot be read, and a batch of the other
    // organization naming this one's device (by id, IMEI or serial) or matching its tags
    // finds nothing.
    let batch_id = stack
        .bulk(&json!({ "info": ["os"], "deviceIds": [device.id.to_hex()] }))
        .await
        .batch_id();
    stack.wait_for_batch(&batch_id, DEADLINE).await;
    let pushes_before = stack.pushes().await.len();
    for organization in &organizations {
        let url = format!("{}/{batch_id}", stack.batches_url(organization));
        let answer = Answer::of(stack.http.get(url).bearer_auth(&other_token)).await;
        answer.assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
    }
    for organization in [stack.org_id(), stack.organization.slug.clone()] {
        let request = stack
            .http
            .post(stack.batches_url(&organization))
            .bearer_auth(&other_token)
            .json(&json!({ "info": ["os"], "deviceIds": [device.id.to_hex()] }));
        let answer = Answer::of(request).await;
        answer.assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
    }
    let foreign_bodies = [
        json!({ "info": ["os"], "deviceIds": device_keys }),
        json!({ "info": ["os"], "filter": { "state": "ACTIVE" } }),
    ];
    for body in foreign_bodies {
        let request = stack
            .http
            .post(stack.batches_url(&other.id.to_hex()))
            .bearer_auth(&other_token)
            .json(&body);
        let answer = Answer::of(request).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
        let url = format!(
            "{}/{}",
            stack.batches_url(&other.id.to_hex()),
            answer.batch_id()
        );
        let view = wait_until("the other tenant's batch to finish", DEADLINE, || async {
            let answer = Answer::of(stack.http.get(&url).bearer_auth(&other_token)).await;
            let data = answer.body["data"].clone();
            (data["state"] == json!("completed")).then_some(data)
        })
        .await;
        let expected = if body.get("filter").is_some() { 0 } else { 3 };
        assert_eq!(view["total"], json!(expected), "{view}");
        assert_eq!(
            view["counts"]["skipped"]["notFound"],
            json!(expected),
            "{view}"
        );
        assert_eq!(view["counts"]["reported"], json!(0), "{view}");
    }
    assert_eq!(
        stack.pushes().await.len(),
        pushes_before,
        "nothing reached the device"
    );
}
