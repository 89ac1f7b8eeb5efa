//! A device's refresh history (CONTRACT §6): `GET …/devices/{winDeviceId}/refresh-jobs`,
//! newest first, page by page with a cursor that new jobs do not disturb.

use refresh_shared::token::PERMISSION_DEVICE_READ;
use refresh_tests::{Answer, TestStack};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The ids of a page's jobs, and its cursor.
fn page(answer: &Answer) -> (Vec<String>, Value) {
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let data = &answer.body["data"];
    let ids = data["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| job["id"].as_str().expect("an id").to_owned())
        .collect();
    (ids, data["nextCursor"].clone())
}

#[tokio::test]
async fn a_device_history_pages_newest_first_and_new_jobs_do_not_shift_a_page() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let other_device = stack.device().await;
    // A category each: five jobs, none coalesced into another.
    let mut made = Vec::new();
    for category in [
        "hardware",
        "applications",
        "certificates",
        "network",
        "security",
    ] {
        made.push(stack.refresh_device(&device, &[category]).await.job_id());
    }
    stack.refresh_device(&other_device, &["os"]).await.job_id();
    let id = device.id.to_hex();

    let (first, cursor) = page(&stack.device_history(&id, "?limit=2").await);
    assert_eq!(first, [made[4].clone(), made[3].clone()]);
    // A job made after the first page is read shows on the first page, not on the next ones.
    let newest = stack.refresh_device(&device, &["os"]).await.job_id();
    let cursor = cursor.as_str().expect("a cursor after a full page");
    let (second, cursor) = page(
        &stack
            .device_history(&id, &format!("?limit=2&after={cursor}"))
            .await,
    );
    assert_eq!(second, [made[2].clone(), made[1].clone()]);
    let cursor = cursor.as_str().expect("a cursor after a full page");
    let (last, cursor) = page(
        &stack
            .device_history(&id, &format!("?limit=2&after={cursor}"))
            .await,
    );
    assert_eq!(last, [made[0].clone()]);
    assert_eq!(cursor, Value::Null, "the last page has no cursor");

    // Without a limit, up to 20; each job as its own GET shows it.
    let answer = stack.device_history(&id, "").await;
    let (all, cursor) = page(&answer);
    let mut expected: Vec<String> = made.iter().rev().cloned().collect();
    expected.insert(0, newest);
    assert_eq!(all, expected);
    assert_eq!(cursor, Value::Null);
    let job = Answer::of(
        stack
            .http
            .get(stack.job_url(&stack.org_id(), &made[0]))
            .bearer_auth(&stack.token),
    )
    .await;
    assert_eq!(answer.body["data"]["jobs"][5], job.body["data"]);
    // A page that ends exactly with the last job still says so.
    let (six, cursor) = page(&stack.device_history(&id, "?limit=6").await);
    assert_eq!(six.len(), 6);
    assert_eq!(cursor, Value::Null);
}

#[tokio::test]
async fn the_history_checks_its_query_its_permission_and_its_tenant() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    stack.refresh_device(&device, &["os"]).await.job_id();
    let id = device.id.to_hex();

    let bad = stack.device_history(&id, "?limit=0&after=nope").await;
    bad.assert_error(StatusCode::BAD_REQUEST, 1001, "Validation failed");
    let fields = bad.problem_fields();
    assert_eq!(fields, ["limit", "after"], "{:?}", bad.body);
    for limit in ["101", "-1", "two", ""] {
        stack
            .device_history(&id, &format!("?limit={limit}"))
            .await
            .assert_error(StatusCode::BAD_REQUEST, 1001, "Validation failed");
    }
    let (one, _) = page(&stack.device_history(&id, "?limit=100").await);
    assert_eq!(one.len(), 1);
    stack.device_history("NOSUCHSERIAL", "").await.assert_error(
        StatusCode::NOT_FOUND,
        3001,
        "Entity not found",
    );

    let reader = stack.token_with(&[PERMISSION_DEVICE_READ]).await;
    let url = stack.history_url(&stack.org_id(), &id, "");
    Answer::of(stack.http.get(&url).bearer_auth(&reader))
        .await
        .assert_error(StatusCode::FORBIDDEN, 4003, "Forbidden");

    // Another organization's token sees nothing of this device, through either organization.
    let (other, other_token) = stack.other_tenant().await;
    for organization in [other.id.to_hex(), stack.org_id()] {
        let url = stack.history_url(&organization, &id, "");
        Answer::of(stack.http.get(url).bearer_auth(&other_token))
            .await
            .assert_error(StatusCode::NOT_FOUND, 3001, "Entity not found");
    }
    let answer = json!(stack.device_history(&id, "").await.body["data"]["jobs"][0]["deviceId"]);
    assert_eq!(answer, json!(id));
}
