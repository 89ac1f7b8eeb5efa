//! `POST …/devices/{winDeviceId}/info`: record a job, have the broker confirm it, answer 200.

use crate::{
    audit::{self, Accepted},
    auth::Authenticated,
    error::{ApiError, FieldProblem},
    idempotency::{self, KeyCheck},
    limits,
    openapi::{RefreshBody, RefreshErrors, RefreshParams, schema},
    routes::{Success, organization_and_device, success},
    state::AppState,
    trace::request_trace,
    validate::{self, RefreshRequest},
};
use axum::{
    Json,
    body::Bytes,
    extract::{
        ConnectInfo, Path, State,
        rejection::{BytesRejection, PathRejection},
    },
    http::{HeaderMap, StatusCode, Uri},
};
use bson::{DateTime, oid::ObjectId};
use refresh_shared::{
    Category,
    device::Refreshable,
    job::{CategoryState, Lane},
    metric,
    store::{
        AuditAction, AuditResult, CategoryUpdate, Claim, Device, JobRecord, KeyAnswer, skip_cutoff,
        stale_after,
    },
    token::PERMISSION_DEVICE_INFO,
    trace::TraceParent,
};
use serde::Serialize;
use std::net::SocketAddr;
use utoipa::ToSchema;

/// The upstream answer plus the job to follow.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshAccepted {
    /// Always `true`: the request was recorded and queued (or needed nothing).
    status: bool,
    /// The job to follow at `…/refresh-jobs/{jobId}`; an earlier job's when it already covers
    /// every category named; `null` when every category was fresh (`maxAgeSecs`).
    #[schema(pattern = "^[a-f0-9]{24}$")]
    job_id: Option<String>,
    /// The categories not refreshed because the device reported them within `maxAgeSecs`.
    #[schema(value_type = Vec<schema::Category>)]
    skipped: Vec<Category>,
}

/// Ask a device to re-report the categories named (upstream: "Request selective device
/// information refresh"). Answers once the job is recorded and the broker has confirmed it.
#[utoipa::path(
    post,
    path = "/v1/organizations/{organizationId}/mdm/windows/enterprise/devices/{winDeviceId}/info",
    tag = "refresh",
    params(RefreshParams),
    request_body(content = RefreshBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded and queued", body = Success<RefreshAccepted>),
        RefreshErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn refresh_device_info(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    caller: Authenticated,
    path: Result<Path<(String, String)>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Success<RefreshAccepted>>, ApiError> {
    caller.require(PERMISSION_DEVICE_INFO)?;
    let body = body.map_err(body_rejection)?;
    let (organization_ref, device_key, request) = validate_request(path, &headers, &body)?;
    let RefreshRequest {
        categories,
        max_age,
    } = request;
    let key = validate::idempotency_key(&headers).map_err(|p| ApiError::Validation(vec![p]))?;
    let trace = request_trace(&headers);

    let organization = caller.organization(&state, &organization_ref).await?;
    let job_id = ObjectId::new();
    // A category reported within the skip window, or within `maxAgeSecs` when longer, is not
    // claimed: the claim's own filter leaves it out, at no extra round trip.
    let cutoff = skip_cutoff(stale_after(state.refresh_skip_window, max_age));
    let fresh_since = max_age.map(skip_cutoff);
    // Usually one write finds the device and claims every category for the new job. Not with
    // an Idempotency-Key: a replay must claim nothing.
    let claim_now = key.is_none().then_some((job_id, cutoff));
    let (device, claimed_whole) =
        refreshable_device(&state, organization.id, &device_key, &categories, claim_now).await?;

    let accepted = |result, answer| Accepted {
        action: AuditAction::Refresh,
        caller: &caller,
        client,
        device: Some(device.id),
        devices: None,
        categories: &categories,
        result,
        answer,
    };
    let held = match idempotency::check(&state, organization.id, key, &uri, &body).await? {
        KeyCheck::Replay(answer) => {
            audit::record(&state, accepted(AuditResult::Replayed, answer.id)).await;
            return Ok(job_answer(answer));
        }
        KeyCheck::Proceed(held) => held,
    };
    let job = JobRecord {
        id: job_id,
        ..JobRecord::new(organization.id, device.id, &categories, Lane::Interactive)
    };
    let claims = Claims {
        claimed_whole,
        cutoff,
        fresh_since,
        device: &device,
    };
    let enqueued = record_and_enqueue(&state, &job, &categories, claims, trace).await;
    idempotency::finish(&state, held, enqueued.as_ref()).await;
    let answer = enqueued?;
    let result = match answer.id {
        None => AuditResult::Fresh,
        Some(id) if id != job.id => AuditResult::Coalesced,
        Some(_) => AuditResult::Accepted,
    };
    audit::record(&state, accepted(result, answer.id)).await;
    tracing::info!(
        job_id = ?answer.id.map(|id| id.to_hex()),
        device_id = %device.id,
        token_id = %caller.token_id,
        categories = ?categories,
        skipped = ?answer.skipped,
        result = ?result,
        trace_id = %trace.trace_id(),
        "refresh accepted"
    );
    Ok(job_answer(answer))
}

/// What the categories of a new job stand on: the claim the device lookup made (if it could),
/// the skip cutoff, since when a report counts as fresh (`maxAgeSecs`), and the device as the
/// lookup read it.
struct Claims<'a> {
    claimed_whole: Option<Claim>,
    cutoff: DateTime,
    fresh_since: Option<DateTime>,
    device: &'a Device,
}

/// The device `device_key` names in `organization`, if it can take a refresh; with `claim_now`
/// (the new job's id and the skip cutoff) the same write claims every category for the job,
/// and the claim comes back too.
async fn refreshable_device(
    state: &AppState,
    organization: ObjectId,
    device_key: &str,
    categories: &[Category],
    claim_now: Option<(ObjectId, DateTime)>,
) -> Result<(Device, Option<Claim>), ApiError> {
    let claimed = match claim_now {
        Some((job_id, cutoff)) => {
            state
                .store
                .claim_by_key(organization, device_key, categories, job_id, cutoff)
                .await?
        }
        None => None,
    };
    let (device, claim) = match claimed {
        Some(device) => (device, Some(Claim::whole(categories))),
        None => {
            let device = state.store.device_by_key(organization, device_key).await?;
            (device.ok_or(ApiError::NotFound)?, None)
        }
    };
    match device.state.refreshable() {
        Refreshable::Yes => Ok((device, claim)),
        Refreshable::NotActive => Err(ApiError::DeviceNotActive),
        Refreshable::Gone => Err(ApiError::NotFound),
    }
}

/// Records `job`, claims its categories (unless the lookup already did) and publishes it;
/// what the caller gets (another job's id when every category was held, none when every one
/// was fresh). On any failure whichever half succeeded is undone: the job reads failed, its
/// claims are released.
async fn record_and_enqueue(
    state: &AppState,
    job: &JobRecord,
    categories: &[Category],
    claims: Claims<'_>,
    trace: TraceParent,
) -> Result<KeyAnswer, ApiError> {
    let Claims {
        claimed_whole,
        cutoff,
        fresh_since,
        device,
    } = claims;
    let claim = async {
        match claimed_whole {
            Some(claim) => Ok(claim),
            None => {
                let (organization, device) = (job.organization, job.device);
                (state.store)
                    .claim(organization, device, categories, job.id, cutoff)
                    .await
            }
        }
    };
    // The record and the claim do not depend on each other: one round trip's wait, not two.
    let (inserted, claimed) = tokio::join!(state.store.insert_job(job), claim);
    let enqueued = match (inserted, claimed) {
        (Ok(()), Ok(claim)) => {
            let claim = Sorted::of(claim, fresh_since, device);
            enqueue(state, job, claim, trace).await
        }
        (Err(error), _) | (_, Err(error)) => Err(error.into()),
    };
    if enqueued.is_err() {
        abandon(state, job, categories).await;
    }
    enqueued
}

fn job_answer(answer: KeyAnswer) -> Json<Success<RefreshAccepted>> {
    success(RefreshAccepted {
        status: true,
        job_id: answer.id.map(|id| id.to_hex()),
        skipped: answer.skipped,
    })
}

/// A body that could not be read: too large, or not a body at all.
pub fn body_rejection(rejection: BytesRejection) -> ApiError {
    if limits::body_timed_out(&rejection) {
        return ApiError::BodyTimeout;
    }
    match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        _ => ApiError::Validation(vec![FieldProblem::new("body", rejection.body_text())]),
    }
}

/// Every path and body problem at once, in the contract's 400 shape.
fn validate_request(
    path: Result<Path<(String, String)>, PathRejection>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(validate::OrganizationRef, String, RefreshRequest), ApiError> {
    let mut problems = Vec::new();
    let (organization, device) = organization_and_device(path, &mut problems);
    let request = validate::json_body(headers, body, validate::refresh_body, &mut problems);
    match (organization, device, request) {
        (Some(organization), Some(device), Some(request)) => Ok((organization, device, request)),
        _ => Err(ApiError::Validation(problems)),
    }
}

/// A claim's categories sorted by why: claimed for the job, held by another job (outstanding,
/// or reported within the skip window) or fresh (reported within `maxAgeSecs`).
struct Sorted {
    ours: Vec<Category>,
    theirs: Vec<Category>,
    fresh: Vec<Category>,
}

impl Sorted {
    /// A category not claimed is fresh when the device, as the lookup read it, had reported it
    /// since `fresh_since`: reports only move that time on, so it still has. One the read
    /// shows older was held by a job (or reported a moment after the read: left to that job).
    fn of(claim: Claim, fresh_since: Option<DateTime>, device: &Device) -> Sorted {
        // A new job holds no claim from before: nothing is `kept`.
        let Claim { ours, theirs, .. } = claim;
        let (fresh, theirs) = theirs.into_iter().partition(|category| {
            fresh_since.is_some_and(|since| {
                device
                    .info_refreshed_at
                    .get(category)
                    .is_some_and(|at| *at > since)
            })
        });
        Sorted {
            ours,
            theirs,
            fresh,
        }
    }
}

/// Publishes the job with the categories it claimed on the device. A category another job has
/// outstanding, or reported within the skip window, is left to that job; when that leaves
/// nothing, the answer is that job. A fresh category is listed as skipped; when every one is,
/// there is no job. Returns what the caller is answered.
async fn enqueue(
    state: &AppState,
    job: &JobRecord,
    claim: Sorted,
    trace: TraceParent,
) -> Result<KeyAnswer, ApiError> {
    let store = &state.store;
    let Sorted {
        mut ours,
        mut theirs,
        fresh,
    } = claim;
    if ours.is_empty() && theirs.is_empty() {
        store.delete_job(job.id).await?;
        return Ok(KeyAnswer {
            id: None,
            skipped: fresh,
        });
    }
    if ours.is_empty() {
        let device = store.device(job.organization, job.device).await?;
        let holder = device.and_then(|device| {
            theirs
                .iter()
                .find_map(|category| device.last_refresh_job.get(category).copied())
        });
        match holder {
            Some(holder) => {
                store.delete_job(job.id).await?;
                metrics::counter!(metric::REQUESTS_COALESCED).increment(1);
                return Ok(KeyAnswer {
                    id: Some(holder),
                    skipped: fresh,
                });
            }
            // Outstanding or refreshed by something other than this service: push anyway.
            None => ours = std::mem::take(&mut theirs),
        }
    }
    let dropped: Vec<Category> = theirs.iter().chain(&fresh).copied().collect();
    if !dropped.is_empty() {
        store.drop_categories(job.id, &dropped).await?;
    }
    state
        .publisher
        .publish(&job.message(ours, Some(trace)))
        .await?;
    metrics::counter!(metric::JOBS_ACCEPTED, "lane" => Lane::Interactive.as_str()).increment(1);
    Ok(KeyAnswer {
        id: Some(job.id),
        skipped: fresh,
    })
}

/// The job could not be queued: mark it failed so it never reads as waiting, and take its
/// categories off the device's outstanding list.
async fn abandon(state: &AppState, job: &JobRecord, categories: &[Category]) {
    let update = CategoryUpdate {
        last_error: Some("not queued: the broker or the database was unavailable".to_owned()),
        ..CategoryUpdate::to(CategoryState::Failed)
    };
    let marked = state.store.transition(job.id, categories, &update).await;
    // Releases only the claims this job holds.
    let released = (state.store)
        .release_claims(job.organization, job.device, categories, job.id, None)
        .await;
    if let Err(error) = marked.map(drop).and(released) {
        tracing::error!(job_id = %job.id, %error, "could not mark an unqueued job failed");
    }
}
