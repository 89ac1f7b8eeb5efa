//! `GET /v1/ops/queues`: every queue's depth, for operators and their dashboards.

use crate::{
    auth::Authenticated,
    error::ApiError,
    openapi::{OperatorErrors, schema},
    routes::{Success, success},
    state::AppState,
};
use axum::{Json, extract::State};
use refresh_shared::{broker, broker::QueueRole, token::PERMISSION_OPS_QUEUES};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct Queues {
    queues: Vec<QueueDepth>,
}

/// One queue's depth at one instant.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueDepth {
    pub name: String,
    #[schema(value_type = schema::QueueRole)]
    pub role: QueueRole,
    /// Messages waiting to be delivered.
    pub ready: u32,
    pub consumers: u32,
}

impl From<broker::QueueDepth> for QueueDepth {
    fn from(depth: broker::QueueDepth) -> QueueDepth {
        let broker::QueueDepth {
            name,
            role,
            ready,
            consumers,
        } = depth;
        QueueDepth {
            name,
            role,
            ready,
            consumers,
        }
    }
}

/// Every queue's depth and consumers (permission `ops.queues.read`).
#[utoipa::path(
    get,
    path = "/v1/ops/queues",
    tag = "operations",
    responses((status = 200, description = "Every queue", body = Success<Queues>), OperatorErrors),
    security(("bearer" = [])),
)]
pub async fn queues(
    State(state): State<AppState>,
    caller: Authenticated,
) -> Result<Json<Success<Queues>>, ApiError> {
    caller.require(PERMISSION_OPS_QUEUES)?;
    let queues = state.queues.depths().await?;
    Ok(success(Queues {
        queues: queues.into_iter().map(QueueDepth::from).collect(),
    }))
}
