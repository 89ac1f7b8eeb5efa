//! `POST /v1/agent/windows/devices/{deviceId}/reports` (device listener): a device's agent
//! sends what it read; the report is queued for a worker once RabbitMQ confirms it.

use crate::{
    error::{ApiError, FieldProblem},
    node_auth::ReportingDevice,
    routes::{Success, refresh::body_rejection, success},
    state::AppState,
    validate,
};
use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
};
use refresh_shared::{
    Category, metric,
    report::{DeviceReport, REPORT_MESSAGE_VERSION, ReportSource},
};
use serde::Serialize;
use time::OffsetDateTime;

/// The categories a report was taken for.
#[derive(Debug, Serialize)]
pub struct ReportAccepted {
    accepted: Vec<Category>,
}

pub async fn submit_report(
    State(state): State<AppState>,
    ReportingDevice(device): ReportingDevice,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Success<ReportAccepted>>), ApiError> {
    let body = body.map_err(body_rejection)?;
    let mut problems = Vec::new();
    let Some(body) = validate::json_body(&headers, &body, validate::report_body, &mut problems)
    else {
        return Err(ApiError::Validation(problems));
    };
    let report = DeviceReport {
        version: REPORT_MESSAGE_VERSION,
        organization_id: device.organization,
        device_id: device.id,
        job_id: body.job_id,
        collected_at: body.collected_at,
        received_at: OffsetDateTime::now_utc(),
        source: ReportSource::Agent,
        categories: body.categories,
    };
    let problems: Vec<FieldProblem> = report
        .problems()
        .into_iter()
        .map(|(field, problem)| FieldProblem::new(field, problem))
        .collect();
    if !problems.is_empty() {
        return Err(ApiError::Validation(problems));
    }
    state.publisher.publish_report(&report).await?;
    metrics::counter!(metric::REPORTS_RECEIVED, "source" => report.source.as_str()).increment(1);
    let accepted = report.categories.keys().copied().collect();
    Ok((StatusCode::ACCEPTED, success(ReportAccepted { accepted })))
}
