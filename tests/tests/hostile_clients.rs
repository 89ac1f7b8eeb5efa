//! What a hostile client can do to the api: send ambiguous requests, flood it with unknown
//! tokens or probe scrapes, read internals off `/readyz`, hold request slots with a dripping
//! body or megabyte bulk bodies, or strand an idempotency key.

use bson::{DateTime, doc};
use futures::{StreamExt, TryStreamExt};
use refresh_shared::store;
use refresh_shared::store::{IDEMPOTENCY_ABANDONED_AFTER, IdempotencyRecord};
use refresh_tests::{
    Answer, DEADLINE, TestStack,
    proxy::Proxy,
    raw::{Outcome, RawConnection, post_head},
    sample, wait_until,
};
use reqwest::{
    StatusCode,
    header::{self, HeaderMap, HeaderValue},
};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};

fn validation_failed(answer: &Answer, field: &str) {
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{:?}", answer.body);
    assert_eq!(answer.error_code(), 1001, "{:?}", answer.body);
    let details = answer.body["error"]["details"].as_array().expect("details");
    assert!(
        details.iter().any(|d| d["field"] == json!(field)),
        "names {field}: {:?}",
        answer.body
    );
}

#[tokio::test]
async fn ambiguous_requests_are_400_1001() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let url = stack.refresh_url(&stack.org_id(), &device.id.to_hex());
    let raw = |body: &'static str, headers: HeaderMap| {
        let request = stack.http.post(&url).headers(headers).body(body);
        Answer::of(request)
    };
    let bearer = HeaderValue::from_str(&format!("Bearer {}", stack.token)).expect("header");
    let json_headers = || {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, bearer.clone());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers
    };

    // The same key twice, whichever comes last.
    for body in [
        r#"{"info":["bios"],"info":["hardware"]}"#,
        r#"{"info":["hardware"],"info":["bios"]}"#,
        r#"{"info":["hardware"],"info":["hardware"]}"#,
    ] {
        validation_failed(&raw(body, json_headers()).await, "body");
    }
    // Two Authorization headers, the first valid.
    let mut twice = json_headers();
    twice.append(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer someone-else"),
    );
    validation_failed(&raw(r#"{"info":["os"]}"#, twice).await, "Authorization");
    // Two Idempotency-Key headers.
    let mut keys = json_headers();
    keys.append("idempotency-key", HeaderValue::from_static("one"));
    keys.append("idempotency-key", HeaderValue::from_static("two"));
    validation_failed(&raw(r#"{"info":["os"]}"#, keys).await, "Idempotency-Key");
    // A charset JSON does not have.
    let mut utf16 = json_headers();
    utf16.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-16"),
    );
    validation_failed(&raw(r#"{"info":["os"]}"#, utf16).await, "Content-Type");
    // A device key longer than 128 characters.
    let long = stack.refresh_url(&stack.org_id(), &"7".repeat(129));
    let answer = Answer::of(
        stack
            .http
            .post(long)
            .bearer_auth(&stack.token)
            .json(&json!({ "info": ["os"] })),
    )
    .await;
    validation_failed(&answer, "winDeviceId");

    assert!(stack.pushes().await.is_empty(), "nothing was pushed");
    // The unambiguous request is served.
    assert_eq!(
        raw(r#"{"info":["os"]}"#, json_headers()).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn readiness_says_what_is_down_and_nothing_about_where() {
    let (database, mongodb_uri) = Proxy::mongodb().await;
    let stack = TestStack::start_with(&[("MONGODB_URI", mongodb_uri.clone())]).await;
    database.cut();
    for base in [&stack.api, &stack.worker] {
        let answer = wait_until(&format!("{base}/readyz to say 503"), DEADLINE, || async {
            let answer = Answer::of(stack.http.get(format!("{base}/readyz"))).await;
            (answer.status == StatusCode::SERVICE_UNAVAILABLE).then_some(answer)
        })
        .await;
        assert_eq!(
            answer.body["error"]["details"],
            json!([{ "field": "database", "problem": "unavailable" }]),
            "{base}: {:?}",
            answer.body
        );
        let text = answer.body.to_string();
        let port = database.addr.port().to_string();
        assert!(
            !text.contains(&port) && !text.contains("127.0.0.1"),
            "{text}"
        );
    }
    database.restore();
}

#[tokio::test]
async fn unknown_tokens_are_limited_per_address_and_remembered() {
    let (database, mongodb_uri) = Proxy::mongodb().await;
    let stack = TestStack::start_with(&[
        ("MONGODB_URI", mongodb_uri),
        ("AUTH_FAILURE_RATE_LIMIT_PER_SECOND", "1".to_owned()),
        ("AUTH_FAILURE_BURST", "20".to_owned()),
        ("AUTH_CACHE_TTL_MS", "60000".to_owned()),
    ])
    .await;
    let device = stack.device().await;
    let url = stack.refresh_url(&stack.org_id(), &device.id.to_hex());
    let attempt = |token: String| {
        let request = stack
            .http
            .post(&url)
            .bearer_auth(token)
            .json(&json!({ "info": ["os"] }));
        Answer::of(request)
    };

    // An unknown token is remembered: asked again, the database is not (it does not answer).
    let unknown = "unknown-token-0".to_owned();
    assert_eq!(
        attempt(unknown.clone()).await.status,
        StatusCode::UNAUTHORIZED
    );
    database.pause();
    let sent = Instant::now();
    assert_eq!(attempt(unknown).await.status, StatusCode::UNAUTHORIZED);
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    database.resume();

    // Past the allowance, the address is refused before any lookup.
    let mut statuses = Vec::new();
    for n in 1..60 {
        let answer = attempt(format!("unknown-token-{n}")).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            answer.assert_error(StatusCode::TOO_MANY_REQUESTS, 4290, "Too many requests");
            assert!(answer.headers.contains_key(header::RETRY_AFTER));
        }
        statuses.push(answer.status);
    }
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert!(refused >= 30, "{statuses:?}");
    database.pause();
    let sent = Instant::now();
    let answer = attempt("unknown-token-paused".to_owned()).await;
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        answer.body
    );
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "no lookup was waited for"
    );
    database.resume();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_scrapes_reads_the_queue_depths_once() {
    let stack = TestStack::start().await;
    let reads = |page: &str| sample(page, "refresh_queue_depth_reads_total", "").unwrap_or(0.0);
    let before = reads(&stack.metrics(&stack.api).await);
    let pages: Vec<String> = futures::stream::iter(0..200)
        .map(|_| stack.metrics(&stack.api))
        .buffer_unordered(100)
        .collect()
        .await;
    let after = pages.iter().map(|page| reads(page)).fold(before, f64::max);
    assert!(
        after - before <= 2.0,
        "{} reads for 200 scrapes",
        after - before
    );
    assert!(
        pages
            .iter()
            .all(|page| page.contains("refresh_queue_messages_ready{")),
        "every page shows the queues"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dripping_body_frees_its_slot_at_the_request_deadline() {
    let stack = TestStack::start_with(&[
        ("MAX_IN_FLIGHT_REQUESTS", "1".to_owned()),
        ("REQUEST_TIMEOUT_MS", "1000".to_owned()),
        ("BODY_READ_TIMEOUT_MS", "5000".to_owned()),
    ])
    .await;
    let device = stack.device().await;
    let url = stack.refresh_url(&stack.org_id(), &device.id.to_hex());
    let mut dripping = RawConnection::open(&url).await;
    dripping
        .send(post_head(&url, &stack.token, 200).as_bytes())
        .await;
    // One byte every 300 ms: never a stall long enough for BODY_READ_TIMEOUT_MS.
    let drip = tokio::spawn(async move {
        for _ in 0..40 {
            dripping.send(b" ").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        dripping
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answered = wait_until(
        "a request served while the drip goes on",
        Duration::from_secs(4),
        || async {
            let request = stack
                .http
                .post(&url)
                .bearer_auth(&stack.token)
                .json(&json!({ "info": ["os"] }));
            let answer = Answer::of(request).await;
            (answer.status == StatusCode::OK).then_some(answer)
        },
    )
    .await;
    assert_eq!(answered.status, StatusCode::OK);
    assert!(!drip.is_finished(), "the drip was still going on");
    drip.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn bulk_requests_have_their_own_small_limit() {
    let stack = TestStack::start_with(&[("BULK_MAX_IN_FLIGHT", "1".to_owned())]).await;
    let device = stack.device().await;
    let batches = stack.batches_url(&stack.org_id());
    let body = r#"{"info":["os"],"deviceIds":["x"]}"#;
    let (first, rest) = body.split_at(8);
    let mut holding = RawConnection::open(&batches).await;
    holding
        .send(format!("{}{first}", post_head(&batches, &stack.token, body.len())).as_bytes())
        .await;
    let busy = wait_until("a second bulk request refused", DEADLINE, || async {
        let answer = stack
            .bulk(&json!({ "info": ["os"], "deviceIds": [device.id.to_hex()] }))
            .await;
        (answer.status == StatusCode::SERVICE_UNAVAILABLE).then_some(answer)
    })
    .await;
    busy.assert_error(StatusCode::SERVICE_UNAVAILABLE, 5030, "Server busy");
    // Single-device refreshes are not held back by it.
    assert_eq!(
        stack.refresh_device(&device, &["os"]).await.status,
        StatusCode::OK
    );
    holding.send(rest.as_bytes()).await;
    match holding.outcome(DEADLINE).await {
        Outcome::Answered { status, .. } => assert_eq!(status, 202),
        Outcome::Closed => panic!("closed without an answer"),
    }
}

/// A collection's indexes: their keys, and `expireAfterSeconds` for a TTL index.
async fn indexes(collection: &mongodb::Collection<bson::Document>) -> Vec<bson::Document> {
    collection
        .list_indexes()
        .await
        .expect("indexes")
        .map_ok(|index| {
            let mut described = index.keys;
            if let Some(ttl) = index.options.and_then(|options| options.expire_after) {
                let seconds = i64::try_from(ttl.as_secs()).expect("seconds");
                described.insert("expireAfterSeconds", seconds);
            }
            described
        })
        .try_collect()
        .await
        .expect("indexes")
}

#[tokio::test]
async fn idempotency_keys_expire_and_a_key_of_a_vanished_request_is_freed() {
    let stack = TestStack::start_with(&[("REQUEST_TIMEOUT_MS", "1000".to_owned())]).await;
    let keys = stack
        .store
        .database()
        .collection::<bson::Document>("idempotency_keys");
    let ttl = indexes(&keys).await;
    assert!(
        ttl.contains(&doc! { "createdAt": 1, "expireAfterSeconds": 86_400_i64 }),
        "{ttl:?}"
    );

    let device = stack.device().await;
    let url = stack.refresh_url(&stack.org_id(), &device.id.to_hex());
    let with_key = |key: &'static str| {
        let request = stack
            .http
            .post(&url)
            .bearer_auth(&stack.token)
            .header("Idempotency-Key", key)
            .json(&json!({ "info": ["os"] }));
        Answer::of(request)
    };
    // The hash of this very request (path and body), as the api keeps it.
    let path = url::Url::parse(&url).expect("a URL").path().to_owned();
    let request_hash = hex::encode(Sha256::digest(format!("{path}\n{{\"info\":[\"os\"]}}")));
    let held_since = |age: Duration, key: &str| IdempotencyRecord {
        id: format!("{}:{key}", stack.org_id()),
        organization: stack.organization.id,
        request_hash: request_hash.clone(),
        created_at: DateTime::from_millis(
            DateTime::now().timestamp_millis() - i64::try_from(age.as_millis()).expect("ms"),
        ),
        answer: None,
        skipped: Vec::new(),
    };
    // Held by a request that is still within its deadline: 4092.
    let records = stack
        .collection::<store::IdempotencyRecord>(store::IDEMPOTENCY_KEYS)
        .clone();
    records
        .insert_one(held_since(Duration::ZERO, "running"))
        .await
        .expect("insert");
    with_key("running").await.assert_error(
        StatusCode::CONFLICT,
        4092,
        "A request with this idempotency key is still in progress",
    );
    // Held by a request whose api is gone: free again.
    let gone = Duration::from_millis(1_000) + IDEMPOTENCY_ABANDONED_AFTER + Duration::from_secs(1);
    records
        .insert_one(held_since(gone, "vanished"))
        .await
        .expect("insert");
    let answer = with_key("vanished").await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
}

#[tokio::test]
async fn filter_batches_by_state_or_by_nothing_have_an_index_leading_with_the_organization() {
    let stack = TestStack::start().await;
    let devices = stack
        .store
        .database()
        .collection::<bson::Document>("win_devices");
    let indexes = indexes(&devices).await;
    for leading in [["organization", "state"], ["organization", "_id"]] {
        assert!(
            indexes.iter().any(|keys| keys.keys().take(2).eq(leading)),
            "{leading:?}: {indexes:?}"
        );
    }
}
