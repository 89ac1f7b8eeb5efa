//! Webhook delivery (CONTRACT §6), end to end: the worker delivers signed events to receivers
//! the sim plays, retries what fails through the retry tiers, disables an endpoint that
//! answers 410, keeps a silent receiver from holding up the others, and never calls an
//! address the policy refuses.

use refresh_shared::{
    job::CategoryState,
    settings::WebhookSettings,
    store::JobRecord,
    token::PERMISSION_WEBHOOKS_MANAGE,
    webhook::{UrlPolicy, WebhookEvent},
};
use refresh_tests::{Answer, DEADLINE, TestStack, wait_until};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::{
    collections::BTreeSet,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// Receivers are the sim, on plain http at 127.0.0.1; attempts come again after 1 s, twice.
fn delivering() -> Vec<(&'static str, String)> {
    vec![
        ("WEBHOOK_ALLOW_INSECURE", "true".to_owned()),
        ("WEBHOOK_RETRY_TIERS_SECS", "1,1".to_owned()),
    ]
}

/// What the sim's receiver recorded of one delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Received {
    webhook_id: String,
    webhook_timestamp: String,
    webhook_signature: String,
    content_type: String,
    body: String,
    at: String,
    status: Option<u16>,
    verified: bool,
}

impl Received {
    fn body(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }

    fn arrived(&self) -> OffsetDateTime {
        OffsetDateTime::parse(&self.at, &Rfc3339).expect("an RFC 3339 time")
    }
}

struct Hooks<'a> {
    stack: &'a TestStack,
    manager: String,
}

impl<'a> Hooks<'a> {
    async fn new(stack: &'a TestStack) -> Hooks<'a> {
        let manager = stack.token_with(&[PERMISSION_WEBHOOKS_MANAGE]).await;
        Hooks { stack, manager }
    }

    fn url(&self, organization: &str) -> String {
        format!(
            "{}/v1/organizations/{organization}/mdm/windows/enterprise/webhooks",
            self.stack.api
        )
    }

    /// Adds an endpoint delivering `events` to the sim's receiver `name`, set up to answer
    /// as `plan` says; its id and secret.
    async fn receiver(&self, name: &str, events: &[WebhookEvent], plan: Value) -> (String, String) {
        let url = format!("{}/hooks/{name}", self.stack.sim.url());
        let events: Vec<&str> = events.iter().map(|event| event.as_str()).collect();
        let body = json!({ "url": url, "events": events });
        let added = Answer::of(
            (self.stack.http)
                .post(self.url(&self.stack.org_id()))
                .bearer_auth(&self.manager)
                .json(&body),
        )
        .await;
        assert_eq!(added.status, StatusCode::CREATED, "{:?}", added.body);
        let id = added.body["data"]["id"].as_str().expect("an id").to_owned();
        let secret = (added.body["data"]["secret"].as_str())
            .expect("a secret")
            .to_owned();
        let mut plan = plan;
        plan["name"] = json!(name);
        plan["secret"] = json!(secret);
        let set = self.stack.sim("/_sim/receivers", Some(plan)).await;
        assert_eq!(set["status"], true, "{set:?}");
        (id, secret)
    }

    async fn received(&self, name: &str) -> Vec<Received> {
        let got = self
            .stack
            .sim(&format!("/_sim/receivers/{name}"), None)
            .await;
        serde_json::from_value(got).expect("received webhooks")
    }

    /// Waits until receiver `name` got at least `count` deliveries; returns them all.
    async fn wait_received(&self, name: &str, count: usize) -> Vec<Received> {
        wait_until(
            &format!("{count} deliveries to {name}"),
            DEADLINE,
            || async {
                let got = self.received(name).await;
                (got.len() >= count).then_some(got)
            },
        )
        .await
    }

    async fn deliveries_as(&self, token: &str, organization: &str, id: &str) -> Answer {
        let url = format!("{}/{id}/deliveries", self.url(organization));
        Answer::of(self.stack.http.get(url).bearer_auth(token)).await
    }

    /// The endpoint's deliveries log, newest first.
    async fn deliveries(&self, id: &str) -> Vec<Value> {
        let answer = self
            .deliveries_as(&self.manager, &self.stack.org_id(), id)
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        answer.body["data"]["deliveries"]
            .as_array()
            .expect("deliveries")
            .clone()
    }

    async fn endpoint_state(&self, id: &str) -> String {
        let answer = Answer::of(
            (self.stack.http)
                .get(self.url(&self.stack.org_id()))
                .bearer_auth(&self.manager),
        )
        .await;
        let endpoints = answer.body["data"].as_array().expect("endpoints").clone();
        let endpoint = endpoints
            .iter()
            .find(|endpoint| endpoint["id"] == id)
            .expect("the endpoint");
        endpoint["state"].as_str().expect("a state").to_owned()
    }

    /// `GET …/refresh-jobs/{id}`'s `data`.
    async fn job_as_shown(&self, job: &str) -> Value {
        let url = self.stack.job_url(&self.stack.org_id(), job);
        let answer = Answer::of(self.stack.http.get(url).bearer_auth(&self.stack.token)).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        answer.body["data"].clone()
    }
}

/// Verifies every delivery's signature with the `standardwebhooks` package (PyPI), an
/// implementation of the specification that is not ours: `STANDARDWEBHOOKS_PYTHON` names a
/// Python that imports it (`scripts/test` installs one).
fn verified_by_standardwebhooks(secret: &str, received: &[Received]) -> usize {
    let python = std::env::var("STANDARDWEBHOOKS_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let messages: Vec<Value> = received
        .iter()
        .map(|r| {
            json!({
                "body": r.body,
                "headers": {
                    "webhook-id": r.webhook_id,
                    "webhook-timestamp": r.webhook_timestamp,
                    "webhook-signature": r.webhook_signature,
                },
            })
        })
        .collect();
    let file = std::env::temp_dir().join(format!("webhooks-{}.json", bson::oid::ObjectId::new()));
    std::fs::write(&file, serde_json::to_vec(&messages).unwrap()).unwrap();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
hook = Webhook(sys.argv[1])
messages = json.load(open(sys.argv[2]))
for message in messages:
    hook.verify(message["body"], message["headers"])
print(len(messages))
"#;
    let output = Command::new(&python)
        .args(["-c", script, secret, file.to_str().unwrap()])
        .output()
        .expect(
            "python runs (scripts/test installs standardwebhooks; or set STANDARDWEBHOOKS_PYTHON)",
        );
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "standardwebhooks refused a delivery: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("a count")
}

/// Asserts that `received` holds one `job.finished` whose data is the job as its GET shows it
/// (`job`), and one `category.reported` per category of `categories`, each its entry of the
/// job.
fn assert_announced_as_shown(received: &[Received], job: &Value, categories: &[&str]) {
    let of_type = |event: WebhookEvent| -> Vec<&Received> {
        received
            .iter()
            .filter(|r| r.body()["type"] == event.as_str())
            .collect()
    };
    let finished = of_type(WebhookEvent::JobFinished);
    assert_eq!(finished.len(), 1, "{received:#?}");
    assert_eq!(
        &finished[0].body()["data"],
        job,
        "the job as its GET shows it"
    );
    assert_eq!(finished[0].body()["timestamp"], job["updatedAt"]);
    let reported = of_type(WebhookEvent::CategoryReported);
    assert_eq!(reported.len(), categories.len(), "{received:#?}");
    let mut named = BTreeSet::new();
    for webhook in &reported {
        let data = webhook.body()["data"].clone();
        let category = data["category"].as_str().expect("a category").to_owned();
        let mut expected = job["categories"][&category].clone();
        for (field, value) in [
            ("jobId", &job["id"]),
            ("organizationId", &job["organizationId"]),
            ("deviceId", &job["deviceId"]),
        ] {
            expected[field] = value.clone();
        }
        expected["category"] = json!(category);
        assert_eq!(data, expected, "the category's entry of the job");
        named.insert(category);
    }
    assert_eq!(named, categories.iter().map(|c| (*c).to_owned()).collect());
}

#[tokio::test]
async fn a_receiver_gets_each_category_reported_and_the_job_finished_signed_and_as_the_job_shows_them()
 {
    let stack = TestStack::start_with(&delivering()).await;
    let hooks = Hooks::new(&stack).await;
    let (endpoint, secret) = hooks.receiver("all", &WebhookEvent::ALL, json!({})).await;
    let device = stack.device().await;
    let categories = ["hardware", "applications", "certificates"];
    let (job_id, _) = stack.settled_refresh(&device, &categories).await;

    let received = hooks.wait_received("all", 4).await;
    let job = hooks.job_as_shown(&job_id).await;
    assert_announced_as_shown(&received, &job, &categories);
    let ids: BTreeSet<&str> = received.iter().map(|r| r.webhook_id.as_str()).collect();
    assert_eq!(ids.len(), 4, "one message id per event: {ids:?}");
    for webhook in &received {
        assert_eq!(webhook.content_type, "application/json");
        assert!(webhook.verified, "the sim's check of {webhook:?}");
    }
    assert_eq!(verified_by_standardwebhooks(&secret, &received), 4);

    // Nothing more comes, and the log shows each delivered at the first attempt.
    let log = hooks.deliveries(&endpoint).await;
    assert_eq!(log.len(), 4, "{log:#?}");
    for delivery in &log {
        assert_eq!(delivery["state"], "delivered", "{delivery}");
        assert_eq!(
            delivery["attempts"].as_array().unwrap().len(),
            1,
            "{delivery}"
        );
        assert_eq!(delivery["attempts"][0]["status"], 200, "{delivery}");
    }
    assert_eq!(hooks.received("all").await.len(), 4);
}

#[tokio::test]
async fn a_category_reported_before_its_push_is_recorded_is_announced_with_the_push() {
    // The pushes wait for the test to see the report applied: time enough on a slow machine.
    let mut settings = delivering();
    settings.push(("PUSH_TIMEOUT_MS", "15000".to_owned()));
    let stack = TestStack::start_with(&settings).await;
    let hooks = Hooks::new(&stack).await;
    hooks.receiver("all", &WebhookEvent::ALL, json!({})).await;
    let device = stack.device().await;
    // The gateway delivers the wake-up but keeps the worker waiting for its answer: the
    // device's report is applied while its categories are still `pushing`.
    stack
        .fault(json!({ "mode": "fault", "holdAnswers": true }))
        .await;
    let categories = ["hardware", "os"];
    let job_id = stack.refresh_device(&device, &categories).await.job_id();
    let reported_first = |job: &JobRecord| {
        job.categories
            .values()
            .all(|c| c.state == CategoryState::Reported && c.pushed_at.is_none())
    };
    let what = "the report applied before the push is recorded";
    wait_until(what, DEADLINE, || async {
        reported_first(&stack.job(&job_id).await).then_some(())
    })
    .await;
    let released = stack.sim("/_sim/release", Some(json!({}))).await;
    assert_eq!(released["status"], true, "{released:?}");

    stack.wait_for_settled_job(&job_id).await;
    let received = hooks.wait_received("all", 3).await;
    let job = hooks.job_as_shown(&job_id).await;
    for category in categories {
        let entry = &job["categories"][category];
        assert_eq!(entry["gateway"], "agent", "{job:#}");
        assert_eq!(entry["attempts"], 1, "{job:#}");
        let time = |field: &str| {
            let text = entry[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field} in {job:#}"));
            OffsetDateTime::parse(text, &Rfc3339).expect("an RFC 3339 time")
        };
        assert!(time("reportedAt") < time("pushedAt"), "{job:#}");
    }
    assert_announced_as_shown(&received, &job, &categories);
}

#[tokio::test]
async fn a_failing_receiver_gets_it_on_the_third_attempt_and_a_gone_one_is_disabled() {
    let stack = TestStack::start_with(&delivering()).await;
    let hooks = Hooks::new(&stack).await;
    let finished = [WebhookEvent::JobFinished];
    let (flaky, _) = hooks
        .receiver("flaky", &finished, json!({ "script": [503, 503] }))
        .await;
    let (gone, _) = hooks
        .receiver("gone", &finished, json!({ "status": 410 }))
        .await;
    let device = stack.device().await;
    let (first_job, _) = stack.settled_refresh(&device, &["os"]).await;

    let received = hooks.wait_received("flaky", 3).await;
    let statuses: Vec<Option<u16>> = received.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(503), Some(503), Some(200)], "{received:#?}");
    let ids: BTreeSet<&str> = received.iter().map(|r| r.webhook_id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one message, attempted three times: {ids:?}");
    assert_eq!(received[2].body()["data"]["id"], first_job.as_str());
    let log = wait_until("the third attempt to be logged", DEADLINE, || async {
        let log = hooks.deliveries(&flaky).await;
        (log.first().is_some_and(|d| d["state"] == "delivered")).then_some(log)
    })
    .await;
    assert_eq!(log.len(), 1, "{log:#?}");
    let attempts: Vec<&Value> = log[0]["attempts"].as_array().unwrap().iter().collect();
    let logged: Vec<&Value> = attempts.iter().map(|a| &a["status"]).collect();
    assert_eq!(logged, [&json!(503), &json!(503), &json!(200)], "{log:#?}");
    // The operator's view is the same log.
    let org = stack.organization.slug.clone();
    let listed = stack
        .refreshctl(&["webhook", "deliveries", "--org", &org, &flaky])
        .await;
    assert_eq!(listed[0]["messageId"], log[0]["messageId"], "{listed}");
    assert_eq!(listed[0]["state"], "delivered", "{listed}");
    let statuses: Vec<&Value> = listed[0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(statuses, logged, "{listed}");

    assert_eq!(hooks.wait_received("gone", 1).await[0].status, Some(410));
    wait_until("the gone endpoint to be disabled", DEADLINE, || async {
        (hooks.endpoint_state(&gone).await == "disabled").then_some(())
    })
    .await;
    // The next job's end reaches the flaky receiver, and the gone one no more.
    let (second_job, _) = stack.settled_refresh(&device, &["network"]).await;
    let received = hooks.wait_received("flaky", 4).await;
    assert_eq!(received[3].body()["data"]["id"], second_job.as_str());
    assert_eq!(
        hooks.received("gone").await.len(),
        1,
        "no attempt after the 410"
    );
    let gone_log = hooks.deliveries(&gone).await;
    assert!(
        gone_log
            .iter()
            .all(|d| d["attempts"].as_array().unwrap().len() <= 1),
        "{gone_log:#?}"
    );

    // Another organization sees none of it.
    let (other, other_manager) = stack.other_tenant_with(&[PERMISSION_WEBHOOKS_MANAGE]).await;
    for organization in [stack.org_id(), other.id.to_hex()] {
        let answer = hooks
            .deliveries_as(&other_manager, &organization, &flaky)
            .await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{:?}", answer.body);
    }
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_hold_up_another_endpoints_deliveries() {
    let timeout = Duration::from_secs(5);
    let mut settings = delivering();
    settings.extend([
        ("WEBHOOK_TIMEOUT_MS", timeout.as_millis().to_string()),
        ("WEBHOOK_CONCURRENCY", "4".to_owned()),
        ("WEBHOOK_ENDPOINT_CONCURRENCY", "2".to_owned()),
    ]);
    let stack = TestStack::start_with(&settings).await;
    let hooks = Hooks::new(&stack).await;
    hooks
        .receiver(
            "silent",
            &[WebhookEvent::CategoryReported],
            json!({ "neverAnswer": true }),
        )
        .await;
    hooks
        .receiver("prompt", &[WebhookEvent::JobFinished], json!({}))
        .await;
    // Fifteen deliveries for the silent receiver, five for the prompt one, all at once: with
    // four slots, the silent one would take every slot for the whole timeout, again and again.
    let devices = stack
        .devices(5, refresh_shared::device::DeviceState::Active, &[])
        .await;
    let mut jobs = Vec::new();
    for device in &devices {
        let answer = stack
            .refresh_device(device, &["hardware", "applications", "os"])
            .await;
        jobs.push(answer.job_id());
    }
    let received = hooks.wait_received("prompt", jobs.len()).await;
    for webhook in &received {
        let job = webhook.body()["data"].clone();
        let ended = OffsetDateTime::parse(job["updatedAt"].as_str().unwrap(), &Rfc3339).unwrap();
        let waited = webhook.arrived() - ended;
        assert!(
            waited < timeout,
            "job {} ended at {ended}, its webhook came {waited} later",
            job["id"]
        );
    }
    assert!(!hooks.received("silent").await.is_empty());
}

#[tokio::test]
async fn a_receiver_whose_address_is_not_public_is_never_called() {
    // The api and the worker admit only https URLs of public addresses; the endpoints were
    // added when their names resolved elsewhere (written here as an api admitting anything
    // would have).
    let stack = TestStack::start_with(&[("WEBHOOK_RETRY_TIERS_SECS", "1".to_owned())]).await;
    let hooks = Hooks::new(&stack).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    let counting = tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let anything = WebhookSettings {
        url_policy: UrlPolicy {
            allow_insecure: true,
        },
        ..stack.settings.webhooks.clone()
    };
    let mut endpoints = Vec::new();
    for url in [
        format!("https://localhost:{port}/hook"),
        format!("http://127.0.0.1:{port}/hook"),
        format!("https://[::ffff:127.0.0.1]:{port}/hook"),
    ] {
        let (endpoint, _) = stack
            .store
            .add_webhook(
                &anything,
                stack.organization.id,
                url.clone(),
                vec![WebhookEvent::JobFinished],
            )
            .await
            .expect("added");
        endpoints.push((url, endpoint.id.to_hex()));
    }
    let device = stack.device().await;
    stack.settled_refresh(&device, &["os"]).await;
    for (url, endpoint) in &endpoints {
        let log = wait_until(&format!("{url} to be given up"), DEADLINE, || async {
            let log = hooks.deliveries(endpoint).await;
            (log.first().is_some_and(|d| d["state"] == "failed")).then_some(log)
        })
        .await;
        let attempts = log[0]["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{url}: {log:#?}");
        for attempt in attempts {
            let error = attempt["error"].as_str().unwrap_or_default();
            assert!(
                error.contains("not a public address") || error.contains("must use https"),
                "{url}: {attempt}"
            );
            assert!(attempt["status"].is_null(), "{url}: {attempt}");
        }
        assert_eq!(hooks.endpoint_state(endpoint).await, "failing", "{url}");
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "a refused address was called"
    );
    counting.abort();
}

#[tokio::test]
async fn a_batch_and_a_canceled_job_announce_their_end_once_as_their_get_shows_them() {
    let stack = TestStack::start_with(&delivering()).await;
    let hooks = Hooks::new(&stack).await;
    hooks
        .receiver("batches", &[WebhookEvent::BatchFinished], json!({}))
        .await;
    hooks
        .receiver("jobs", &[WebhookEvent::JobFinished], json!({}))
        .await;
    let devices = stack
        .devices(3, refresh_shared::device::DeviceState::Active, &[])
        .await;
    let ids: Vec<String> = devices.iter().map(|d| d.id.to_hex()).collect();
    let batch_id = stack
        .bulk(&json!({ "info": ["os"], "deviceIds": ids }))
        .await
        .batch_id();
    stack.wait_for_batch(&batch_id, DEADLINE).await;
    let received = hooks.wait_received("batches", 1).await;
    let shown = {
        let url = format!("{}/{batch_id}", stack.batches_url(&stack.org_id()));
        Answer::of(stack.http.get(url).bearer_auth(&stack.token))
            .await
            .body["data"]
            .clone()
    };
    assert_eq!(received[0].body()["type"], "refresh.batch.finished");
    assert_eq!(
        received[0].body()["data"],
        shown,
        "the batch as its GET shows it"
    );
    // Each of its jobs announced its own end.
    let jobs = hooks.wait_received("jobs", 3).await;
    let states: BTreeSet<String> = jobs
        .iter()
        .map(|r| r.body()["data"]["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        states,
        BTreeSet::from(["completed".to_owned()]),
        "{jobs:#?}"
    );

    // A job its caller cancels ends `canceled`, announced by the api.
    stack.fault(json!({ "mode": "ok", "report": "off" })).await;
    let device = stack.device().await;
    let (job_id, _) = stack.pushed_refresh(&device, &["hardware"]).await;
    let url = stack.job_url(&stack.org_id(), &job_id);
    let canceled = Answer::of(stack.http.delete(url).bearer_auth(&stack.token)).await;
    assert_eq!(canceled.status, StatusCode::OK, "{:?}", canceled.body);
    let jobs = hooks.wait_received("jobs", 4).await;
    assert_eq!(jobs[3].body()["data"], hooks.job_as_shown(&job_id).await);
    assert_eq!(jobs[3].body()["data"]["state"], "canceled");

    // Nothing is announced twice: the batch once, each job once.
    let batch_ids = hooks.received("batches").await;
    assert_eq!(batch_ids.len(), 1, "{batch_ids:#?}");
    let jobs = hooks.received("jobs").await;
    let job_ids: BTreeSet<&str> = jobs.iter().map(|r| r.webhook_id.as_str()).collect();
    assert_eq!((jobs.len(), job_ids.len()), (4, 4), "{jobs:#?}");
}
