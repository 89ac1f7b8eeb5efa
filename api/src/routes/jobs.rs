//! `GET …/refresh-jobs/{jobId}`: a job and its per-category states; `DELETE` of it: cancel;
//! `GET
//! …/devices/{winDeviceId}/refresh-jobs`: a device's jobs, newest first, page by page.

use crate::{
    auth::Authenticated,
    error::ApiError,
    openapi::{CancelErrors, HistoryParams, JobParams, StatusErrors},
    routes::{PageQuery, Success, callers_device, callers_id, device_read, page, success},
    state::AppState,
};
use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
};
use refresh_events::view::JobView;
use refresh_shared::token::PERMISSION_DEVICE_INFO;
use serde::Serialize;
use utoipa::ToSchema;

/// A refresh job and the state of each of its categories.
#[utoipa::path(
    get,
    path = "/v1/organizations/{organizationId}/mdm/windows/enterprise/refresh-jobs/{jobId}",
    tag = "refresh",
    params(JobParams),
    responses((status = 200, description = "The job", body = Success<JobView>), StatusErrors),
    security(("bearer" = [])),
)]
pub async fn get_job(
    State(state): State<AppState>,
    caller: Authenticated,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Success<JobView>>, ApiError> {
    caller.require(PERMISSION_DEVICE_INFO)?;
    let (organization, job) = callers_id(&state, &caller, path, "jobId").await?;
    let job = state
        .store
        .job(organization.id, job)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(success(JobView::from(&job)))
}

/// Cancels a job: every category that has not ended reads `canceled` and is never pushed
/// again (a message of it already queued, or waiting in a retry queue, finds it so), and the
/// device's claims on them are freed.
#[utoipa::path(
    delete,
    path = "/v1/organizations/{organizationId}/mdm/windows/enterprise/refresh-jobs/{jobId}",
    tag = "refresh",
    params(JobParams),
    responses((status = 200, description = "The job, canceled", body = Success<JobView>), CancelErrors),
    security(("bearer" = [])),
)]
pub async fn cancel_job(
    State(state): State<AppState>,
    caller: Authenticated,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Success<JobView>>, ApiError> {
    caller.require(PERMISSION_DEVICE_INFO)?;
    let (organization, job) = callers_id(&state, &caller, path, "jobId").await?;
    let (job, canceled) = (state.store)
        .cancel_job(organization.id, job)
        .await?
        .ok_or(ApiError::NotFound)?;
    // Also when it had finished: a cancel answered 503 because this failed is announced by
    // the cancel tried again.
    state.announcer.job(organization.id, job.id).await?;
    if canceled.is_empty() {
        return Err(ApiError::JobFinished);
    }
    tracing::info!(job_id = %job.id, token_id = %caller.token_id, categories = ?canceled, "job canceled");
    Ok(success(JobView::from(&job)))
}

/// A page of a device's refresh history.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPage {
    /// Newest first.
    pub jobs: Vec<JobView>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// A device's refresh jobs, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/organizations/{organizationId}/mdm/windows/enterprise/devices/{winDeviceId}/refresh-jobs",
    tag = "refresh",
    params(HistoryParams),
    responses((status = 200, description = "A page of the device's jobs", body = Success<HistoryPage>), StatusErrors),
    security(("bearer" = [])),
)]
pub async fn device_history(
    State(state): State<AppState>,
    caller: Authenticated,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Success<HistoryPage>>, ApiError> {
    caller.require(PERMISSION_DEVICE_INFO)?;
    let (organization, device_key, (limit, after)) = device_read(path, query, PageQuery::read)?;
    let (organization, device) =
        callers_device(&state, &caller, &organization, &device_key).await?;
    // One more than asked: whether another page follows.
    let jobs = state
        .store
        .device_jobs(organization.id, device.id, after, limit + 1)
        .await?;
    let (jobs, next_cursor) = page(jobs, limit, |job| job.id);
    Ok(success(HistoryPage {
        jobs: jobs.iter().map(JobView::from).collect(),
        next_cursor,
    }))
}
