//! `/openapi.json` against the running api: the document and the router agree, and schemathesis,
//! generating requests from the document (valid and invalid), finds no 5xx and no answer the
//! document does not describe.

use refresh_shared::{
    store::Device,
    token::{
        PERMISSION_DEVICE_INFO, PERMISSION_DEVICE_READ, PERMISSION_OPS_QUEUES,
        PERMISSION_WEBHOOKS_MANAGE,
    },
};
use refresh_tests::{Answer, TestStack};
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use std::{collections::BTreeSet, process::Command, time::Duration};

/// The product's routes: the contract's endpoint, status and health routes, the operators'
/// queue route, bulk refresh (issue 4) and the document itself.
const ROUTES: &[(&str, &str)] = &[
    (
        "post",
        "/v1/organizations/{organizationId}/mdm/windows/enterprise/devices/{winDeviceId}/info",
    ),
    (
        "get",
        "/v1/organizations/{organizationId}/mdm/windows/enterprise/refresh-jobs/{jobId}",
    ),
    (
        "delete",
        "/v1/organizations/{organizationId}/mdm/windows/enterprise/refresh-jobs/{jobId}",
    ),
    (
        "post",
        "/v1/organizations/{organizationId}/mdm/windows/enterprise/refresh-batches",
    ),
    (
        "get",
        "/v1/organizations/{organizationId}/mdm/windows/enterprise/refresh-batches/{batchId}",
    ),
    (
        "delete",
        "/v1/organizations/{organizationId}/mdm/windows/enterprise/refresh-batches/{batchId}",
    ),
    (
        "get",
        "/v1/organizations/{organizationId}/mdm/windows/enterprise/devices/{winDeviceId}/inventory",
    ),
    (
        "get",
        "/v1/organizations/{organizationId}/mdm/windows/enterprise/devices/{winDeviceId}/refresh-jobs",
    ),
    (
        "post",
        "/v1/organizations/{organizationId}/mdm/windows/enterprise/webhooks",
    ),
    (
        "get",
        "/v1/organizations/{organizationId}/mdm/windows/enterprise/webhooks/{webhookId}/deliveries",
    ),
    (
        "get",
        "/v1/organizations/{organizationId}/mdm/windows/enterprise/webhooks",
    ),
    (
        "delete",
        "/v1/organizations/{organizationId}/mdm/windows/enterprise/webhooks/{webhookId}",
    ),
    ("get", "/v1/ops/queues"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

/// The methods a path item may list, as the document spells them.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

fn http_method(documented: &str) -> Method {
    Method::from_bytes(documented.to_uppercase().as_bytes()).expect("a method")
}

async fn document(stack: &TestStack) -> Value {
    let answer = Answer::of(stack.http.get(format!("{}/openapi.json", stack.api))).await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(
        answer.headers[header::CONTENT_TYPE],
        "application/json",
        "the document's content type"
    );
    answer.body
}

/// Every `(method, path)` the document lists.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("a path item");
            methods
                .keys()
                .filter(|key| METHODS.contains(&key.as_str()))
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect()
}

/// What the requests name: a token for every route, a device, one of its jobs and a batch (both
/// still open: the device does not report, so they can be canceled).
struct Seeded {
    token: String,
    device: Device,
    job: String,
    batch: String,
    webhook: String,
}

impl Seeded {
    async fn in_stack(stack: &TestStack) -> Seeded {
        let token = stack
            .token_with(&[
                PERMISSION_DEVICE_INFO,
                PERMISSION_DEVICE_READ,
                PERMISSION_OPS_QUEUES,
                PERMISSION_WEBHOOKS_MANAGE,
            ])
            .await;
        let device = stack.device().await;
        stack.fault(json!({ "mode": "ok", "report": "off" })).await;
        let job = stack.refresh_device(&device, &["hardware"]).await.job_id();
        let batch = stack
            .bulk(&json!({ "info": ["os"], "deviceIds": [device.id.to_hex()] }))
            .await
            .batch_id();
        let url = format!(
            "{}/v1/organizations/{}/mdm/windows/enterprise/webhooks",
            stack.api,
            stack.org_id()
        );
        let body =
            json!({ "url": "https://93.184.216.34/hook", "events": ["refresh.job.finished"] });
        let added = Answer::of(stack.http.post(url).bearer_auth(&token).json(&body)).await;
        let webhook = added.body["data"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("a webhook added: {:?}", added.body))
            .to_owned();
        Seeded {
            token,
            device,
            job,
            batch,
            webhook,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_and_the_router_agree() {
    let stack = TestStack::start().await;
    let document = document(&stack).await;
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|version| version.starts_with("3.1.")),
        "OpenAPI 3.1: {}",
        document["openapi"]
    );

    // Every route documented, and nothing documented that is not a route of the product.
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(operations(&document), expected);

    // Every documented operation is served: real ids in the path, the document's own example as
    // the body, and the answer is the operation's documented success.
    let Seeded {
        token,
        device,
        job,
        batch,
        webhook,
    } = Seeded::in_stack(&stack).await;
    // Deletes last: removing the seeded webhook would leave its deliveries route nothing to
    // find.
    let (deletes, others): (Vec<_>, Vec<_>) = operations(&document)
        .into_iter()
        .partition(|(method, _)| method == "delete");
    for (method, path) in others.into_iter().chain(deletes) {
        let operation = &document["paths"][&path][&method];
        let url = path
            .replace("{organizationId}", &stack.organization.slug)
            .replace(
                "{winDeviceId}",
                device.summary.serial_number.as_deref().expect("serial"),
            )
            .replace("{jobId}", &job)
            .replace("{batchId}", &batch)
            .replace("{webhookId}", &webhook);
        let mut request = stack
            .http
            .request(http_method(&method), format!("{}{url}", stack.api))
            .bearer_auth(&token);
        if let Some(body) =
            operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str()
        {
            let schema = body.rsplit('/').next().expect("a schema name");
            let example = &document["components"]["schemas"][schema]["examples"][0];
            assert!(example.is_object(), "{schema} has an example");
            request = request.json(example);
        }
        let response = request.send().await.expect("an answer");
        let status = response.status();
        let content_type = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ASCII")
            .split(';')
            .next()
            .expect("an essence")
            .to_owned();
        let body = response.text().await.expect("a body");
        assert!(status.is_success(), "{method} {url}: {status} {body}");
        let documented = &operation["responses"][status.as_str()];
        assert!(
            documented["content"][&content_type].is_object(),
            "{method} {path} answered {status} {content_type}, which it does not document"
        );
    }

    // No documented path serves a method the document does not list: 405 in the envelope, with
    // an `Allow` naming exactly the documented method.
    for path in document["paths"].as_object().expect("paths").keys() {
        let url = path
            .replace("{organizationId}", &stack.organization.slug)
            .replace("{winDeviceId}", "SN1")
            .replace("{jobId}", &job)
            .replace("{batchId}", &batch)
            .replace("{webhookId}", &webhook);
        let documented = &document["paths"][path];
        for method in METHODS.iter().filter(|m| !documented[**m].is_object()) {
            let request = stack
                .http
                .request(http_method(method), format!("{}{url}", stack.api));
            let answer = Answer::of(request).await;
            assert_eq!(
                (answer.status, answer.error_code()),
                (StatusCode::METHOD_NOT_ALLOWED, 4050),
                "{method} {path}"
            );
            let allowed: Vec<&str> = documented
                .as_object()
                .expect("a path item")
                .keys()
                .filter(|key| METHODS.contains(&key.as_str()))
                .map(String::as_str)
                .collect();
            assert_eq!(
                answer.headers[header::ALLOW]
                    .to_str()
                    .expect("ASCII")
                    .to_lowercase()
                    .split(',')
                    .map(str::trim)
                    .filter(|m| *m != "head")
                    .collect::<Vec<_>>(),
                allowed,
                "Allow of {path}"
            );
        }
    }

    // Paths next to the documented ones are no routes.
    for path in [
        "/",
        "/v1",
        "/v1/ops",
        "/v1/ops/queues/extra",
        "/openapi.yaml",
        "/v1/organizations/acme/mdm/windows/enterprise/devices",
        "/v1/organizations/acme/mdm/windows/enterprise/devices/SN1",
        "/v1/organizations/acme/mdm/windows/enterprise/devices/SN1/info/extra",
        "/v1/organizations/acme/mdm/windows/enterprise/refresh-jobs",
    ] {
        let answer = Answer::of(stack.http.get(format!("{}{path}", stack.api))).await;
        assert_eq!(
            (answer.status, answer.error_code()),
            (StatusCode::NOT_FOUND, 4040),
            "{path}"
        );
    }
}

/// The schemathesis command: `SCHEMATHESIS` (which `scripts/test` sets to the version it
/// installs), else `schemathesis` on the PATH.
fn schemathesis() -> Command {
    Command::new(std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".to_owned()))
}

/// Test cases per operation and phase: enough to reach every answer of every route, bounded so
/// the run takes seconds.
const EXAMPLES_PER_OPERATION: &str = "60";

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_5xx_and_no_answer_outside_the_document() {
    // Limits high enough that the fuzzer reaches the handlers, not only the rate limiter.
    let stack = TestStack::start_with(&[
        ("RATE_LIMIT_PER_SECOND", "10000".to_owned()),
        ("RATE_LIMIT_BURST", "10000".to_owned()),
    ])
    .await;
    let Seeded {
        token,
        device,
        job,
        batch,
        webhook,
    } = Seeded::in_stack(&stack).await;

    // Half of the generated values for each path parameter are ids that exist, so requests get
    // past the lookups into the handlers' deeper answers (200, 202, 409…).
    let quoted = |values: &[String]| {
        let values: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
        values.join(", ")
    };
    let config = format!(
        r#"
[dictionaries.organizations]
values = [{organizations}]
[dictionaries.devices]
values = [{devices}]
[dictionaries.jobs]
values = [{job:?}]
[dictionaries.batches]
values = [{batch:?}]
[dictionaries.webhooks]
values = [{webhook:?}]

[parameters]
"path.organizationId" = {{ dictionary = "organizations", probability = 0.5 }}
"path.winDeviceId" = {{ dictionary = "devices", probability = 0.5 }}
"path.jobId" = {{ dictionary = "jobs", probability = 0.5 }}
"path.batchId" = {{ dictionary = "batches", probability = 0.5 }}
"path.webhookId" = {{ dictionary = "webhooks", probability = 0.5 }}

# Every check runs (the default), but for these; checks set on the command line would
# override the per-operation ones below.
# `DELETE` of a job or a batch cancels it (CONTRACT §6): it stays readable, as `canceled`,
# which this check takes for a deleted resource still served.
[checks.use_after_free]
enabled = false

# A webhook URL must resolve to public addresses, which no schema can say: a generated URL
# that does not is refused with 400, which this check takes for a valid request rejected.
[[operations]]
include-path = "/v1/organizations/{{organizationId}}/mdm/windows/enterprise/webhooks"
include-method = "POST"
checks.positive_data_acceptance.enabled = false
"#,
        organizations = quoted(&[stack.organization.slug.clone(), stack.org_id()]),
        devices = quoted(&[
            device.id.to_hex(),
            device.summary.imei.clone().expect("imei"),
            device.summary.serial_number.clone().expect("serial"),
        ]),
    );
    let workdir = std::env::temp_dir().join(format!("schemathesis-{}", bson::oid::ObjectId::new()));
    std::fs::create_dir_all(&workdir).expect("a work directory");
    let config_file = workdir.join("schemathesis.toml");
    std::fs::write(&config_file, config).expect("the config");

    let run = tokio::task::spawn_blocking(move || {
        schemathesis()
            .current_dir(&workdir)
            .arg("--config-file")
            .arg(&config_file)
            .args(["--no-color", "run"])
            .arg(format!("{}/openapi.json", stack.api))
            .args(["--max-examples", EXAMPLES_PER_OPERATION])
            // One seed: a failure here reproduces with the same command.
            .args(["--seed", "20261126"])
            .args(["--request-timeout", "10"])
            .arg("--header")
            .arg(format!("Authorization: Bearer {token}"))
            .output()
    });
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("schemathesis finishes within 5 minutes")
        .expect("the run's thread")
        .expect("schemathesis runs (scripts/test installs it; or set SCHEMATHESIS)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    // It ran what it was asked to: every operation the document lists (but the document itself,
    // which it reads rather than tests), and many cases.
    let tested = ROUTES.len() - 1;
    assert!(
        stdout.contains(&format!(
            "Operations:       {tested} selected / {tested} total"
        )),
        "{stdout}"
    );
    // "  838 generated, 838 passed, 10 skipped"
    let generated: u64 = stdout
        .lines()
        .find_map(|line| line.trim().split_once(" generated, "))
        .and_then(|(count, _)| count.parse().ok())
        .unwrap_or(0);
    assert!(generated >= 500, "cases generated: {generated}\n{stdout}");
}
