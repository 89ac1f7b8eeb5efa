//! `GET …/refresh-jobs/{jobId}`: a job and its per-category states (contract §3).

use crate::{auth::Authenticated, error::ApiError, routes::organization_and_id, state::AppState};
use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
};
use refresh_shared::{store::JobView, token::PERMISSION_DEVICE_INFO};
use serde_json::{Value, json};

pub async fn get_job(
    State(state): State<AppState>,
    caller: Authenticated,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require(PERMISSION_DEVICE_INFO)?;
    let (organization, job) = organization_and_id(path, "jobId")?;
    let organization = caller.organization(&state, &organization).await?;
    let job = state
        .store
        .job(organization.id, job)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(json!({ "status": true, "data": JobView::from(&job) })))
}
