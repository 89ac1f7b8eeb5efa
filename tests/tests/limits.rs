//! What one client may cost the api: header size, a stalled body, requests in flight, a slow or
//! idle connection, connections at once, and how long a caller waits. Each refusal is an answer
//! in the envelope, except where there is no request yet to answer (a connection that never
//! finishes its headers is closed).

use refresh_tests::{
    Answer, DEADLINE, TestStack,
    proxy::Proxy,
    raw::{Outcome, RawConnection, post_head},
    wait_until,
};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn hardware() -> Value {
    json!({ "info": ["hardware"] })
}

/// The value of an api counter on `/metrics` (0 when it was never counted).
async fn counter(stack: &TestStack, name: &str) -> f64 {
    let page = stack.metrics(&stack.api).await;
    page.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn assert_answered(outcome: &Outcome, status: u16, code: u64, message: &str) {
    let Outcome::Answered {
        status: answered,
        body,
        ..
    } = outcome
    else {
        panic!("closed without an answer");
    };
    assert_eq!(*answered, status, "{body}");
    assert_eq!(
        body,
        &json!({ "status": false, "error": { "code": code, "message": message } })
    );
}

#[tokio::test]
async fn oversized_headers_are_431_4310() {
    let stack = TestStack::start_with(&[("HEADER_LIMIT_BYTES", "4096".to_owned())]).await;
    let device = stack.device().await;
    let url = stack.refresh_url(&stack.org_id(), &device.id.to_hex());
    let with_filler = |bytes: usize| {
        let request = stack
            .http
            .post(&url)
            .bearer_auth(&stack.token)
            .header("x-filler", "a".repeat(bytes))
            .json(&hardware());
        Answer::of(request)
    };
    let answer = with_filler(5_000).await;
    answer.assert_error(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        4310,
        "Request headers too large",
    );
    assert_eq!(with_filler(2_000).await.status, StatusCode::OK);
}

/// A client that stops sending its body is answered 408 once `BODY_READ_TIMEOUT_MS` passes, and
/// while it holds the only request slot the next request is refused at once with 503 5030.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_body_is_408_4080_and_requests_over_the_in_flight_limit_are_503_5030() {
    let stack = TestStack::start_with(&[
        ("BODY_READ_TIMEOUT_MS", "1500".to_owned()),
        ("MAX_IN_FLIGHT_REQUESTS", "1".to_owned()),
    ])
    .await;
    let device = stack.device().await;
    let url = stack.refresh_url(&stack.org_id(), &device.id.to_hex());
    let mut stalled = RawConnection::open(&url).await;
    stalled
        .send(format!("{}{{\"info\":", post_head(&url, &stack.token, 40)).as_bytes())
        .await;
    let sent = Instant::now();
    let stalling = tokio::spawn(async move { stalled.outcome(Duration::from_secs(10)).await });
    // While the stalled request holds the only slot, the next is refused at once.
    let busy = wait_until(
        "a request refused for want of a slot",
        Duration::from_secs(1),
        || async {
            let request = stack
                .http
                .post(&url)
                .bearer_auth(&stack.token)
                .json(&hardware());
            let answer = Answer::of(request).await;
            (answer.status == StatusCode::SERVICE_UNAVAILABLE).then_some(answer)
        },
    )
    .await;
    let outcome = stalling.await.expect("the stalled client");
    let took = sent.elapsed();
    assert_answered(&outcome, 408, 4080, "Request body not received in time");
    assert!(
        took >= Duration::from_millis(1_500) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    busy.assert_error(StatusCode::SERVICE_UNAVAILABLE, 5030, "Server busy");
    assert!(busy.headers.contains_key(header::RETRY_AFTER));
    // The slot is free again.
    let request = stack
        .http
        .post(&url)
        .bearer_auth(&stack.token)
        .json(&hardware());
    assert_eq!(Answer::of(request).await.status, StatusCode::OK);
}

/// Slowloris: a client trickling its headers, one line every 200 ms, is cut off once
/// `HEADER_READ_TIMEOUT_MS` has passed since the connection waited for a request, however
/// steadily it sends; so is a connection that sends nothing, and a keep-alive connection left
/// idle after its answer. Meanwhile everyone else is served.
#[tokio::test(flavor = "multi_thread")]
async fn trickled_headers_and_idle_connections_are_closed_after_the_header_read_timeout() {
    let stack = TestStack::start_with(&[("HEADER_READ_TIMEOUT_MS", "1000".to_owned())]).await;
    let device = stack.device().await;
    let url = stack.refresh_url(&stack.org_id(), &device.id.to_hex());
    let health = format!("{}/healthz", stack.api);

    let started = Instant::now();
    let mut trickling = RawConnection::open(&url).await;
    let mut silent = RawConnection::open(&url).await;
    let mut kept_alive = RawConnection::open(&url).await;
    kept_alive
        .send(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    let answered = kept_alive.outcome(Duration::from_secs(5)).await;
    assert!(
        matches!(answered, Outcome::Answered { status: 200, .. }),
        "{answered:?}"
    );
    let idle_since = Instant::now();

    let slowloris = tokio::spawn(async move {
        trickling.send(b"GET /healthz HTTP/1.1\r\n").await;
        let mut line = 0;
        // Never finishes its head: a header line every 200 ms for up to 10 s.
        let cut_off = loop {
            tokio::select! {
                outcome = trickling.outcome(Duration::from_secs(10)) => break outcome,
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            line += 1;
            let header = format!("X-Trickle-{line}: {line}\r\n");
            if tokio::time::timeout(Duration::from_secs(1), trickling.send(header.as_bytes()))
                .await
                .is_err()
            {
                panic!("could not even send");
            }
            assert!(line < 50, "still connected after {line} header lines");
        };
        (cut_off, line)
    });
    // Everyone else is served while the slowloris trickles.
    for _ in 0..5 {
        let answer = Answer::of(stack.http.get(&health)).await;
        assert_eq!(answer.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let silent_outcome = silent.outcome(Duration::from_secs(5)).await;
    let silent_after = started.elapsed();
    let idle_outcome = kept_alive.outcome(Duration::from_secs(5)).await;
    let idle_after = idle_since.elapsed();
    let (slowloris_outcome, lines) = slowloris.await.expect("the slowloris");
    let slowloris_after = started.elapsed();
    assert!(
        matches!(silent_outcome, Outcome::Closed),
        "{silent_outcome:?}"
    );
    assert!(matches!(idle_outcome, Outcome::Closed), "{idle_outcome:?}");
    assert!(
        matches!(slowloris_outcome, Outcome::Closed),
        "{slowloris_outcome:?}"
    );
    for (who, after) in [
        ("silent", silent_after),
        ("idle keep-alive", idle_after),
        ("slowloris", slowloris_after),
    ] {
        assert!(
            after >= Duration::from_millis(1_000) && after < Duration::from_secs(4),
            "{who} connection closed after {after:?}"
        );
    }
    assert!(
        lines >= 3,
        "the slowloris sent {lines} lines before the cut"
    );
}

/// Over `MAX_CONNECTIONS`, a connection's request is answered 503 5030 with `Retry-After` and
/// the connection closed; once a connection ends, a new one is served again.
#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_limit_are_answered_503_5030_and_closed() {
    let stack = TestStack::start_with(&[
        ("MAX_CONNECTIONS", "3".to_owned()),
        ("HEADER_READ_TIMEOUT_MS", "30000".to_owned()),
    ])
    .await;
    let health = format!("{}/healthz", stack.api);
    let request = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..3 {
        // Each answered once, so each is surely accepted and counted, then held idle.
        let mut connection = RawConnection::open(&health).await;
        connection.send(request).await;
        let outcome = connection.outcome(Duration::from_secs(5)).await;
        assert!(
            matches!(outcome, Outcome::Answered { status: 200, .. }),
            "{outcome:?}"
        );
        open.push(connection);
    }

    let mut fourth = RawConnection::open(&health).await;
    fourth.send(request).await;
    let refused = fourth.outcome(Duration::from_secs(5)).await;
    assert_answered(&refused, 503, 5030, "Server busy");
    let Outcome::Answered { head, .. } = &refused else {
        unreachable!()
    };
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\nretry-after: 1"), "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    let after = fourth.outcome(Duration::from_secs(5)).await;
    assert!(matches!(after, Outcome::Closed), "{after:?}");
    // Operators see it (one of the three open connections is dropped first, to ask).
    drop(open.pop());
    let refused = wait_until("the metrics page served", DEADLINE, || async {
        let refused = counter(&stack, "refresh_http_connections_refused_total").await;
        (refused > 0.0).then_some(refused)
    })
    .await;
    assert!(refused >= 1.0);

    // Connections end: the next is served.
    drop(open.pop());
    wait_until("a connection served again", DEADLINE, || async {
        let mut connection = RawConnection::open(&health).await;
        connection.send(request).await;
        let outcome = connection.outcome(Duration::from_secs(5)).await;
        matches!(outcome, Outcome::Answered { status: 200, .. }).then_some(())
    })
    .await;
}

/// A request still unanswered at `REQUEST_TIMEOUT_MS` (here: MongoDB stops answering while the
/// api looks the caller's token up) is answered 503 5040 at the deadline, and its work runs on:
/// once the database answers again the job is recorded, queued and pushed.
#[tokio::test(flavor = "multi_thread")]
async fn a_request_past_the_deadline_is_503_5040_and_its_work_still_completes() {
    let (database, mongodb_uri) = Proxy::mongodb().await;
    let stack = TestStack::start_with(&[
        ("MONGODB_URI", mongodb_uri),
        ("REQUEST_TIMEOUT_MS", "1000".to_owned()),
    ])
    .await;
    let device = stack.device().await;
    let url = stack.refresh_url(&stack.org_id(), &device.id.to_hex());

    database.pause();
    let request = stack
        .http
        .post(&url)
        .bearer_auth(&stack.token)
        .json(&hardware());
    let sent = Instant::now();
    let answer = Answer::of(request).await;
    let took = sent.elapsed();
    answer.assert_error(StatusCode::SERVICE_UNAVAILABLE, 5040, "Request timed out");
    assert_eq!(answer.headers[header::RETRY_AFTER], "1");
    assert!(
        took >= Duration::from_millis(1_000) && took < Duration::from_millis(2_500),
        "answered after {took:?}"
    );
    assert!(counter(&stack, "refresh_http_requests_timed_out_total").await >= 1.0);

    database.resume();
    let target = device.id.to_hex();
    let push = wait_until("the timed-out request's push", DEADLINE, || async {
        let pushes = stack.pushes().await;
        pushes.into_iter().find(|push| push.target == target)
    })
    .await;
    assert_eq!(push.categories, ["hardware"]);
    let job = stack
        .wait_for_settled_job(&push.job_id.expect("the push names its job"))
        .await;
    assert_eq!(job.device, device.id);
}
