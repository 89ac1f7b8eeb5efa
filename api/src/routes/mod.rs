mod health;
mod jobs;
mod refresh;

use crate::{error::ApiError, state::AppState};
use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};

pub fn router(state: AppState, body_limit_bytes: usize) -> Router {
    Router::new()
        .route(
            "/v1/organizations/{organization_id}/mdm/windows/enterprise/devices/{win_device_id}/info",
            post(refresh::refresh_device_info),
        )
        .route(
            "/v1/organizations/{organization_id}/mdm/windows/enterprise/refresh-jobs/{job_id}",
            get(jobs::get_job),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::Internal(
                "handler panicked".to_owned(),
            ))
        }))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
