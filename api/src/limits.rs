//! What one request may cost before a handler runs: how many are served at once, how large its
//! headers may be, and how long its body may stall. Each refusal is an answer in the envelope.
//! (Body size is `DefaultBodyLimit`, per route; the rate limits are in `rate_limit`.)

use crate::error::ApiError;
use axum::{
    body::Body,
    extract::rejection::BytesRejection,
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use refresh_shared::settings::ApiSettings;
use std::{sync::Arc, time::Duration};
use tokio::sync::Semaphore;
use tower_http::timeout::{TimeoutBody, TimeoutError};

#[derive(Clone)]
pub struct Limits {
    header_bytes: usize,
    body_read_timeout: Duration,
    in_flight: Arc<Semaphore>,
}

impl Limits {
    pub fn new(settings: &ApiSettings) -> Limits {
        Limits {
            header_bytes: settings.header_limit_bytes,
            body_read_timeout: settings.body_read_timeout,
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight_requests)),
        }
    }
}

/// Middleware: refuses a request over the in-flight or header limits, and makes its body fail
/// with [`TimeoutError`] when the client stalls (see [`body_timed_out`]).
pub async fn enforce(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    // Refused at once rather than queued: a queue would only grow while the api is saturated.
    let Ok(_slot) = limits.in_flight.clone().try_acquire_owned() else {
        return ApiError::Overloaded.into_response();
    };
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > limits.header_bytes {
        return ApiError::HeadersTooLarge.into_response();
    }
    let (parts, body) = request.into_parts();
    let body = Body::new(TimeoutBody::new(limits.body_read_timeout, body));
    next.run(Request::from_parts(parts, body)).await
}

/// Whether a body could not be read because the client stalled past `BODY_READ_TIMEOUT_MS`.
pub fn body_timed_out(rejection: &BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = cause {
        if error.is::<TimeoutError>() {
            return true;
        }
        cause = error.source();
    }
    false
}
