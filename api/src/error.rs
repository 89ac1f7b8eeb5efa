//! `ApiError`: the one place that knows the contract's error codes and renders the envelope
//! `{"status":false,"error":{"code":N,"message":"…"}}`.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use refresh_shared::{broker::BrokerError, store::StoreError};
use serde::Serialize;
use std::time::Duration;

/// One reason a request was invalid, as `error.details` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    pub field: String,
    pub problem: String,
}

impl FieldProblem {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> FieldProblem {
        FieldProblem {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no auth token")]
    NoToken,
    #[error("unauthorized")]
    Unauthorized,
    #[error("forbidden")]
    Forbidden,
    #[error("validation failed")]
    Validation(Vec<FieldProblem>),
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("entity not found")]
    NotFound,
    #[error("device not active")]
    DeviceNotActive,
    #[error("rate limited")]
    RateLimited { retry_after: Duration },
    /// The `Idempotency-Key` came before with a different request.
    #[error("idempotency key reused with another request")]
    IdempotencyMismatch,
    /// The `Idempotency-Key`'s first request is still being handled.
    #[error("idempotency key in use")]
    IdempotencyInProgress,
    #[error("unknown route")]
    RouteNotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request headers too large")]
    HeadersTooLarge,
    /// The client stopped sending its body for longer than `BODY_READ_TIMEOUT_MS`.
    #[error("request body not received in time")]
    BodyTimeout,
    /// `MAX_IN_FLIGHT_REQUESTS` are being served already.
    #[error("too many requests in flight")]
    Overloaded,
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    /// `/readyz`: which dependencies are down, as details.
    #[error("not ready")]
    NotReady(Vec<FieldProblem>),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What a caller should wait before trying again after a 503.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(5);

impl ApiError {
    fn parts(&self) -> (StatusCode, u16, &'static str) {
        match self {
            ApiError::NoToken => (StatusCode::UNAUTHORIZED, 4002, "No auth token"),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, 4001, "Unauthorized"),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, 4003, "Forbidden"),
            ApiError::Validation(_) => (StatusCode::BAD_REQUEST, 1001, "Validation failed"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, 1002, "Payload too large"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, 3001, "Entity not found"),
            ApiError::DeviceNotActive => (StatusCode::CONFLICT, 3002, "Device not active"),
            ApiError::RateLimited { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, 4290, "Too many requests")
            }
            ApiError::IdempotencyMismatch => (
                StatusCode::CONFLICT,
                4091,
                "Idempotency key already used with a different request",
            ),
            ApiError::IdempotencyInProgress => (
                StatusCode::CONFLICT,
                4092,
                "A request with this idempotency key is still in progress",
            ),
            ApiError::RouteNotFound => (StatusCode::NOT_FOUND, 4040, "Route not found"),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, 4050, "Method not allowed")
            }
            ApiError::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                4310,
                "Request headers too large",
            ),
            ApiError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                4080,
                "Request body not received in time",
            ),
            ApiError::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, 5030, "Server busy"),
            ApiError::Unavailable(_) | ApiError::NotReady(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, 5003, "Service unavailable")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, 5000, "Internal error"),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after } => Some(*retry_after),
            ApiError::IdempotencyInProgress | ApiError::Overloaded => Some(Duration::from_secs(1)),
            ApiError::Unavailable(_) | ApiError::NotReady(_) => Some(UNAVAILABLE_RETRY_AFTER),
            _ => None,
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    status: bool,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: u16,
    message: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a [FieldProblem]>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(cause) => tracing::error!(%cause, "request failed unexpectedly"),
            ApiError::Unavailable(cause) => tracing::warn!(%cause, "dependency unavailable"),
            _ => {}
        }
        let (status, code, message) = self.parts();
        let details = match &self {
            ApiError::Validation(problems) | ApiError::NotReady(problems) => {
                Some(problems.as_slice())
            }
            _ => None,
        };
        let body = Envelope {
            status: false,
            error: ErrorBody {
                code,
                message,
                details,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(after) = self.retry_after() {
            // Whole seconds, rounded up: `Retry-After: 0` would invite an immediate retry.
            let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if error.is_unavailable() {
            ApiError::Unavailable(error.to_string())
        } else {
            ApiError::Internal(error.to_string())
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        // Every publish failure (unreachable, nack, return, no confirm) means the broker did not
        // take the job: the caller may retry later.
        ApiError::Unavailable(error.to_string())
    }
}
