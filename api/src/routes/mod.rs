mod batches;
mod health;
mod jobs;
mod ops;
mod refresh;

use crate::{
    error::{ApiError, FieldProblem},
    limits::{self, Limits},
    rate_limit,
    state::AppState,
    validate::{self, OrganizationRef},
};
use axum::{
    Router,
    extract::{DefaultBodyLimit, Path, rejection::PathRejection},
    routing::{get, post},
};
use bson::oid::ObjectId;
use refresh_shared::settings::ApiSettings;
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};

pub fn router(state: AppState, settings: &ApiSettings) -> Router {
    Router::new()
        .route(
            "/v1/organizations/{organization_id}/mdm/windows/enterprise/devices/{win_device_id}/info",
            post(refresh::refresh_device_info),
        )
        .route(
            "/v1/organizations/{organization_id}/mdm/windows/enterprise/refresh-jobs/{job_id}",
            get(jobs::get_job),
        )
        .route(
            "/v1/organizations/{organization_id}/mdm/windows/enterprise/refresh-batches",
            // A 100,000-id list is megabytes: this route has its own, larger limit.
            post(batches::create_batch).layer(DefaultBodyLimit::max(settings.bulk_body_limit_bytes)),
        )
        .route(
            "/v1/organizations/{organization_id}/mdm/windows/enterprise/refresh-batches/{batch_id}",
            get(batches::get_batch),
        )
        .route("/v1/ops/queues", get(ops::queues))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(settings.body_limit_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::Internal(
                "handler panicked".to_owned(),
            ))
        }))
        .layer(axum::middleware::from_fn(rate_limit::headers))
        .layer(axum::middleware::from_fn_with_state(
            Limits::new(settings),
            limits::enforce,
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The `{organizationId}` and 24-hex `{<id_field>}` of a status route, or every problem with them.
fn organization_and_id(
    path: Result<Path<(String, String)>, PathRejection>,
    id_field: &str,
) -> Result<(OrganizationRef, ObjectId), ApiError> {
    let Path((organization, id)) = path.map_err(|rejection| {
        ApiError::Validation(vec![FieldProblem::new("path", rejection.body_text())])
    })?;
    match (
        validate::organization_ref(&organization),
        validate::object_id(id_field, &id),
    ) {
        (Ok(organization), Ok(id)) => Ok((organization, id)),
        (organization, id) => {
            let problems = [organization.err(), id.err()]
                .into_iter()
                .flatten()
                .collect();
            Err(ApiError::Validation(problems))
        }
    }
}
