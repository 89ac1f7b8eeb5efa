//! RabbitMQ itself stopped and started (`rabbitmqctl stop_app` / `start_app`) under a stream of
//! requests, with the api and worker as real processes. Its own test binary: cargo runs test
//! binaries one at a time, so no other test sees the broker go away.

use futures::{StreamExt, stream};
use refresh_shared::{device::DeviceState, job::CategoryState};
use refresh_tests::{TestStack, wait_until};
use reqwest::StatusCode;
use serde_json::json;
use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

fn rabbitmqctl(command: &str) {
    let status = Command::new("rabbitmqctl")
        .args(["-q", command])
        .status()
        .expect("rabbitmqctl runs (this test needs the local RabbitMQ)");
    assert!(status.success(), "rabbitmqctl {command}");
}

/// Starts the broker again however the test ends.
struct BrokerBack;

impl Drop for BrokerBack {
    fn drop(&mut self) {
        rabbitmqctl("start_app");
    }
}

#[tokio::test]
async fn a_rabbitmq_restart_mid_stream_answers_only_200_or_503_and_loses_no_accepted_job() {
    let stack = TestStack::spawn_with(&[
        ("RATE_LIMIT_PER_SECOND", "100000".to_owned()),
        ("RATE_LIMIT_BURST", "100000".to_owned()),
        ("REFRESH_SKIP_WINDOW_SECS", "0".to_owned()),
    ])
    .await;
    let devices: Vec<_> = stream::iter(0..40)
        .map(|_| stack.device_with(DeviceState::Active, true, false))
        .buffer_unordered(8)
        .collect()
        .await;

    let requests = async {
        let mut answers = Vec::new();
        let started = Instant::now();
        let mut i = 0;
        while started.elapsed() < Duration::from_secs(12) {
            let device = &devices[i % devices.len()];
            let answer = stack.refresh_device(device, &["hardware"]).await;
            answers.push((started.elapsed(), answer));
            i += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        answers
    };
    let outage = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let back = BrokerBack;
        rabbitmqctl("stop_app");
        let stopped = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(back);
        stopped.elapsed()
    };
    let (answers, outage_took) = tokio::join!(requests, outage);

    let mut statuses = BTreeMap::new();
    for (_, answer) in &answers {
        *statuses.entry(answer.status.as_u16()).or_insert(0) += 1;
    }
    println!(
        "broker down for {outage_took:?}; {} requests answered {statuses:?}",
        answers.len()
    );
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "only 200 or 503: {statuses:?}"
    );
    assert!(
        statuses.contains_key(&503),
        "the outage was seen: {statuses:?}"
    );
    let recovered = answers
        .iter()
        .rev()
        .take_while(|(_, a)| a.status == StatusCode::OK)
        .last()
        .map(|(at, _)| *at);
    println!("serving 200 again from {recovered:?} into the stream");

    wait_until(
        "the api to serve 200 by itself",
        Duration::from_secs(30),
        || async {
            let answer = stack
                .refresh(
                    &stack.org_id(),
                    &devices[0].id.to_hex(),
                    &json!({ "info": ["os"] }),
                )
                .await;
            (answer.status == StatusCode::OK).then_some(())
        },
    )
    .await;

    let accepted: Vec<String> = answers
        .iter()
        .filter(|(_, a)| a.status == StatusCode::OK)
        .map(|(_, a)| a.job_id())
        .collect();
    for job_id in &accepted {
        let job = stack.wait_for_settled_job(job_id).await;
        assert!(
            job.categories
                .values()
                .all(|c| c.state == CategoryState::Reported),
            "every 200-answered job completes: {job:?}"
        );
    }
    println!("{} accepted jobs, all completed", accepted.len());
}
