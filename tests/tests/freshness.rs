//! `maxAgeSecs` (CONTRACT §6): a category the device reported recently enough is not
//! refreshed; it is listed in `skipped`, and when every category is, no job is made at all.

use refresh_shared::store::Device;
use refresh_tests::{Answer, TestStack};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// How many pushes the sim has taken for `device`.
async fn pushes_to(stack: &TestStack, device: &Device) -> usize {
    let target = device.id.to_hex();
    stack
        .pushes()
        .await
        .iter()
        .filter(|push| push.target == target)
        .count()
}

async fn refresh(stack: &TestStack, device: &Device, body: Value) -> Answer {
    stack
        .refresh(&stack.org_id(), &device.id.to_hex(), &body)
        .await
}

fn answered(answer: &Answer) -> (Value, Value) {
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let data = &answer.body["data"];
    (data["jobId"].clone(), data["skipped"].clone())
}

#[tokio::test]
async fn categories_reported_within_max_age_are_skipped_and_nothing_is_pushed_for_them() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let (first, _) = stack.settled_refresh(&device, &["hardware", "os"]).await;
    let pushed = pushes_to(&stack, &device).await;

    // Both just reported: no job, nothing queued.
    let all_fresh = json!({ "info": ["hardware", "os"], "maxAgeSecs": 3600 });
    let (job, skipped) = answered(&refresh(&stack, &device, all_fresh.clone()).await);
    assert_eq!(job, Value::Null);
    assert_eq!(skipped, json!(["hardware", "os"]));

    // One fresh, one not: a job for the other alone.
    let mixed = json!({ "info": ["hardware", "network"], "maxAgeSecs": 3600 });
    let (job, skipped) = answered(&refresh(&stack, &device, mixed).await);
    assert_eq!(skipped, json!(["hardware"]));
    let job = job.as_str().expect("a job for network").to_owned();
    let record = stack.wait_for_settled_job(&job).await;
    let categories: Vec<&str> = record.categories.keys().map(|c| c.as_str()).collect();
    assert_eq!(categories, ["network"]);
    let pushes = stack.pushes_for_job(&job).await;
    assert!(
        pushes.iter().all(|push| push.categories == ["network"]),
        "{pushes:?}"
    );
    // The network job's pushes are the only ones since the first job: the all-fresh request
    // pushed nothing (its answer made no job, and the one after it has been pushed by now).
    assert_eq!(pushes_to(&stack, &device).await, pushed + pushes.len());

    // A maxAgeSecs shorter than the skip window does not undercut it: the category reported
    // a moment ago is left to the job that reported it, as without maxAgeSecs.
    let short = json!({ "info": ["os"], "maxAgeSecs": 0 });
    let (job, skipped) = answered(&refresh(&stack, &device, short).await);
    assert_eq!(job, json!(first));
    assert_eq!(skipped, json!([]));

    // With an Idempotency-Key, the same request gets the same answer again.
    let keyed = || {
        stack
            .http
            .post(stack.refresh_url(&stack.org_id(), &device.id.to_hex()))
            .bearer_auth(&stack.token)
            .header("Idempotency-Key", "fresh-1")
            .json(&all_fresh)
    };
    let once = answered(&Answer::of(keyed()).await);
    let again = answered(&Answer::of(keyed()).await);
    assert_eq!(once, (Value::Null, json!(["hardware", "os"])));
    assert_eq!(again, once);
}

#[tokio::test]
async fn a_category_never_reported_is_refreshed_and_a_bad_max_age_is_refused() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let body = json!({ "info": ["certificates"], "maxAgeSecs": 31_536_000 });
    let (job, skipped) = answered(&refresh(&stack, &device, body).await);
    assert_eq!(skipped, json!([]));
    let job = job.as_str().expect("a job").to_owned();
    stack.wait_for_settled_job(&job).await;

    for bad in [json!(-1), json!(1.5), json!("60"), json!(31_536_001)] {
        let body = json!({ "info": ["os"], "maxAgeSecs": bad });
        let answer = refresh(&stack, &device, body).await;
        answer.assert_error(StatusCode::BAD_REQUEST, 1001, "Validation failed");
        assert_eq!(
            answer.body["error"]["details"][0]["field"],
            json!("maxAgeSecs"),
            "{:?}",
            answer.body
        );
    }
}

#[tokio::test]
async fn a_batch_with_max_age_leaves_out_devices_that_reported_recently() {
    let stack = TestStack::start().await;
    let fresh = stack.device().await;
    let stale = stack.device().await;
    stack.settled_refresh(&fresh, &["hardware"]).await;
    let pushed = pushes_to(&stack, &fresh).await;

    let answer = stack
        .bulk(&json!({
            "info": ["hardware"],
            "deviceIds": [fresh.id.to_hex(), stale.id.to_hex()],
            "maxAgeSecs": 3600,
        }))
        .await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{:?}", answer.body);
    let id = answer.body["data"]["batchId"].as_str().expect("a batch id");
    let batch = stack.wait_for_batch(id, refresh_tests::DEADLINE).await;
    assert_eq!(batch.max_age_secs, Some(3600));
    assert_eq!(batch.counts.reported, 1, "{batch:?}");
    assert_eq!(batch.counts.skipped.coalesced, 1, "{batch:?}");
    // The stale device's job has been pushed and reported by now; the fresh one got nothing.
    assert_eq!(pushes_to(&stack, &fresh).await, pushed);
    assert_eq!(pushes_to(&stack, &stale).await, 1);
}
