//! The HTTP calls a test makes: the api's routes with the stack's token, the sim's record and
//! fault plan, and reading an answer.

use crate::{
    TestStack,
    wait::{DEADLINE, wait_for},
};
use bson::oid::ObjectId;
use push_gateway_sim::{PushRecord, devices::SentReport};
use refresh_api::BatchView;
use refresh_shared::{
    job::CategoryState,
    store::{Device, JobRecord},
};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::{Duration, Instant};

impl TestStack {
    pub fn refresh_url(&self, organization: &str, device: &str) -> String {
        TestStack::refresh_url_at(&self.api, organization, device)
    }

    /// [`TestStack::refresh_url`] on the api at `api` (another api of the deployment).
    pub fn refresh_url_at(api: &str, organization: &str, device: &str) -> String {
        format!(
            "{api}/v1/organizations/{organization}/mdm/windows/enterprise/devices/{device}/info"
        )
    }

    pub fn job_url(&self, organization: &str, job: &str) -> String {
        format!(
            "{}/v1/organizations/{organization}/mdm/windows/enterprise/refresh-jobs/{job}",
            self.api
        )
    }

    /// A device's refresh history (`query`: `?…` or empty).
    pub fn history_url(&self, organization: &str, device: &str, query: &str) -> String {
        format!(
            "{}/v1/organizations/{organization}/mdm/windows/enterprise/devices/{device}/refresh-jobs{query}",
            self.api
        )
    }

    /// `GET` of `device`'s history in the stack's organization with the stack's token.
    pub async fn device_history(&self, device: &str, query: &str) -> Answer {
        let url = self.history_url(&self.org_id(), device, query);
        Answer::of(self.http.get(url).bearer_auth(&self.token)).await
    }

    pub fn batches_url(&self, organization: &str) -> String {
        format!(
            "{}/v1/organizations/{organization}/mdm/windows/enterprise/refresh-batches",
            self.api
        )
    }

    /// `POST …/refresh-batches` in the stack's organization with the stack's token.
    pub async fn bulk(&self, body: &Value) -> Answer {
        let request = self
            .http
            .post(self.batches_url(&self.org_id()))
            .bearer_auth(&self.token)
            .json(body);
        Answer::of(request).await
    }

    /// `GET …/refresh-batches/{id}`, which must succeed.
    pub async fn batch(&self, id: &str) -> BatchView {
        let url = format!("{}/{id}", self.batches_url(&self.org_id()));
        let answer = Answer::of(self.http.get(url).bearer_auth(&self.token)).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        serde_json::from_value(answer.body["data"].clone()).expect("a batch view")
    }

    /// Waits until the batch is completed (or failed), checking on the way that its counts
    /// always add up to its total.
    pub async fn wait_for_batch(&self, id: &str, deadline: Duration) -> BatchView {
        let started = Instant::now();
        loop {
            let view = self.batch(id).await;
            assert_eq!(view.counts.sum(), view.total, "counts add up: {view:?}");
            if view.state.is_final() {
                return view;
            }
            assert!(
                started.elapsed() < deadline,
                "batch {id} not finished after {deadline:?}: {view:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The Prometheus page of the api or the worker (`base` is `self.api` or `self.worker`).
    pub async fn metrics(&self, base: &str) -> String {
        let response = self.http.get(format!("{base}/metrics")).send().await;
        response
            .expect("metrics")
            .text()
            .await
            .expect("a metrics page")
    }

    /// `POST …/info` with a JSON body and the stack's token.
    pub async fn refresh(&self, organization: &str, device: &str, body: &Value) -> Answer {
        let request = self
            .http
            .post(self.refresh_url(organization, device))
            .bearer_auth(&self.token)
            .json(body);
        Answer::of(request).await
    }

    /// The stack's organization id, as the path takes it.
    pub fn org_id(&self) -> String {
        self.organization.id.to_hex()
    }

    /// The device as the database holds it now (of the stack's organization).
    pub async fn stored_device(&self, id: ObjectId) -> Device {
        self.store
            .device(self.organization.id, id)
            .await
            .expect("read device")
            .expect("device exists")
    }

    pub async fn job(&self, id: &str) -> JobRecord {
        let id = ObjectId::parse_str(id).expect("job id");
        self.store
            .job_by_id(id)
            .await
            .expect("read job")
            .expect("job exists")
    }

    /// Waits until every category of the job has ended (reported, failed, expired or
    /// unreported), its record whole: a category the device reported before its push was
    /// recorded gets the push's time and gateway a moment later.
    pub async fn wait_for_settled_job(&self, id: &str) -> JobRecord {
        let settled = |job: &JobRecord| {
            job.categories.values().all(|c| {
                c.state.is_terminal()
                    && (c.state != CategoryState::Reported || c.pushed_at.is_some())
            })
        };
        let what = format!("job {id} to settle");
        wait_for(&what, DEADLINE, || self.job(id), settled).await
    }

    /// Waits until no category of the job is queued, being pushed or waiting to be: each is
    /// pushed (waiting for the device's report) or ended. What a device that cannot report
    /// (reached through WNS alone, or told not to) gets to.
    pub async fn wait_for_pushed_job(&self, id: &str) -> JobRecord {
        let pushed = |job: &JobRecord| {
            job.categories
                .values()
                .all(|c| c.state == CategoryState::Pushed || c.state.is_terminal())
        };
        wait_for(
            &format!("job {id} to be pushed"),
            DEADLINE,
            || self.job(id),
            pushed,
        )
        .await
    }

    /// Refreshes `categories` of `device`, then waits for every category to be pushed (or to
    /// end otherwise).
    pub async fn pushed_refresh(
        &self,
        device: &Device,
        categories: &[&str],
    ) -> (String, JobRecord) {
        let job_id = self.refresh_device(device, categories).await.job_id();
        let job = self.wait_for_pushed_job(&job_id).await;
        (job_id, job)
    }

    /// `POST /v1/agent/windows/devices/{device}/reports` on the device listener with
    /// `node_key` (none: no `Authorization`).
    pub async fn report(&self, device: &str, node_key: Option<&str>, body: &Value) -> Answer {
        let url = format!("{}/v1/agent/windows/devices/{device}/reports", self.devices);
        let mut request = self.http.post(url).json(body);
        if let Some(key) = node_key {
            request = request.bearer_auth(key);
        }
        Answer::of(request).await
    }

    /// What the sim's devices reported, with the answers they got.
    pub async fn sim_reports(&self) -> Vec<SentReport> {
        serde_json::from_value(self.sim("/_sim/reports", None).await).expect("sent reports")
    }

    /// `GET …/devices/{device}/inventory[?categories=…]` with `token`.
    pub async fn inventory(&self, device: &str, categories: Option<&str>, token: &str) -> Answer {
        let mut url = format!(
            "{}/v1/organizations/{}/mdm/windows/enterprise/devices/{device}/inventory",
            self.api,
            self.org_id()
        );
        if let Some(categories) = categories {
            url.push_str(&format!("?categories={categories}"));
        }
        Answer::of(self.http.get(url).bearer_auth(token)).await
    }

    pub async fn sim(&self, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.sim.url());
        let request = match body {
            Some(body) => self.http.post(url).json(&body),
            None => self.http.get(url),
        };
        request
            .send()
            .await
            .expect("sim")
            .json()
            .await
            .expect("sim json")
    }

    /// Sets the sim's fault plan (`POST /_sim/faults`).
    pub async fn fault(&self, plan: Value) {
        let answer = self.sim("/_sim/faults", Some(plan)).await;
        assert_eq!(answer["status"], Value::Bool(true), "{answer:?}");
    }

    /// Refreshes `categories` of `device`, addressed by id in the stack's organization.
    pub async fn refresh_device(&self, device: &Device, categories: &[&str]) -> Answer {
        let body = serde_json::json!({ "info": categories });
        self.refresh(&self.org_id(), &device.id.to_hex(), &body)
            .await
    }

    /// Refreshes `categories` of `device`, then waits for the job to settle.
    pub async fn settled_refresh(
        &self,
        device: &Device,
        categories: &[&str],
    ) -> (String, JobRecord) {
        let job_id = self.refresh_device(device, categories).await.job_id();
        let job = self.wait_for_settled_job(&job_id).await;
        (job_id, job)
    }

    pub async fn pushes(&self) -> Vec<PushRecord> {
        serde_json::from_value(self.sim("/_sim/pushes", None).await).expect("push records")
    }

    /// The trace ids the pushes for `job` carried (`traceparent`), one per push; panics on a
    /// push without a valid one.
    pub async fn push_trace_ids(&self, job: &str) -> Vec<String> {
        self.pushes_for_job(job)
            .await
            .iter()
            .map(|push| {
                let value = push.traceparent.as_deref().unwrap_or_default();
                refresh_shared::trace::TraceParent::parse(value)
                    .unwrap_or_else(|| panic!("a push without a trace context: {push:?}"))
                    .trace_id()
            })
            .collect()
    }

    pub async fn pushes_for_job(&self, job: &str) -> Vec<PushRecord> {
        let mut pushes = self.pushes().await;
        pushes.retain(|p| p.job_id.as_deref() == Some(job));
        pushes
    }
}

/// An HTTP answer: status, headers and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub async fn of(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("answer {status} is not JSON: {text:?}"));
        Answer {
            status,
            headers,
            body,
        }
    }

    /// Checks the answer is exactly the envelope with this status, code and message.
    pub fn assert_error(&self, status: StatusCode, code: u64, message: &str) {
        assert_eq!(self.status, status, "{:?}", self.body);
        assert_eq!(self.error_code(), code, "{:?}", self.body);
        assert_eq!(
            self.body["error"]["message"],
            Value::from(message),
            "{:?}",
            self.body
        );
        let mut keys: Vec<&String> = self.body.as_object().expect("an object").keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["error", "status"],
            "nothing but the envelope: {:?}",
            self.body
        );
    }

    /// The error code of an envelope answer, checking the envelope's shape on the way.
    /// The fields a 400's details name, in order.
    pub fn problem_fields(&self) -> Vec<&str> {
        self.body["error"]["details"]
            .as_array()
            .expect("details")
            .iter()
            .filter_map(|problem| problem["field"].as_str())
            .collect()
    }

    pub fn error_code(&self) -> u64 {
        assert_eq!(self.body["status"], Value::Bool(false), "{:?}", self.body);
        assert!(self.body["error"]["message"].is_string(), "{:?}", self.body);
        self.body["error"]["code"].as_u64().expect("error.code")
    }

    pub fn batch_id(&self) -> String {
        assert_eq!(self.status, StatusCode::ACCEPTED, "{:?}", self.body);
        self.body["data"]["batchId"]
            .as_str()
            .expect("batchId")
            .to_owned()
    }

    pub fn job_id(&self) -> String {
        assert_eq!(self.status, StatusCode::OK, "{:?}", self.body);
        self.body["data"]["jobId"]
            .as_str()
            .expect("jobId")
            .to_owned()
    }
}
