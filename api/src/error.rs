//! `ApiError`: the one place that knows the contract's error codes and renders the envelope
//! `{"status":false,"error":{"code":N,"message":"…"}}`.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use refresh_events::announce::AnnounceError;
use refresh_shared::{broker::BrokerError, error_chain as chain, store::StoreError};
use serde::Serialize;
use std::time::Duration;

/// One reason a request was invalid, as `error.details` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

/// Every answer other than success. `ErrorKind` (derived) names the variants without their data:
/// it carries the contract's error table, which the OpenAPI document is built from.
#[derive(Debug, thiserror::Error, strum::EnumDiscriminants)]
#[strum_discriminants(name(ErrorKind), derive(strum::EnumIter))]
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
    /// A cancel of a job whose every category had ended already.
    #[error("job already finished")]
    JobFinished,
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
    /// `MAX_IN_FLIGHT_REQUESTS` are being served already, or `MAX_CONNECTIONS` are open.
    #[error("too many requests in flight")]
    Overloaded,
    /// No answer within `REQUEST_TIMEOUT_MS`; the request's work goes on.
    #[error("request timed out")]
    RequestTimeout,
    #[error("dependency unavailable")]
    Unavailable(#[source] Cause),
    /// `/readyz`: which dependencies are down, as details.
    #[error("not ready")]
    NotReady(Vec<FieldProblem>),
    #[error("internal error")]
    Internal(#[source] Cause),
}

/// What went wrong behind a 500 or 503, with its whole chain of causes, for the log only.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// What a caller should wait before trying again after a 503.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(5);

impl ErrorKind {
    /// The contract's error table: HTTP status, `error.code` and `error.message`.
    pub fn parts(self) -> (StatusCode, u16, &'static str) {
        match self {
            ErrorKind::NoToken => (StatusCode::UNAUTHORIZED, 4002, "No auth token"),
            ErrorKind::Unauthorized => (StatusCode::UNAUTHORIZED, 4001, "Unauthorized"),
            ErrorKind::Forbidden => (StatusCode::FORBIDDEN, 4003, "Forbidden"),
            ErrorKind::Validation => (StatusCode::BAD_REQUEST, 1001, "Validation failed"),
            ErrorKind::PayloadTooLarge => {
                (StatusCode::PAYLOAD_TOO_LARGE, 1002, "Payload too large")
            }
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, 3001, "Entity not found"),
            ErrorKind::DeviceNotActive => (StatusCode::CONFLICT, 3002, "Device not active"),
            ErrorKind::JobFinished => (StatusCode::CONFLICT, 3003, "Job already finished"),
            ErrorKind::RateLimited => (StatusCode::TOO_MANY_REQUESTS, 4290, "Too many requests"),
            ErrorKind::IdempotencyMismatch => (
                StatusCode::CONFLICT,
                4091,
                "Idempotency key already used with a different request",
            ),
            ErrorKind::IdempotencyInProgress => (
                StatusCode::CONFLICT,
                4092,
                "A request with this idempotency key is still in progress",
            ),
            ErrorKind::RouteNotFound => (StatusCode::NOT_FOUND, 4040, "Route not found"),
            ErrorKind::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, 4050, "Method not allowed")
            }
            ErrorKind::HeadersTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                4310,
                "Request headers too large",
            ),
            ErrorKind::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                4080,
                "Request body not received in time",
            ),
            ErrorKind::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, 5030, "Server busy"),
            ErrorKind::RequestTimeout => {
                (StatusCode::SERVICE_UNAVAILABLE, 5040, "Request timed out")
            }
            ErrorKind::Unavailable | ErrorKind::NotReady => {
                (StatusCode::SERVICE_UNAVAILABLE, 5003, "Service unavailable")
            }
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, 5000, "Internal error"),
        }
    }

    /// The answers that carry `Retry-After`.
    pub fn has_retry_after(self) -> bool {
        matches!(
            self,
            ErrorKind::RateLimited
                | ErrorKind::IdempotencyInProgress
                | ErrorKind::Overloaded
                | ErrorKind::RequestTimeout
                | ErrorKind::Unavailable
                | ErrorKind::NotReady
        )
    }
}

impl ApiError {
    fn parts(&self) -> (StatusCode, u16, &'static str) {
        ErrorKind::from(self).parts()
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after } => Some(*retry_after),
            ApiError::Unavailable(_) | ApiError::NotReady(_) => Some(UNAVAILABLE_RETRY_AFTER),
            other if ErrorKind::from(other).has_retry_after() => Some(Duration::from_secs(1)),
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
            ApiError::Internal(cause) => {
                tracing::error!(cause = chain(cause.as_ref()), "request failed unexpectedly");
            }
            ApiError::Unavailable(cause) => {
                tracing::warn!(cause = chain(cause.as_ref()), "dependency unavailable");
            }
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
            // `Retry-After: 0` would invite an immediate retry.
            let seconds = seconds_rounded_up(after).max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Whole seconds, rounded up, as `Retry-After` and `RateLimit-Reset` give them.
pub fn seconds_rounded_up(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if error.is_unavailable() {
            ApiError::Unavailable(error.into())
        } else {
            ApiError::Internal(error.into())
        }
    }
}

impl From<AnnounceError> for ApiError {
    fn from(error: AnnounceError) -> Self {
        match error {
            AnnounceError::Store(error) => error.into(),
            AnnounceError::Broker(error) => error.into(),
        }
    }
}

impl From<BrokerError> for ApiError {
    fn from(error: BrokerError) -> Self {
        // Every publish failure (unreachable, nack, return, no confirm) means the broker did not
        // take the job: the caller may retry later.
        ApiError::Unavailable(error.into())
    }
}
