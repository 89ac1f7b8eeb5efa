//! `refreshctl bulk`: submits a batch to the api, then follows it to the end with a progress bar.

use super::{BulkArgs, Output};
use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use refresh_shared::store::BatchState;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// What this command reads of the api's batch answer (`GET …/refresh-batches/{batchId}`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchStatus {
    id: String,
    state: BatchState,
    total: u64,
    counts: Counts,
    started_at: Option<String>,
    finished_at: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Counts {
    pending: u64,
    queued: u64,
    reported: u64,
    partial: u64,
    failed: u64,
    expired: u64,
    unreported: u64,
    #[serde(default)]
    canceled: u64,
    skipped: SkippedCounts,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SkippedCounts {
    not_found: u64,
    not_active: u64,
    coalesced: u64,
}

impl SkippedCounts {
    fn total(&self) -> u64 {
        self.not_found + self.not_active + self.coalesced
    }
}

/// How often the batch is read while following it.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long the api may be unreachable while following a batch before giving up.
const UNREACHABLE_FOR: Duration = Duration::from_secs(120);

pub async fn run(args: BulkArgs, json: bool) -> anyhow::Result<Option<Output>> {
    let body = request_body(&args)?;
    // Before the batch exists: a Ctrl-C from then on is a question, never a sudden exit.
    let mut interrupts = args.cancel_on_interrupt.then(interrupts).transpose()?;
    let http = reqwest::Client::new();
    let base = format!(
        "{}/v1/organizations/{}/mdm/windows/enterprise/refresh-batches",
        args.api.trim_end_matches('/'),
        args.org
    );
    let mut request = http.post(&base).bearer_auth(&args.token).json(&body);
    if let Some(key) = &args.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let answer = call(request).await?;
    let batch_id = answer["batchId"]
        .as_str()
        .context("the api's answer has no batchId")?
        .to_owned();
    if args.no_wait {
        return Ok(Some(Output {
            text: format!("batch {batch_id} submitted"),
            json: json!({ "batchId": batch_id }),
        }));
    }

    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} devices ({percent}%) {msg}",
            )
            .context("progress bar template")?,
        )
    };
    let url = format!("{base}/{batch_id}");
    let mut unreachable_since: Option<Instant> = None;
    let (view, data) = loop {
        match call(http.get(&url).bearer_auth(&args.token)).await {
            Ok(data) => {
                unreachable_since = None;
                let view = BatchStatus::deserialize(&data).context("reading the batch status")?;
                let counts = &view.counts;
                bar.set_length(view.total);
                bar.set_position(view.total.saturating_sub(counts.pending + counts.queued));
                bar.set_message(format!(
                    "{}: reported {} not reported {} skipped {}",
                    view.state.as_str(),
                    counts.reported,
                    counts.failed
                        + counts.partial
                        + counts.expired
                        + counts.unreported
                        + counts.canceled,
                    counts.skipped.total()
                ));
                if view.state.is_final() {
                    break (view, data);
                }
            }
            Err(error) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNREACHABLE_FOR {
                    return Err(error.context(format!("following batch {batch_id}")));
                }
                bar.set_message(format!("retrying: {error:#}"));
            }
        }
        let Some(interrupts) = interrupts.as_mut() else {
            tokio::time::sleep(POLL_EVERY).await;
            continue;
        };
        tokio::select! {
            () = tokio::time::sleep(POLL_EVERY) => {}
            _ = interrupts.recv() => {
                let cancel = bar.suspend(|| confirm(&format!("Cancel batch {batch_id}? [y/N] ")))?;
                if cancel {
                    let data = call(http.delete(&url).bearer_auth(&args.token)).await?;
                    let view = BatchStatus::deserialize(&data).context("reading the batch status")?;
                    break (view, data);
                }
            }
        }
    };
    bar.finish_and_clear();
    Ok(Some(Output {
        text: summary(&view),
        json: data,
    }))
}

/// Ctrl-C, from now on, as a stream (the process no longer stops at it).
fn interrupts() -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("listening for Ctrl-C")
}

/// Asks `question` on standard error and reads the answer from standard input: yes only for
/// `y` or `yes`; no for anything else, and when standard input is closed.
fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::Write;
    let mut stderr = std::io::stderr();
    stderr.write_all(question.as_bytes())?;
    stderr.flush()?;
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// The body `POST …/refresh-batches` takes, from the arguments.
fn request_body(args: &BulkArgs) -> anyhow::Result<Value> {
    let target = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let ids: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .collect();
            if ids.is_empty() {
                bail!("{} names no devices", path.display());
            }
            json!({ "deviceIds": ids })
        }
        None => {
            let mut filter = serde_json::Map::new();
            if let Some(state) = &args.state {
                filter.insert("state".to_owned(), json!(state));
            }
            if !args.tags.is_empty() {
                filter.insert("tags".to_owned(), json!(args.tags));
            }
            json!({ "filter": filter })
        }
    };
    let mut body = json!({ "info": args.info });
    if let (Value::Object(body), Value::Object(target)) = (&mut body, target) {
        body.extend(target);
    }
    Ok(body)
}

/// Sends `request`; the `data` of a success, or the api's error as an error.
async fn call(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request.send().await.context("calling the api")?;
    let status = response.status();
    let body: Value = response
        .json()
        .await
        .with_context(|| format!("the api answered {status} without JSON"))?;
    if status.is_success() {
        return Ok(body["data"].clone());
    }
    let error = &body["error"];
    let mut message = format!(
        "the api answered {status}: {} (code {})",
        error["message"].as_str().unwrap_or("?"),
        error["code"]
    );
    if let Some(details) = error["details"].as_array() {
        for detail in details {
            message.push_str(&format!(
                "\n  {}: {}",
                detail["field"].as_str().unwrap_or("?"),
                detail["problem"].as_str().unwrap_or("?")
            ));
        }
    }
    bail!(message)
}

fn summary(view: &BatchStatus) -> String {
    let c = &view.counts;
    format!(
        "batch {} {}: {} devices\n  reported {}  partial {}  failed {}  expired {}  unreported {}  canceled {}\n  skipped: not found {}  not active {}  coalesced {}\n  started {}  finished {}{}",
        view.id,
        view.state.as_str(),
        view.total,
        c.reported,
        c.partial,
        c.failed,
        c.expired,
        c.unreported,
        c.canceled,
        c.skipped.not_found,
        c.skipped.not_active,
        c.skipped.coalesced,
        view.started_at.as_deref().unwrap_or("-"),
        view.finished_at.as_deref().unwrap_or("-"),
        view.error
            .as_deref()
            .map(|e| format!("\n  error: {e}"))
            .unwrap_or_default(),
    )
}
