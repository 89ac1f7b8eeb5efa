//! `GET …/refresh-jobs/{jobId}`: a job and its per-category states.

use crate::{
    auth::Authenticated,
    error::ApiError,
    openapi::{JobParams, StatusErrors, schema},
    routes::{Success, organization_and_id, rfc3339, success},
    state::AppState,
};
use axum::{
    Json,
    extract::{Path, State, rejection::PathRejection},
};
use refresh_shared::{
    Category,
    device::Gateway,
    job::{CategoryState, JobState},
    report::ReportSource,
    store::JobRecord,
    token::PERMISSION_DEVICE_INFO,
};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A job as `GET …/refresh-jobs/{jobId}` shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: String,
    pub organization_id: String,
    pub device_id: String,
    pub created_at: String,
    pub updated_at: String,
    #[schema(value_type = schema::JobState)]
    pub state: JobState,
    #[schema(value_type = BTreeMap<schema::Category, CategoryView>)]
    pub categories: BTreeMap<Category, CategoryView>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CategoryView {
    #[schema(value_type = schema::CategoryState)]
    pub state: CategoryState,
    pub attempts: u32,
    #[schema(value_type = Option<schema::Gateway>)]
    pub gateway: Option<Gateway>,
    pub last_error: Option<String>,
    pub pushed_at: Option<String>,
    /// When the device's report of the category was applied.
    pub reported_at: Option<String>,
    #[schema(value_type = Option<schema::ReportSource>)]
    pub report_source: Option<ReportSource>,
}

impl From<&JobRecord> for JobView {
    fn from(job: &JobRecord) -> JobView {
        JobView {
            id: job.id.to_hex(),
            organization_id: job.organization.to_hex(),
            device_id: job.device.to_hex(),
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
            state: job.state(),
            categories: job
                .categories
                .iter()
                .map(|(&category, record)| {
                    let view = CategoryView {
                        state: record.state,
                        attempts: record.attempts,
                        gateway: record.gateway,
                        last_error: record.last_error.clone(),
                        pushed_at: record.pushed_at.map(rfc3339),
                        reported_at: record.reported_at.map(rfc3339),
                        report_source: record.report_source,
                    };
                    (category, view)
                })
                .collect(),
        }
    }
}

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
