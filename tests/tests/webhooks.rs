//! Webhook endpoints (CONTRACT §6): added with the secret shown once, listed without it,
//! removed; only `https` URLs of public addresses; each organization sees only its own.

use refresh_shared::token::{PERMISSION_DEVICE_INFO, PERMISSION_WEBHOOKS_MANAGE};
use refresh_tests::{Answer, TestStack};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn webhooks_url(api: &str, organization: &str) -> String {
    format!("{api}/v1/organizations/{organization}/mdm/windows/enterprise/webhooks")
}

async fn add(stack: &TestStack, token: &str, body: Value) -> Answer {
    let url = webhooks_url(&stack.api, &stack.org_id());
    Answer::of(stack.http.post(url).bearer_auth(token).json(&body)).await
}

async fn list(stack: &TestStack, token: &str, organization: &str) -> Answer {
    let url = webhooks_url(&stack.api, organization);
    Answer::of(stack.http.get(url).bearer_auth(token)).await
}

async fn remove(stack: &TestStack, token: &str, organization: &str, id: &str) -> Answer {
    let url = format!("{}/{id}", webhooks_url(&stack.api, organization));
    Answer::of(stack.http.delete(url).bearer_auth(token)).await
}

/// An address on the public internet, given literally so no name needs resolving.
const PUBLIC_URL: &str = "https://93.184.216.34/device-refresh";

#[tokio::test]
async fn an_endpoint_is_added_with_its_secret_shown_once_listed_without_it_and_removed() {
    let stack = TestStack::start().await;
    let manager = stack.token_with(&[PERMISSION_WEBHOOKS_MANAGE]).await;
    let added = add(
        &stack,
        &manager,
        json!({ "url": PUBLIC_URL, "events": ["refresh.job.finished", "refresh.category.reported", "refresh.job.finished"] }),
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED, "{:?}", added.body);
    let endpoint = &added.body["data"];
    let secret = endpoint["secret"].as_str().expect("the secret");
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{secret}"
    );
    assert_eq!(endpoint["url"], PUBLIC_URL);
    assert_eq!(
        endpoint["events"],
        json!(["refresh.job.finished", "refresh.category.reported"])
    );
    assert_eq!(endpoint["state"], "active");
    let id = endpoint["id"].as_str().expect("an id").to_owned();

    let listed = list(&stack, &manager, &stack.org_id()).await;
    assert_eq!(listed.status, StatusCode::OK, "{:?}", listed.body);
    let endpoints = listed.body["data"].as_array().expect("a list");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["id"], id.as_str());
    assert!(
        !listed.body.to_string().contains(&secret["whsec_".len()..]),
        "the secret is never shown again: {:?}",
        listed.body
    );
    // Nor is it stored: the database holds the endpoint, not its secret.
    let stored = stack
        .collection::<bson::Document>(refresh_shared::store::WEBHOOK_ENDPOINTS)
        .find_one(bson::doc! {})
        .await
        .unwrap()
        .expect("the endpoint");
    assert!(
        !stored.to_string().contains(&secret["whsec_".len()..]),
        "{stored}"
    );

    let removed = remove(&stack, &manager, &stack.org_id(), &id).await;
    assert_eq!(removed.status, StatusCode::OK, "{:?}", removed.body);
    assert_eq!(removed.body["data"]["id"], id.as_str());
    remove(&stack, &manager, &stack.org_id(), &id)
        .await
        .assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
    let listed = list(&stack, &manager, &stack.org_id()).await;
    assert_eq!(listed.body["data"], json!([]));
}

#[tokio::test]
async fn urls_that_are_not_https_or_not_public_are_refused() {
    let stack = TestStack::start().await;
    let manager = stack.token_with(&[PERMISSION_WEBHOOKS_MANAGE]).await;
    for url in [
        "http://127.0.0.1/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        // A name that resolves to the loopback address.
        "https://localhost/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "ftp://93.184.216.34/hook",
        "not a url",
    ] {
        let answer = add(
            &stack,
            &manager,
            json!({ "url": url, "events": ["refresh.job.finished"] }),
        )
        .await;
        answer.assert_error(StatusCode::BAD_REQUEST, 1001, "Validation failed");
        assert_eq!(
            answer.body["error"]["details"][0]["field"], "url",
            "{url}: {:?}",
            answer.body
        );
    }
    let answer = add(
        &stack,
        &manager,
        json!({ "url": PUBLIC_URL, "events": ["refresh.job.done"], "secret": "mine" }),
    )
    .await;
    answer.assert_error(StatusCode::BAD_REQUEST, 1001, "Validation failed");
    let fields = answer.problem_fields();
    assert_eq!(fields, ["secret", "events[0]"], "{:?}", answer.body);
    let listed = list(&stack, &manager, &stack.org_id()).await;
    assert_eq!(listed.body["data"], json!([]), "nothing was added");
}

#[tokio::test]
async fn webhooks_need_their_permission_and_stay_inside_the_organization() {
    let stack = TestStack::start().await;
    let manager = stack.token_with(&[PERMISSION_WEBHOOKS_MANAGE]).await;
    let refresher = stack.token_with(&[PERMISSION_DEVICE_INFO]).await;
    add(
        &stack,
        &refresher,
        json!({ "url": PUBLIC_URL, "events": ["refresh.job.finished"] }),
    )
    .await
    .assert_error(StatusCode::FORBIDDEN, 4003, "Forbidden");
    list(&stack, &refresher, &stack.org_id())
        .await
        .assert_error(StatusCode::FORBIDDEN, 4003, "Forbidden");
    let added = add(
        &stack,
        &manager,
        json!({ "url": PUBLIC_URL, "events": ["refresh.batch.finished"] }),
    )
    .await;
    assert_eq!(added.status, StatusCode::CREATED, "{:?}", added.body);
    let id = added.body["data"]["id"].as_str().expect("an id").to_owned();

    // Another organization's manager neither sees nor removes it, through either path.
    let (other, other_manager) = stack.other_tenant_with(&[PERMISSION_WEBHOOKS_MANAGE]).await;
    let theirs = list(&stack, &other_manager, &other.id.to_hex()).await;
    assert_eq!(theirs.body["data"], json!([]), "{:?}", theirs.body);
    list(&stack, &other_manager, &stack.org_id())
        .await
        .assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
    for organization in [other.id.to_hex(), stack.org_id()] {
        remove(&stack, &other_manager, &organization, &id)
            .await
            .assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
    }
    let mine = list(&stack, &manager, &stack.org_id()).await;
    assert_eq!(mine.body["data"][0]["id"], id.as_str(), "still there");
}
