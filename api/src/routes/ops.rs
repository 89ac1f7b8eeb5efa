//! `GET /v1/ops/queues`: every queue's depth, for operators and their dashboards.

use crate::{auth::Authenticated, error::ApiError, state::AppState};
use axum::{Json, extract::State};
use refresh_shared::token::PERMISSION_OPS_QUEUES;
use serde_json::{Value, json};

pub async fn queues(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<Value>, ApiError> {
    caller.require(PERMISSION_OPS_QUEUES)?;
    let depths = state.publisher.queue_depths().await?;
    Ok(Json(
        json!({ "status": true, "data": { "queues": depths } }),
    ))
}
