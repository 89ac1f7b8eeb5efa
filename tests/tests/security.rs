//! Secrets stay secret: the real api and worker, logging everything they can (`RUST_LOG=trace`),
//! never write a bearer token or the WNS client secret to their logs, whatever the callers send.

use refresh_tests::{Answer, TestStack, wait_until};
use reqwest::{StatusCode, header};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn tokens_and_secrets_never_reach_the_logs() {
    let logs = std::env::temp_dir().join(format!("refresh-logs-{}", bson::oid::ObjectId::new()));
    std::fs::create_dir_all(&logs).unwrap();
    let stack = TestStack::spawn_with(&[
        ("RUST_LOG", "trace".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
        ("TEST_LOG_DIR", logs.display().to_string()),
    ])
    .await;
    // A device reachable only through WNS, so the worker fetches a WNS token with its secret.
    let device = stack
        .device_with(refresh_shared::device::DeviceState::Active, false, true)
        .await;
    let (_, job) = stack.pushed_refresh(&device, &["hardware"]).await;
    assert!(
        job.categories
            .values()
            .all(|c| c.state == refresh_shared::job::CategoryState::Pushed),
        "{job:?}"
    );

    let url = stack.refresh_url(&stack.org_id(), &device.id.to_hex());
    let (revoked, revoked_token) = stack
        .store
        .create_token(
            stack.organization.id,
            vec![refresh_shared::token::PERMISSION_DEVICE_INFO.to_owned()],
            None,
        )
        .await
        .unwrap();
    let unknown = format!("drt_{}", "ab".repeat(32));
    let presented = [
        format!("Bearer {unknown}"),
        format!("Basic {}", stack.token),
        format!("Bearer {} extra", stack.token),
        format!("Bearer {revoked_token}"),
    ];
    for authorization in &presented {
        let request = stack
            .http
            .post(&url)
            .header(header::AUTHORIZATION, authorization)
            .json(&json!({ "info": ["os"] }));
        let answer = Answer::of(request).await;
        assert_ne!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let revoke = stack
        .refreshctl(&[
            "token",
            "revoke",
            "--org",
            &stack.organization.slug,
            &revoked.id.to_hex(),
        ])
        .await;
    assert_eq!(revoke["revoked"], json!(true));
    assert_eq!(revoke["apisTold"], json!(true));
    // The announcement reaches the api a moment after refreshctl has it confirmed: poll (the
    // token was cached by the loop above, and the 1 s TTL alone would also end it).
    let refused = wait_until(
        "the api to refuse the revoked token",
        Duration::from_secs(5),
        || async {
            let request = stack
                .http
                .post(&url)
                .bearer_auth(&revoked_token)
                .json(&json!({ "info": ["os"] }));
            let answer = Answer::of(request).await;
            (answer.status != StatusCode::OK).then_some(answer)
        },
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);

    let secret = stack.settings.gateways.wns_client_secret.clone();
    let secrets = [
        stack.token.as_str(),
        revoked_token.as_str(),
        unknown.as_str(),
        secrecy::ExposeSecret::expose_secret(&secret),
    ];
    let mut read = 0;
    for name in ["refresh-api", "refresh-worker"] {
        let text = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap();
        // The logs are there and say what happened: the test cannot pass on empty files.
        assert!(
            text.contains("TRACE") || text.contains("\"level\":\"TRACE\""),
            "{name} logged at trace"
        );
        read += text.len();
        for secret in secrets {
            assert!(!text.contains(secret), "{name}'s log holds a secret");
        }
    }
    let api = std::fs::read_to_string(logs.join("refresh-api.log")).unwrap();
    assert!(
        api.contains("refresh accepted"),
        "the api logged the refresh"
    );
    let worker = std::fs::read_to_string(logs.join("refresh-worker.log")).unwrap();
    assert!(
        worker.contains("category settled"),
        "the worker logged the push"
    );
    assert!(read > 10_000, "only {read} bytes of logs");
    std::fs::remove_dir_all(&logs).ok();
}
