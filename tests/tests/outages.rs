//! Outages of RabbitMQ and MongoDB, made by cutting a TCP proxy between the services and the
//! real dependencies: 503 5003 with `Retry-After`, no job left waiting, and recovery.

use futures::TryStreamExt;
use refresh_shared::store;
use refresh_shared::{Category, job::CategoryState};
use refresh_tests::{Answer, DEADLINE, TestStack, proxy::Proxy, wait_until};
use reqwest::{StatusCode, header};
use serde_json::json;
use std::time::{Duration, Instant};

fn assert_unavailable(answer: &Answer, took: Duration) {
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        answer.body
    );
    assert_eq!(answer.error_code(), 5003);
    assert_eq!(
        answer.body["error"]["message"],
        json!("Service unavailable")
    );
    assert!(answer.headers.contains_key(header::RETRY_AFTER));
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
}

#[tokio::test]
async fn with_rabbitmq_unreachable_the_endpoint_answers_503_and_leaves_no_job_queued() {
    let (proxy, amqp_url) = Proxy::rabbitmq().await;
    let stack = TestStack::start_with(&[("AMQP_URL", amqp_url)]).await;
    let device = stack.device().await;
    let body = json!({ "info": ["hardware", "os"] });
    let accepted = stack
        .refresh(&stack.org_id(), &device.id.to_hex(), &body)
        .await
        .job_id();
    let accepted = bson::oid::ObjectId::parse_str(accepted).unwrap();

    proxy.cut();
    // Other categories than the accepted job's, which would merge into it without publishing.
    let body = json!({ "info": ["applications", "network"] });
    for _ in 0..3 {
        let started = Instant::now();
        let answer = stack
            .refresh(&stack.org_id(), &device.id.to_hex(), &body)
            .await;
        assert_unavailable(&answer, started.elapsed());
    }
    let ready = Answer::of(stack.http.get(format!("{}/readyz", stack.api))).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.body["error"]["details"][0]["field"], json!("broker"));

    // Every job but the one accepted before the cut was refused, and reads failed: none waits.
    let jobs: Vec<_> = stack
        .collection::<store::JobRecord>(store::JOBS)
        .find(bson::doc! { "device": device.id })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(jobs.len(), 4, "{jobs:?}");
    let refused: Vec<_> = jobs.iter().filter(|job| job.id != accepted).collect();
    assert_eq!(refused.len(), 3);
    for job in refused {
        for category in job.categories.values() {
            assert_eq!(category.state, CategoryState::Failed, "{job:?}");
            assert!(
                category
                    .last_error
                    .as_deref()
                    .unwrap()
                    .starts_with("not queued")
            );
        }
    }

    let device_now = stack
        .store
        .device(stack.organization.id, device.id)
        .await
        .unwrap()
        .unwrap();
    for refused in [Category::Applications, Category::Network] {
        assert!(
            !device_now.refresh_info_needed.contains(&refused),
            "a refused category is not left outstanding: {device_now:?}"
        );
    }

    // Back by itself, without a restart.
    proxy.restore();
    let job_id = wait_until(
        "the api to accept again",
        Duration::from_secs(30),
        || async {
            let answer = stack
                .refresh(&stack.org_id(), &device.id.to_hex(), &body)
                .await;
            (answer.status == StatusCode::OK).then(|| answer.job_id())
        },
    )
    .await;
    let job = stack.wait_for_settled_job(&job_id).await;
    assert!(
        job.categories
            .values()
            .all(|c| c.state == CategoryState::Reported),
        "{job:?}"
    );
}

#[tokio::test]
async fn with_mongodb_unreachable_the_endpoint_answers_503() {
    let (proxy, mongodb_uri) = Proxy::mongodb().await;
    let stack = TestStack::start_with(&[("MONGODB_URI", mongodb_uri)]).await;
    let device = stack.device().await;
    let body = json!({ "info": ["applications"] });

    proxy.cut();
    let started = Instant::now();
    let answer = stack
        .refresh(&stack.org_id(), &device.id.to_hex(), &body)
        .await;
    assert_unavailable(&answer, started.elapsed());

    proxy.restore();
    let job_id = wait_until("the api to accept again", DEADLINE, || async {
        let answer = stack
            .refresh(&stack.org_id(), &device.id.to_hex(), &body)
            .await;
        (answer.status == StatusCode::OK).then(|| answer.job_id())
    })
    .await;
    stack.wait_for_settled_job(&job_id).await;
}

#[tokio::test]
async fn a_worker_mid_job_holds_it_through_a_mongodb_outage_and_finishes_it() {
    let (proxy, mongodb_uri) = Proxy::mongodb().await;
    let stack = TestStack::start_with(&[("MONGODB_URI", mongodb_uri)]).await;
    let device = stack.device().await;
    // A slow gateway: the database goes away while the push is under way.
    stack
        .fault(json!({ "mode": "fault", "latencyMs": 1000 }))
        .await;
    let job_id = stack.refresh_device(&device, &["hardware"]).await.job_id();
    wait_until("the push to be under way", DEADLINE, || async {
        (!stack.pushes().await.is_empty()
            || stack.job(&job_id).await.categories[&Category::Hardware].state
                == CategoryState::Pushing)
            .then_some(())
    })
    .await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();

    let job = stack.wait_for_settled_job(&job_id).await;
    let hardware = &job.categories[&Category::Hardware];
    assert_eq!(
        (hardware.state, hardware.attempts),
        (CategoryState::Reported, 1),
        "{hardware:?}"
    );
    assert_eq!(
        stack.pushes_for_job(&job_id).await.len(),
        1,
        "held, not pushed again"
    );
}

#[tokio::test]
async fn a_process_whose_broker_node_goes_away_moves_to_another_node_of_amqp_url() {
    // Two ways to the broker stand for two nodes of a cluster: whichever each process took,
    // cutting it leaves the other.
    let (first, first_url) = Proxy::rabbitmq().await;
    let (second, second_url) = Proxy::rabbitmq().await;
    let stack = TestStack::start_with(&[("AMQP_URL", format!("{first_url},{second_url}"))]).await;
    let device = stack.device().await;
    let (_, job) = stack.settled_refresh(&device, &["os"]).await;
    assert_eq!(job.categories[&Category::Os].state, CategoryState::Reported);

    for (down, category) in [(&first, "hardware"), (&second, "network")] {
        down.cut();
        // Until every process has moved, a refresh may be refused 503; none is lost.
        let job_id = wait_until(
            "a refresh accepted through the other node",
            DEADLINE,
            || async {
                let answer = stack.refresh_device(&device, &[category]).await;
                match answer.status {
                    StatusCode::OK => Some(answer.job_id()),
                    StatusCode::SERVICE_UNAVAILABLE => None,
                    other => panic!("{other}: {:?}", answer.body),
                }
            },
        )
        .await;
        let job = stack.wait_for_settled_job(&job_id).await;
        let state = job.categories[&category.parse::<Category>().unwrap()].state;
        assert_eq!(state, CategoryState::Reported, "{job:?}");
        down.restore();
    }
}

/// A job insert whose answer was lost is retried by the driver; a server that does not
/// recognise the retry refuses it as a duplicate of the job it already stored (seen under load
/// on SecantusDB: the api answered 500 to a refresh it had recorded). The job's id is this
/// insert's own, so a duplicate of it is the insert having landed.
#[tokio::test]
async fn an_insert_retried_after_it_landed_is_not_an_error() {
    use refresh_shared::{job::Lane, store::JobRecord};
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let job = JobRecord::new(
        stack.organization.id,
        device.id,
        &[Category::Os],
        Lane::Interactive,
    );
    stack.store.insert_job(&job).await.expect("inserted");
    stack
        .store
        .insert_job(&job)
        .await
        .expect("the same insert again is the insert having landed");
    let batch: Vec<JobRecord> = (0..3)
        .map(|_| {
            JobRecord::new(
                stack.organization.id,
                device.id,
                &[Category::Os],
                Lane::Bulk,
            )
        })
        .collect();
    stack
        .store
        .insert_jobs(&batch[..2])
        .await
        .expect("two inserted");
    stack
        .store
        .insert_jobs(&batch)
        .await
        .expect("the first two again, and the third");
    assert!(stack.store.job_by_id(batch[2].id).await.unwrap().is_some());
}
