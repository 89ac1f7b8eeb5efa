//! `GET …/refresh-jobs/{jobId}`: a job and its per-category states (contract §3).

use crate::{auth::Authenticated, error::ApiError, state::AppState, validate};
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
    let Path((organization, job)) = path.map_err(|rejection| {
        ApiError::Validation(vec![crate::error::FieldProblem::new(
            "path",
            rejection.body_text(),
        )])
    })?;
    let organization = validate::organization_ref(&organization);
    let job = validate::object_id("jobId", &job);
    let (organization, job) = match (organization, job) {
        (Ok(organization), Ok(job)) => (organization, job),
        (organization, job) => {
            let problems = [organization.err(), job.err()]
                .into_iter()
                .flatten()
                .collect();
            return Err(ApiError::Validation(problems));
        }
    };
    let organization = caller.organization(&state, &organization).await?;
    let job = state
        .store
        .job(organization.id, job)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(json!({ "status": true, "data": JobView::from(&job) })))
}
