use crate::{
    error::{ApiError, FieldProblem},
    state::AppState,
};
use axum::{Json, extract::State};
use serde_json::{Value, json};

/// The process is up.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": true }))
}

/// The process can take requests: the database answers and the broker link is up.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut down = Vec::new();
    if let Err(error) = state.store.ping().await {
        down.push(FieldProblem::new("database", error.to_string()));
    }
    if !state.publisher.is_connected() {
        down.push(FieldProblem::new("broker", "not connected"));
    }
    if down.is_empty() {
        Ok(Json(json!({ "status": true })))
    } else {
        Err(ApiError::NotReady(down))
    }
}

pub async fn metrics(State(state): State<AppState>) -> String {
    refresh_shared::telemetry::render_with_queue_depths(&state.publisher).await
}
