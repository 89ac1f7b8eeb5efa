//! What operators use (issue 4): queue depths on /metrics, `GET /v1/ops/queues` and
//! `refreshctl queues`, dead letters listed and replayed, `refreshctl bulk`, the audit trail.

use lapin::{
    BasicProperties, Connection,
    options::{BasicGetOptions, BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions},
};
use refresh_shared::{
    broker::Topology,
    device::DeviceState,
    job::Lane,
    store::{self, AuditEvent},
    token::{PERMISSION_DEVICE_INFO, PERMISSION_OPS_QUEUES},
};
use refresh_tests::{Answer, DEADLINE, TestStack, sample, wait_until};
use refresh_worker::settings::WorkQueue;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn broker(stack: &TestStack) -> Connection {
    refresh_shared::broker::connect(&stack.settings.core.amqp.url, "refresh-tests")
        .await
        .expect("connect to RabbitMQ")
}

/// Puts `count` messages in the dead queue, as a worker's rejections would, and returns once the
/// broker has confirmed each (without confirms a count read at once may miss the last ones).
async fn dead_letters(stack: &TestStack, count: usize) {
    let connection = broker(stack).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let topology = Topology::new(&stack.settings.core.amqp);
    for n in 0..count {
        let confirmation = channel
            .basic_publish(
                topology.dead_exchange().into(),
                "".into(),
                BasicPublishOptions::default(),
                format!("poison {n}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirmation.is_ack(), "{confirmation:?}");
    }
    connection.close(200, "bye".into()).await.unwrap();
}

/// `rabbitmqctl list_queues`' count of `queue`: the broker's own figure, by another road.
fn rabbitmqctl_messages(queue: &str) -> u64 {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "--quiet",
            "--no-table-headers",
            "name",
            "messages",
        ])
        .output()
        .expect("run rabbitmqctl");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(queue)).then(|| fields.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("rabbitmqctl does not list {queue}"))
}

/// The value of `metric` with `queue="…"` in a Prometheus text page.
fn gauge(page: &str, metric: &str, queue: &str) -> Option<f64> {
    sample(page, metric, &format!("queue=\"{queue}\""))
}

#[tokio::test]
async fn metrics_show_the_brokers_queue_depths() {
    let stack = TestStack::start().await;
    dead_letters(&stack, 7).await;
    let topology = Topology::new(&stack.settings.core.amqp);
    let dead = topology.dead_queue();
    // rabbitmqctl reports quorum queue counts from statistics a few seconds old: the quiet
    // moment is when it has caught up.
    let broker_count = wait_until(
        "rabbitmqctl to count the dead letters",
        DEADLINE,
        || async {
            let count = rabbitmqctl_messages(&dead);
            (count == 7).then_some(count)
        },
    )
    .await;
    // One process of the deployment shows the depths, so that sums over processes are right:
    // here the api or the worker, whichever claimed it first.
    let pages = [
        stack.metrics(&stack.api).await,
        stack.metrics(&stack.worker).await,
    ];
    let showing: Vec<&String> = pages
        .iter()
        .filter(|page| page.contains("refresh_queue_messages_ready{"))
        .collect();
    assert_eq!(showing.len(), 1, "one page of the two:\n{pages:?}");
    let page = showing[0];
    assert_eq!(
        gauge(page, "refresh_queue_messages_ready", &dead),
        Some(broker_count as f64),
        "{page}"
    );
    for (queue, _) in topology.queues() {
        assert!(
            gauge(page, "refresh_queue_messages_ready", &queue).is_some(),
            "{queue}"
        );
    }
    let consumers = gauge(
        page,
        "refresh_queue_consumers",
        &topology.jobs_queue(Lane::Interactive),
    );
    assert_eq!(consumers, Some(1.0), "the stack's worker");
}

#[tokio::test]
async fn ops_queues_needs_its_permission_and_lists_every_queue() {
    let stack = TestStack::start().await;
    dead_letters(&stack, 2).await;
    let url = format!("{}/v1/ops/queues", stack.api);
    let answer = Answer::of(stack.http.get(&url).bearer_auth(&stack.token)).await;
    assert_eq!(
        (answer.status, answer.error_code()),
        (StatusCode::FORBIDDEN, 4003)
    );
    let ops = stack.token_with(&[PERMISSION_OPS_QUEUES]).await;
    let answer = Answer::of(stack.http.get(&url).bearer_auth(&ops)).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let queues = answer.body["data"]["queues"].as_array().unwrap().clone();
    let topology = Topology::new(&stack.settings.core.amqp);
    assert_eq!(queues.len(), topology.queues().len());
    let dead = queues
        .iter()
        .find(|q| q["name"] == json!(topology.dead_queue()))
        .unwrap();
    assert_eq!(
        (dead["role"].clone(), dead["ready"].clone()),
        (json!("dead"), json!(2))
    );

    let cli = stack.refreshctl(&["queues"]).await;
    let listed = cli["queues"].as_array().unwrap();
    assert_eq!(listed.len(), queues.len());
    assert!(
        listed
            .iter()
            .any(|q| q["name"] == json!(topology.dead_queue()) && q["ready"] == json!(2))
    );
}

#[tokio::test]
async fn a_dead_job_is_listed_with_its_reason_and_replayed_to_completion() {
    // No interactive consumer at first: the job waits until the test rejects it, as a worker
    // that cannot process it would.
    let stack =
        TestStack::start_with(&[("WORKER_QUEUES", "bulk,batches,reports,deadlines".to_owned())])
            .await;
    let device = stack.device().await;
    let job_id = stack
        .refresh_device(&device, &["certificates"])
        .await
        .job_id();
    let topology = Topology::new(&stack.settings.core.amqp);
    let connection = broker(&stack).await;
    let channel = connection.create_channel().await.unwrap();
    let message = channel
        .basic_get(
            topology.jobs_queue(Lane::Interactive).into(),
            BasicGetOptions::default(),
        )
        .await
        .unwrap()
        .expect("the job waits in the interactive queue");
    message
        .delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();

    let listed = wait_until("the dead letter", DEADLINE, || async {
        let listed = stack.refreshctl(&["dead-letters", "list"]).await;
        (listed["deadLetters"].as_array()?.len() == 1).then_some(listed)
    })
    .await;
    let letter = &listed["deadLetters"][0];
    assert_eq!(letter["messageId"], json!(job_id));
    assert_eq!(letter["reason"], json!("rejected"));
    assert_eq!(
        letter["queue"],
        json!(topology.jobs_queue(Lane::Interactive))
    );
    assert!(
        letter["summary"].as_str().unwrap().contains("certificates"),
        "{letter}"
    );
    // Listing leaves it there.
    let again = stack.refreshctl(&["dead-letters", "list"]).await;
    assert_eq!(again["deadLetters"].as_array().unwrap().len(), 1);

    let replayed = stack
        .refreshctl(&["dead-letters", "replay", "--id", &job_id])
        .await;
    assert_eq!(
        replayed["replayed"].as_array().unwrap().len(),
        1,
        "{replayed}"
    );
    let left = stack.refreshctl(&["dead-letters", "list"]).await;
    assert_eq!(left["deadLetters"], json!([]));

    // A worker for the interactive lane now completes it.
    let mut settings = stack.settings.clone();
    settings.worker.queues = vec![WorkQueue::Interactive];
    settings.worker.addr = "127.0.0.1:0".parse().unwrap();
    let worker = refresh_worker::Worker::build(settings).await.unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(worker.run_until_stopped(stop.clone().cancelled_owned()));
    let job = stack.wait_for_settled_job(&job_id).await;
    assert_eq!(job.state(), refresh_shared::job::JobState::Completed);
    assert_eq!(stack.pushes_for_job(&job_id).await.len(), 1);
    stop.cancel();
    connection.close(200, "bye".into()).await.unwrap();
}

#[tokio::test]
async fn refreshctl_bulk_follows_a_batch_to_its_summary() {
    let stack = TestStack::start().await;
    let devices = stack.devices(3, DeviceState::Active, &["kiosk"]).await;
    let file = std::env::temp_dir().join(format!("ids-{}.txt", stack.org_id()));
    let mut lines: Vec<String> = devices.iter().map(|d| d.id.to_hex()).collect();
    lines.extend([
        "# a comment".to_owned(),
        String::new(),
        "UNKNOWN_SERIAL".to_owned(),
    ]);
    std::fs::write(&file, lines.join("\n")).unwrap();

    let slug = stack.organization.slug.clone();
    let path = file.to_string_lossy().to_string();
    let by_file = stack
        .refreshctl(&[
            "bulk",
            "--org",
            &slug,
            "--info",
            "hardware,os",
            "--file",
            &path,
        ])
        .await;
    assert_eq!(by_file["state"], json!("completed"), "{by_file}");
    assert_eq!(by_file["total"], json!(4));
    assert_eq!(by_file["counts"]["reported"], json!(3));
    assert_eq!(by_file["counts"]["skipped"]["notFound"], json!(1));
    assert_eq!(stack.pushes().await.len(), 6);

    let by_tag = stack
        .refreshctl(&[
            "bulk", "--org", &slug, "--info", "network", "--state", "ACTIVE", "--tag", "kiosk",
        ])
        .await;
    assert_eq!(by_tag["state"], json!("completed"), "{by_tag}");
    assert_eq!(
        (
            by_tag["total"].clone(),
            by_tag["counts"]["reported"].clone()
        ),
        (json!(3), json!(3))
    );

    let refused = stack
        .refreshctl_output(&["bulk", "--org", &slug, "--info", "bios", "--tag", "kiosk"])
        .await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("1001") && stderr.contains("unknown category"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn every_accepted_refresh_and_batch_is_audited() {
    let stack = TestStack::start().await;
    let device = stack.device().await;
    let (job_id, _) = stack.settled_refresh(&device, &["security"]).await;
    let batch_id = stack
        .bulk(&json!({ "info": ["os"], "deviceIds": [device.id.to_hex()] }))
        .await
        .batch_id();
    let refused = stack.refresh_device(&device, &["bios"]).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);

    // Records are written off the request path, a moment after the answer.
    wait_until("two audit records", DEADLINE, || async {
        let stored = stack
            .collection::<store::AuditEvent>(store::AUDIT_EVENTS)
            .count_documents(bson::doc! {})
            .await;
        (stored.unwrap() >= 2).then_some(())
    })
    .await;
    let events: Vec<AuditEvent> = futures::TryStreamExt::try_collect(
        stack
            .collection::<store::AuditEvent>(store::AUDIT_EVENTS)
            .find(bson::doc! {})
            .sort(bson::doc! { "at": 1 })
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    let token_id = stack.collection::<store::ApiToken>(store::TOKENS)
        .find_one(bson::doc! { "organization": stack.organization.id, "permissions": PERMISSION_DEVICE_INFO })
        .await
        .unwrap()
        .unwrap()
        .id;
    let (refresh, batch) = (&events[0], &events[1]);
    assert_eq!(stored(&refresh.action).as_deref(), Some("refresh"));
    assert_eq!(refresh.answer.map(|id| id.to_hex()), Some(job_id));
    assert_eq!(refresh.device, Some(device.id));
    assert_eq!(stored(&batch.action).as_deref(), Some("bulk_refresh"));
    assert_eq!(batch.answer.map(|id| id.to_hex()), Some(batch_id));
    assert_eq!(batch.devices, Some(1));
    for event in [refresh, batch] {
        assert_eq!(event.organization, stack.organization.id);
        assert_eq!(event.token, token_id);
        assert_eq!(stored(&event.result).as_deref(), Some("accepted"));
        assert!(event.client_addr.starts_with("127.0.0.1:"), "{event:?}");
    }
    let value: Value = serde_json::to_value(&refresh.categories).unwrap();
    assert_eq!(value, json!(["security"]));
}

/// A value as MongoDB stores it (what an audit query filters on), when it is a string.
fn stored(value: &impl serde::Serialize) -> Option<String> {
    bson::to_bson(value).ok()?.as_str().map(str::to_owned)
}
