//! What one request may cost: how many are served at once, how large its headers may be, how
//! long its body may stall and how long its caller waits. Each refusal is an answer in the
//! envelope. (Body size is `DefaultBodyLimit`, per route; the rate limits are in `rate_limit`;
//! connections and their header reads are limited in `server`.)

use crate::error::ApiError;
use crate::settings::ApiSettings;
use axum::{
    body::{Body, Bytes, HttpBody},
    extract::rejection::BytesRejection,
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use refresh_shared::metric;
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::{Sleep, sleep},
};
use tower_http::timeout::{TimeoutBody, TimeoutError};

#[derive(Clone)]
pub struct Limits {
    header_bytes: usize,
    body_read_timeout: Duration,
    request_timeout: Duration,
    in_flight: Slots,
}

impl Limits {
    pub fn new(settings: &ApiSettings) -> Limits {
        Limits {
            header_bytes: settings.header_limit_bytes,
            body_read_timeout: settings.body_read_timeout,
            request_timeout: settings.request_timeout,
            in_flight: Slots::new(settings.max_in_flight_requests),
        }
    }
}

/// Requests served at once, refused (503 5030) rather than queued when all are taken: a queue
/// would only grow while the api is saturated.
#[derive(Clone)]
pub struct Slots(Arc<Semaphore>);

impl Slots {
    pub fn new(slots: usize) -> Slots {
        Slots(Arc::new(Semaphore::new(slots)))
    }

    pub fn take(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.0)
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded)
    }
}

/// Middleware: a route's own limit of requests at once (the bulk route, whose bodies are
/// megabytes: N of them at once must not multiply memory).
pub async fn within(State(slots): State<Slots>, request: Request, next: Next) -> Response {
    match slots.take() {
        Ok(slot) => {
            let response = next.run(request).await;
            drop(slot);
            response
        }
        Err(refused) => refused.into_response(),
    }
}

/// Middleware: refuses a request over the in-flight or header limits, makes its body fail with
/// [`TimeoutError`] when the client stalls (see [`body_timed_out`]), and answers 503 5040 when
/// the request outlives `REQUEST_TIMEOUT_MS`.
pub async fn enforce(State(limits): State<Limits>, request: Request, next: Next) -> Response {
    let slot = match limits.in_flight.take() {
        Ok(slot) => slot,
        Err(refused) => return refused.into_response(),
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
    // Both bounds: a stall between pieces, and the whole body past the request deadline (a
    // client dripping a byte a second would otherwise hold its slot long after its 5040).
    let stalls = TimeoutBody::new(limits.body_read_timeout, body);
    let body = Body::new(DeadlineBody::new(Body::new(stalls), limits.request_timeout));
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
        Ok(Err(failed)) => ApiError::Internal(failed.into()).into_response(),
        Err(_) => {
            metrics::counter!(metric::HTTP_REQUESTS_TIMED_OUT).increment(1);
            ApiError::RequestTimeout.into_response()
        }
    }
}

/// Whether a body could not be read because the client stalled past `BODY_READ_TIMEOUT_MS`
/// or had not sent it all by the request deadline.
pub fn body_timed_out(rejection: &BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = cause {
        if error.is::<TimeoutError>() || error.is::<DeadlinePassed>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// The request deadline passed before the whole body came.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not complete by the request deadline")]
pub struct DeadlinePassed;

/// A body that fails with [`DeadlinePassed`] when more of it is awaited after `deadline`.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn new(inner: Body, within: Duration) -> DeadlineBody {
        DeadlineBody {
            inner,
            deadline: Box::pin(sleep(within)),
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        // What has arrived is always delivered (a handler may read the body late, after a
        // slow lookup); only waiting for more past the deadline fails.
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending if self.deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Some(Err(axum::Error::new(DeadlinePassed))))
            }
            polled => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
