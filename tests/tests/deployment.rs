//! Several processes of one deployment on one broker: what one of them learns about a
//! gateway holds for all, the queue gauges add up over them, and a process of a new version
//! tidies the database an earlier one left.

use futures::future::join_all;
use refresh_shared::{
    broker::Topology,
    device::DeviceState,
    job::Lane,
    store::{self, WnsChannel},
};
use refresh_tests::{Another, DEADLINE, TestStack, sample, wait_until};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

/// Pushes the worker at `base` has made to WNS, as its `/metrics` counts them.
async fn wns_pushes(stack: &TestStack, base: &str) -> f64 {
    let page = stack.metrics(base).await;
    sample(
        &page,
        "refresh_push_duration_seconds_count",
        "gateway=\"wns\"",
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wns_pause_one_worker_is_asked_for_stops_every_worker_pushing_to_that_channel() {
    let stack = TestStack::spawn_with(&[]).await;
    let other = stack.spawn_another("refresh-worker").await;
    // Nine devices behind one WNS channel: a pause of that channel holds them all.
    let devices =
        join_all((0..9).map(|_| stack.device_with(DeviceState::Active, false, true))).await;
    let channel = devices[0]
        .push
        .live_wns_channel()
        .expect("a channel")
        .to_owned();
    let shared =
        WnsChannel::new(&channel, &stack.settings.gateways.wns_channels).expect("admitted");
    for device in &devices[1..] {
        stack
            .store
            .replace_wns_channel(stack.organization.id, device.id, &shared)
            .await
            .unwrap();
    }
    stack
        .fault(json!({ "mode": "fault", "gateway": "wns", "script": [406], "retryAfter": 2 }))
        .await;

    // One worker hears the 406 (and waits it out)…
    let first = stack.refresh_device(&devices[0], &["hardware"]).await;
    assert_eq!(first.status, StatusCode::OK);
    let paused = wait_until("the 406", Duration::from_secs(20), || async {
        stack.pushes().await.into_iter().find(|p| p.status == 406)
    })
    .await;
    let before = [
        wns_pushes(&stack, &stack.worker).await,
        wns_pushes(&stack, &other.base).await,
    ];
    // …then both get work for the channel.
    let jobs = join_all(
        devices[1..]
            .iter()
            .map(|device| stack.refresh_device(device, &["hardware"])),
    )
    .await;
    assert!(jobs.iter().all(|job| job.status == StatusCode::OK));
    for job in std::iter::once(&first).chain(&jobs) {
        stack.wait_for_pushed_job(&job.job_id()).await;
    }

    let pushes = stack.pushes().await;
    let resumed = paused.time() + time::Duration::seconds(2);
    let early: Vec<_> = pushes
        .iter()
        .filter(|p| p.at != paused.at && p.time() < resumed)
        .collect();
    assert!(early.is_empty(), "pushed within the pause: {early:?}");
    assert_eq!(
        pushes.len(),
        10,
        "the held push once more, the others once: {pushes:?}"
    );
    let after = [
        wns_pushes(&stack, &stack.worker).await,
        wns_pushes(&stack, &other.base).await,
    ];
    println!("WNS pushes by each worker during the test: {before:?} then {after:?}");
    assert!(
        after[0] > before[0] && after[1] > before[1],
        "both workers pushed to the channel: {before:?} then {after:?}"
    );
}

/// The messages ready in `queue` on a `/metrics` page (none when the page does not show them).
fn ready_in(page: &str, queue: &str) -> f64 {
    sample(
        page,
        "refresh_queue_messages_ready",
        &format!("queue=\"{queue}\""),
    )
    .unwrap_or(0.0)
}

/// The messages ready in `queue` as the broker counts them (`refreshctl queues`).
async fn broker_ready(stack: &TestStack, queue: &str) -> f64 {
    let queues = stack.refreshctl(&["queues"]).await;
    queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == json!(queue))
        .expect("the queue")["ready"]
        .as_f64()
        .unwrap()
}

/// A stack whose workers (this many) leave the interactive lane alone, and `jobs` refreshes
/// waiting in it.
async fn jobs_waiting(jobs: usize, workers: usize) -> (TestStack, Vec<Another>) {
    let stack = TestStack::spawn_with(&[("WORKER_QUEUES", "bulk".to_owned())]).await;
    let others = join_all((1..workers).map(|_| stack.spawn_another("refresh-worker"))).await;
    let devices = join_all((0..jobs).map(|_| stack.device())).await;
    for device in &devices {
        let answer = stack.refresh_device(device, &["os"]).await;
        assert_eq!(answer.status, StatusCode::OK);
    }
    (stack, others)
}

#[tokio::test(flavor = "multi_thread")]
async fn summed_over_the_workers_the_queue_gauges_are_the_brokers_counts() {
    let (stack, mut others) = jobs_waiting(5, 2).await;
    let other = others.pop().expect("a second worker");
    let queue = Topology::new(&stack.settings.core.amqp).jobs_queue(Lane::Interactive);
    let broker = broker_ready(&stack, &queue).await;
    assert_eq!(broker, 5.0);

    let workers = [stack.worker.clone(), other.base.clone()];
    let pages = join_all(workers.iter().map(|worker| stack.metrics(worker))).await;
    let summed: f64 = pages.iter().map(|page| ready_in(page, &queue)).sum();
    assert_eq!(summed, broker, "summed over both workers");
    let reporters: Vec<bool> = pages
        .iter()
        .map(|page| sample(page, "refresh_queue_depth_reporter", "") == Some(1.0))
        .collect();
    assert_eq!(
        reporters.iter().filter(|r| **r).count(),
        1,
        "one reporter: {reporters:?}"
    );

    // The reporter goes: the other takes over.
    let survivor = if reporters[0] {
        stack.kill_worker();
        workers[1].clone()
    } else {
        drop(other);
        workers[0].clone()
    };
    wait_until(
        "the other worker to report the depths",
        DEADLINE,
        || async {
            let page = stack.metrics(&survivor).await;
            (ready_in(&page, &queue) == broker).then_some(())
        },
    )
    .await;
}

/// A real Prometheus (Debian's package), scraping the given api and workers every second with
/// the deployment's alert rules loaded; killed when dropped.
struct Prometheus {
    child: std::process::Child,
    url: String,
    dir: std::path::PathBuf,
}

impl Prometheus {
    async fn scraping(api: &str, workers: &[String]) -> Prometheus {
        let dir =
            std::env::temp_dir().join(format!("refresh-prometheus-{}", bson::oid::ObjectId::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let target = |base: &str| format!("'{}'", base.trim_start_matches("http://"));
        let workers: Vec<String> = workers.iter().map(|w| target(w)).collect();
        let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/prometheus/alerts.yml");
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{}']\n\
             scrape_configs:\n\
             - {{job_name: refresh-api, static_configs: [{{targets: [{}]}}]}}\n\
             - {{job_name: refresh-worker, static_configs: [{{targets: [{}]}}]}}\n",
            rules.display(),
            target(api),
            workers.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr = refresh_testkit::process::free_addr().expect("a free port");
        let child = std::process::Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run prometheus (Debian's prometheus package; scripts/test installs it)");
        Prometheus {
            child,
            url: format!("http://{addr}"),
            dir,
        }
    }

    /// Prometheus's answer to `query` now.
    async fn query(&self, http: &reqwest::Client, query: &str) -> Option<serde_json::Value> {
        let url = format!("{}/api/v1/query", self.url);
        let url = reqwest::Url::parse_with_params(&url, &[("query", query)]).ok()?;
        http.get(url).send().await.ok()?.json().await.ok()
    }

    /// The single value `query` evaluates to now, if it has one.
    async fn value(&self, http: &reqwest::Client, query: &str) -> Option<f64> {
        let answer = self.query(http, query).await?;
        answer["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scraping_the_deployment_sums_the_queue_depth_the_broker_counts() {
    let (stack, others) = jobs_waiting(3, 2).await;
    let queue = Topology::new(&stack.settings.core.amqp).jobs_queue(Lane::Interactive);
    let broker = broker_ready(&stack, &queue).await;
    assert_eq!(broker, 3.0);
    let workers: Vec<String> = std::iter::once(stack.worker.clone())
        .chain(others.iter().map(|other| other.base.clone()))
        .collect();
    let prometheus = Prometheus::scraping(&stack.api, &workers).await;
    let query = format!("sum(refresh_queue_messages_ready{{queue=\"{queue}\"}})");
    // Every process scraped, and the sum over them as the broker counts it.
    wait_until(
        "Prometheus to scrape the deployment",
        Duration::from_secs(60),
        || async {
            let up = prometheus
                .value(&stack.http, "count(up{job=~\"refresh-.*\"} == 1)")
                .await;
            let summed = prometheus.value(&stack.http, &query).await;
            (up == Some(3.0) && summed.is_some()).then_some(())
        },
    )
    .await;
    assert_eq!(prometheus.value(&stack.http, &query).await, Some(broker));
    let reporters = prometheus
        .value(&stack.http, "sum(refresh_queue_depth_reporter)")
        .await;
    assert_eq!(reporters, Some(1.0), "one process reports the depths");

    // The dashboard's queries are PromQL this Prometheus accepts.
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../deploy/grafana/device-refresh.json"))
            .expect("the dashboard is JSON");
    let queries = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|panel| panel["targets"].as_array().expect("targets"))
        .map(|target| target["expr"].as_str().expect("an expression"));
    for query in queries {
        let answer = prometheus.query(&stack.http, query).await;
        let status = answer.as_ref().map(|a| a["status"].clone());
        assert_eq!(status, Some(json!("success")), "{query}: {answer:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_apis_together_admit_an_organization_no_more_than_its_rate() {
    let stack = TestStack::spawn_with(&[
        ("ORG_RATE_LIMIT_PER_SECOND", "100".to_owned()),
        ("ORG_RATE_LIMIT_BURST", "10".to_owned()),
        ("RATE_LIMIT_PER_SECOND", "100000".to_owned()),
        ("RATE_LIMIT_BURST", "100000".to_owned()),
    ])
    .await;
    let other = stack.spawn_another("refresh-api").await;
    let device = stack.device().await.id.to_hex();
    let org = stack.org_id();
    let apis = [stack.api.clone(), other.base.clone()];
    // Eight clients for five seconds, four on each api. Their requests are admitted (or not)
    // before the body is read, and then refused as invalid: 400 is an admitted request, one
    // that costs the api little, so the clients can ask for far more than the limit.
    let window = Duration::from_secs(5);
    let started = std::time::Instant::now();
    let clients = (0..8).map(|client| {
        let url = TestStack::refresh_url_at(&apis[client % 2], &org, &device);
        let stack = &stack;
        async move {
            let mut answers = Vec::new();
            while started.elapsed() < window {
                let request = stack
                    .http
                    .post(&url)
                    .bearer_auth(&stack.token)
                    .json(&json!({ "info": [] }));
                answers.push(refresh_tests::Answer::of(request).await.status);
            }
            answers
        }
    });
    let answers: Vec<StatusCode> = join_all(clients).await.into_iter().flatten().collect();
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = answers
        .iter()
        .filter(|s| **s == StatusCode::BAD_REQUEST)
        .count();
    let refused = answers
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    let rate = admitted as f64 / elapsed;
    println!(
        "{} answers in {elapsed:.2} s over two apis: {admitted} admitted ({rate:.1}/s), {refused} refused",
        answers.len()
    );
    assert_eq!(admitted + refused, answers.len(), "only 400 or 429");
    assert!(refused > 0, "the clients asked for more than the limit");
    assert!(rate <= 110.0, "{rate:.1} admitted a second, limit 100");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_on_jobs_that_no_query_reads_is_dropped_when_a_process_of_a_new_version_starts() {
    let stack = TestStack::spawn_with(&[]).await;
    let jobs = stack.collection::<bson::Document>(store::JOBS);
    // As an earlier version left it: every job written paid an entry in it.
    let retired = mongodb::IndexModel::builder()
        .keys(bson::doc! { "device": 1, "organization": 1, "createdAt": -1 })
        .build();
    let name = jobs
        .create_index(retired)
        .await
        .expect("the earlier version's index")
        .index_name;

    let _upgraded = stack.spawn_another("refresh-worker").await;
    let names = jobs.list_index_names().await.expect("the jobs' indexes");
    assert!(!names.contains(&name), "{name} is still there: {names:?}");
    // What a device's history reads is still indexed.
    assert!(
        names
            .iter()
            .any(|index| index == "device_1_organization_1__id_-1"),
        "{names:?}"
    );
}
