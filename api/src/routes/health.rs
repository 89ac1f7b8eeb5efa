use crate::{
    error::{ApiError, FieldProblem},
    openapi::{AnyRouteErrors, ReadinessErrors},
    routes::{UP, Up},
    state::AppState,
};
use axum::{Json, extract::State};

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Up", body = Up), AnyRouteErrors)
)]
pub async fn healthz() -> Json<Up> {
    Json(UP)
}

/// The process can take requests: the database answers and the broker link is up.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses((status = 200, description = "Ready", body = Up), ReadinessErrors)
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Up>, ApiError> {
    let mut down = Vec::new();
    if !state.database_probe.answers().await {
        down.push(FieldProblem::new("database", "unavailable"));
    }
    if !state.publisher.is_connected() {
        down.push(FieldProblem::new("broker", "not connected"));
    }
    if down.is_empty() {
        Ok(Json(UP))
    } else {
        Err(ApiError::NotReady(down))
    }
}

/// Prometheus metrics, queue depths included (read from the broker at most every 2 s).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"),
        AnyRouteErrors,
    )
)]
pub async fn metrics(State(state): State<AppState>) -> String {
    state.metrics_page.render(&state.queues).await
}
