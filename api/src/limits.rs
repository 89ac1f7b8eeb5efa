//! What one request may cost: how many are served at once, how large its headers may be, how
//! long its body may stall and how long its caller waits. Each refusal is an answer in the
//! envelope. (Body size is `DefaultBodyLimit`, per route; the rate limits are in `rate_limit`;
//! connections and their header reads are limited in `server`.)

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
    request_timeout: Duration,
    in_flight: Arc<Semaphore>,
}

impl Limits {
    pub fn new(settings: &ApiSettings) -> Limits {
        Limits {
            header_bytes: settings.header_limit_bytes,
            body_read_timeout: settings.body_read_timeout,
            request_timeout: settings.request_timeout,
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight_requests)),
        }
    }
}

/// Middleware: refuses a request over the in-flight or header limits, makes its body fail with
/// [`TimeoutError`] when the client stalls (see [`body_timed_out`]), and answers 503 5040 when
/// the request outlives `REQUEST_TIMEOUT_MS`.
pub async fn enforce(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    // Refused at once rather than queued: a queue would only grow while the api is saturated.
    let Ok(slot) = limits.in_flight.clone().try_acquire_owned() else {
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
    // The request runs as a task of its own, holding its slot to its end: the deadline answers
    // the caller without cutting the work short (nor does a caller hanging up), so a device's
    // claimed categories are never left without their published job.
    let work = tokio::spawn(async move {
        let response = next.run(Request::from_parts(parts, body)).await;
        drop(slot);
        response
    });
    match tokio::time::timeout(limits.request_timeout, work).await {
        Ok(Ok(response)) => response,
        Ok(Err(failed)) => {
            ApiError::Internal(format!("request task failed: {failed}")).into_response()
        }
        Err(_) => {
            metrics::counter!("refresh_http_requests_timed_out_total").increment(1);
            ApiError::RequestTimeout.into_response()
        }
    }
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
