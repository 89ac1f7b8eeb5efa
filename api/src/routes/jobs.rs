//! `GET …/refresh-jobs/{jobId}`: a job and its per-category states.

use crate::{
    auth::Authenticated,
    error::ApiError,
    openapi::{JobParams, StatusErrors},
    routes::{Success, organization_and_id, success},
    state::AppState,
};
use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
};
use refresh_shared::{store::JobView, token::PERMISSION_DEVICE_INFO};

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
    let (organization, job) = organization_and_id(path, "jobId")?;
    let organization = caller.organization(&state, &organization).await?;
    let job = state
        .store
        .job(organization.id, job)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(success(JobView::from(&job)))
}
