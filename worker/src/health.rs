//! The worker's own small HTTP server: `/healthz`, `/readyz`, `/metrics`.

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use refresh_shared::{broker::Publisher, store::Store};
use serde_json::json;
use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

#[derive(Clone)]
pub struct Probes {
    pub store: Store,
    pub consuming: Arc<AtomicBool>,
    /// Reads the queue depths for `/metrics`.
    pub publisher: Arc<Publisher>,
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
    refresh_shared::telemetry::render_with_queue_depths(&probes.publisher).await
}

/// Ready when consuming from the broker and the database answers; otherwise says what is down.
async fn readyz(State(probes): State<Probes>) -> impl IntoResponse {
    let mut down = Vec::new();
    if !probes.consuming.load(Ordering::Relaxed) {
        down.push(json!({ "field": "broker", "problem": "not consuming" }));
    }
    if let Err(error) = probes.store.ping().await {
        down.push(json!({ "field": "database", "problem": error.to_string() }));
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
