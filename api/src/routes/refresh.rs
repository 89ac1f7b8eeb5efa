//! `POST …/devices/{winDeviceId}/info`: record a job, have the broker confirm it, answer 200.

use crate::{
    auth::Authenticated,
    error::{ApiError, FieldProblem},
    state::AppState,
    validate,
};
use axum::{
    Json,
    body::Bytes,
    extract::{
        Path, State,
        rejection::{BytesRejection, PathRejection},
    },
    http::{HeaderMap, StatusCode},
};
use refresh_shared::{
    Category,
    device::Refreshable,
    job::{CategoryState, Lane, MESSAGE_VERSION, RefreshJob},
    store::{CategoryUpdate, JobRecord},
    token::PERMISSION_DEVICE_INFO,
};
use serde_json::{Value, json};
use time::OffsetDateTime;

pub async fn refresh_device_info(
    State(state): State<AppState>,
    caller: Authenticated,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(PERMISSION_DEVICE_INFO)?;
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        _ => ApiError::Validation(vec![FieldProblem::new("body", rejection.body_text())]),
    })?;
    let (organization_ref, device_key, categories) = validate_request(path, &headers, &body)?;

    let organization = caller.organization(&state, &organization_ref).await?;
    let device = state
        .store
        .device_by_key(organization.id, &device_key)
        .await?
        .ok_or(ApiError::NotFound)?;
    match device.state.refreshable() {
        Refreshable::Yes => {}
        Refreshable::NotActive => return Err(ApiError::DeviceNotActive),
        Refreshable::Gone => return Err(ApiError::NotFound),
    }

    let job = JobRecord::new(organization.id, device.id, &categories, Lane::Interactive);
    state.store.insert_job(&job).await?;
    if let Err(error) = enqueue(&state, &job, &categories).await {
        abandon(&state, &job, &categories).await;
        return Err(error);
    }
    metrics::counter!("refresh_jobs_accepted_total", "lane" => "interactive").increment(1);
    tracing::info!(
        job_id = %job.id,
        device_id = %device.id,
        token_id = %caller.token_id,
        categories = ?categories,
        "refresh accepted"
    );
    Ok(Json(json!({
        "status": true,
        "data": { "status": true, "jobId": job.id.to_hex() },
    })))
}

/// Every path and body problem at once, in the contract's 400 shape.
fn validate_request(
    path: Result<Path<(String, String)>, PathRejection>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(validate::OrganizationRef, String, Vec<Category>), ApiError> {
    let mut problems = Vec::new();
    let (organization, device) = match path {
        Ok(Path((organization, device))) => (
            validate::organization_ref(&organization)
                .map_err(|p| problems.push(p))
                .ok(),
            validate::device_key(&device)
                .map(str::to_owned)
                .map_err(|p| problems.push(p))
                .ok(),
        ),
        Err(rejection) => {
            problems.push(FieldProblem::new("path", rejection.body_text()));
            (None, None)
        }
    };
    let categories = match validate::json_content_type(headers) {
        Ok(()) => validate::refresh_body(body)
            .map_err(|body_problems| problems.extend(body_problems))
            .ok(),
        Err(problem) => {
            problems.push(problem);
            None
        }
    };
    match (organization, device, categories) {
        (Some(organization), Some(device), Some(categories)) => {
            Ok((organization, device, categories))
        }
        _ => Err(ApiError::Validation(problems)),
    }
}

async fn enqueue(
    state: &AppState,
    job: &JobRecord,
    categories: &[Category],
) -> Result<(), ApiError> {
    state
        .store
        .mark_refresh_needed(job.organization, job.device, categories)
        .await?;
    let message = RefreshJob {
        version: MESSAGE_VERSION,
        job_id: job.id,
        organization_id: job.organization,
        device_id: job.device,
        categories: categories.to_vec(),
        requested_at: OffsetDateTime::now_utc(),
        lane: job.lane,
        attempt: 0,
    };
    state.publisher.publish(&message).await?;
    Ok(())
}

/// The job could not be queued: mark it failed so it never reads as waiting, and take its
/// categories off the device's outstanding list.
async fn abandon(state: &AppState, job: &JobRecord, categories: &[Category]) {
    let update = CategoryUpdate {
        last_error: Some("not queued: the broker or the database was unavailable".to_owned()),
        ..CategoryUpdate::to(CategoryState::Failed)
    };
    let marked = state.store.transition(job.id, categories, &update).await;
    let settled = state
        .store
        .settle_refresh(job.organization, job.device, categories, None)
        .await;
    if let Err(error) = marked.and(settled) {
        tracing::error!(job_id = %job.id, %error, "could not mark an unqueued job failed");
    }
}
