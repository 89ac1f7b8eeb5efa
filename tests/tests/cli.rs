//! `refreshctl`, the real binary, against the same MongoDB the api of a running stack uses.

use refresh_tests::{Answer, TestStack, wait_until};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn an_operator_sets_up_a_tenant_whose_token_then_refreshes_a_device() {
    // A cache that would hold the token for ten minutes: only the revocation's announcement
    // can make the running api refuse it within the seconds this test allows.
    let stack = TestStack::start_with(&[("AUTH_CACHE_TTL_MS", "600000".to_owned())]).await;
    let slug = format!("cli-{}", bson::oid::ObjectId::new());
    let org = stack
        .refreshctl(&["org", "create", "--slug", &slug, "--name", "CLI Org"])
        .await;
    assert_eq!(org["slug"], json!(slug));
    let org_id = org["id"].as_str().unwrap().to_owned();

    let device = stack
        .refreshctl(&[
            "device",
            "create",
            "--org",
            &slug,
            "--serial",
            "CLI_SERIAL_1",
            "--push",
            "agent",
            "--push",
            "wns",
            "--node-key",
        ])
        .await;
    assert_eq!(device["organizationId"], json!(org_id));
    // The device's agent (the sim) reports with the key printed once.
    let node_key = device["nodeKey"].as_str().unwrap().to_owned();
    assert!(node_key.starts_with("dnk_"), "{device}");
    let device_id = device["id"].as_str().unwrap().to_owned();
    let created = stack
        .store
        .device_by_id(bson::oid::ObjectId::parse_str(&device_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    stack.register_with_sim(&[(&created, &node_key)]).await;
    assert_eq!(device["state"], json!("ACTIVE"));
    assert_eq!(device["push"], json!(["agent", "wns"]));
    assert!(
        device["wnsChannelUri"]
            .as_str()
            .unwrap()
            .starts_with(&stack.sim.url())
    );

    let token = stack
        .refreshctl(&[
            "token",
            "create",
            "--org",
            &org_id,
            "--permission",
            "mdm.windows.device.info",
        ])
        .await;
    let plaintext = token["token"].as_str().unwrap().to_owned();
    let stored = stack
        .store
        .database()
        .collection::<bson::Document>("api_tokens")
        .find_one(bson::doc! {})
        .await
        .unwrap()
        .unwrap()
        .to_string();
    assert!(!stored.contains(&plaintext), "only the hash is stored");

    let refresh = |token: String| {
        let request = stack
            .http
            .post(stack.refresh_url(&slug, "CLI_SERIAL_1"))
            .bearer_auth(token)
            .json(&json!({ "info": ["certificates"] }));
        Answer::of(request)
    };
    let job_id = refresh(plaintext.clone()).await.job_id();
    stack.wait_for_settled_job(&job_id).await;
    let job = stack.refreshctl(&["job", "get", &job_id]).await;
    assert_eq!(job["state"], json!("completed"));
    assert_eq!(job["reported"], json!(1));
    assert_eq!(
        job["categories"]["certificates"]["state"],
        json!("reported")
    );
    assert_eq!(
        job["categories"]["certificates"]["reportSource"],
        json!("agent")
    );

    let revoked = stack
        .refreshctl(&[
            "token",
            "revoke",
            "--org",
            &slug,
            token["id"].as_str().unwrap(),
        ])
        .await;
    assert_eq!(revoked["revoked"], json!(true));
    assert_eq!(revoked["apisTold"], json!(true));
    let refused = wait_until(
        "the running api to refuse the revoked token",
        Duration::from_secs(5),
        || async {
            let answer = refresh(plaintext.clone()).await;
            (answer.status != StatusCode::OK).then_some(answer)
        },
    )
    .await;
    assert_eq!(
        (refused.status, refused.error_code()),
        (StatusCode::UNAUTHORIZED, 4001)
    );
}

#[tokio::test]
async fn refreshctl_refuses_bad_input_with_a_clear_message() {
    let stack = TestStack::start().await;
    let run = |args: &'static [&'static str]| stack.refreshctl_output(args);
    let bad_slug = run(&["org", "create", "--slug", "a b"]).await;
    assert!(!bad_slug.status.success());
    assert!(String::from_utf8_lossy(&bad_slug.stderr).contains("--slug"));
    let unknown_org = run(&["device", "create", "--org", "no-such-org"]).await;
    assert!(!unknown_org.status.success());
    assert!(String::from_utf8_lossy(&unknown_org.stderr).contains("no organization 'no-such-org'"));
    let bad_state = stack
        .refreshctl_output(&[
            "device",
            "create",
            "--org",
            &stack.organization.slug,
            "--state",
            "ON",
        ])
        .await;
    assert!(!bad_state.status.success());
    assert!(String::from_utf8_lossy(&bad_state.stderr).contains("unknown device state"));
}

/// An operator's command reads only what it uses: a bad value meant for the api or the worker
/// (a typo in a shared environment file) must not stop it, and a bad value it does use still
/// does, naming the variable.
#[tokio::test]
async fn refreshctl_reads_only_its_own_variables() {
    let stack = TestStack::start().await;
    let others = [
        ("WORKER_PREFETCH", "plenty"),
        ("PUSH_RETRY_INITIAL_MS", "soon"),
        ("API_ADDR", "nowhere"),
        ("BODY_LIMIT_BYTES", "big"),
    ];
    let listed = stack.refreshctl_output_with(&["queues"], &others).await;
    assert!(
        listed.status.success(),
        "refreshctl queues: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let depths: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert!(depths["queues"].as_array().is_some_and(|q| !q.is_empty()));

    let own = stack
        .refreshctl_output_with(&["queues"], &[("AUTH_CACHE_TTL_MS", "a while")])
        .await;
    assert!(!own.status.success());
    assert!(String::from_utf8_lossy(&own.stderr).contains("AUTH_CACHE_TTL_MS"));
}

#[tokio::test]
async fn an_operator_adds_lists_and_removes_a_webhook_endpoint() {
    let stack = TestStack::start().await;
    let org = stack.organization.slug.clone();
    let added = stack
        .refreshctl(&[
            "webhook",
            "add",
            "--org",
            &org,
            "--url",
            "https://93.184.216.34/device-refresh",
            "--event",
            "refresh.job.finished",
            "--event",
            "refresh.category.reported",
        ])
        .await;
    let secret = added["secret"].as_str().expect("the secret, this once");
    assert!(secret.starts_with("whsec_"), "{added}");
    assert_eq!(
        added["events"],
        json!(["refresh.job.finished", "refresh.category.reported"])
    );
    let id = added["id"].as_str().expect("an id").to_owned();

    let listed = stack.refreshctl(&["webhook", "list", "--org", &org]).await;
    assert_eq!(listed[0]["id"], json!(id));
    assert!(listed[0].get("secret").is_none(), "{listed}");

    // The api lists what refreshctl added: one store, one rule.
    let url = format!(
        "{}/v1/organizations/{}/mdm/windows/enterprise/webhooks",
        stack.api,
        stack.org_id()
    );
    let manager = stack
        .token_with(&[refresh_shared::token::PERMISSION_WEBHOOKS_MANAGE])
        .await;
    let answer = Answer::of(stack.http.get(url).bearer_auth(&manager)).await;
    assert_eq!(answer.body["data"][0]["id"], json!(id), "{:?}", answer.body);

    // Refused, each with what is wrong: the URL's scheme or address, or an unknown event.
    for (url, event, problem) in [
        (
            "https://10.0.0.1/hook",
            "refresh.job.finished",
            "not a public address",
        ),
        (
            "http://93.184.216.34/hook",
            "refresh.job.finished",
            "must use https",
        ),
        (
            "https://93.184.216.34/h",
            "refresh.job.done",
            "--event refresh.job.done",
        ),
    ] {
        let args = [
            "webhook", "add", "--org", &org, "--url", url, "--event", event,
        ];
        let refused = stack.refreshctl_output(&args).await;
        assert!(!refused.status.success(), "{url} {event}");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains(problem), "{url} {event}: {stderr}");
    }

    let removed = stack
        .refreshctl(&["webhook", "remove", "--org", &org, &id])
        .await;
    assert_eq!(removed["id"], json!(id));
    let listed = stack.refreshctl(&["webhook", "list", "--org", &org]).await;
    assert_eq!(listed, json!([]));
    let again = stack
        .refreshctl_output(&["webhook", "remove", "--org", &org, &id])
        .await;
    assert!(!again.status.success());
}
