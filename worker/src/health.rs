//! The worker's own small HTTP server: `/healthz`, `/readyz`, `/metrics`.

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use refresh_shared::{broker::Queues, store::DatabaseProbe, telemetry::MetricsPage};
use serde_json::json;
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

#[derive(Clone)]
pub struct Probes {
    pub database: Arc<DatabaseProbe>,
    pub consuming: Arc<AtomicBool>,
    /// Reads the queue depths for `/metrics`.
    pub queues: Arc<Queues>,
    pub metrics_page: Arc<MetricsPage>,
}

pub fn router(probes: Probes) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": true })) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(probes)
}

async fn metrics(State(probes): State<Probes>) -> String {
    probes.metrics_page.render(&probes.queues).await
}

/// Ready when consuming from the broker and the database answers; otherwise says what is down.
async fn readyz(State(probes): State<Probes>) -> impl IntoResponse {
    let mut down = Vec::new();
    if !probes.consuming.load(Ordering::Relaxed) {
        down.push(json!({ "field": "broker", "problem": "not consuming" }));
    }
    if !probes.database.answers().await {
        down.push(json!({ "field": "database", "problem": "unavailable" }));
    }
    if down.is_empty() {
        (StatusCode::OK, Json(json!({ "status": true })))
    } else {
        let error = json!({ "code": 5003, "message": "Service unavailable", "details": down });
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": false, "error": error })),
        )
    }
}
