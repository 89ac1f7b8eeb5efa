//! The trace a request belongs to: the caller's `traceparent` continued, or a trace started
//! here. It goes on with the job (or batch) through RabbitMQ to the worker and the gateways.

use crate::validate;
use axum::http::HeaderMap;
use refresh_shared::trace::{HEADER, TraceParent};

/// The context the api sends on: a span of its own in the caller's trace, or a new trace when
/// the caller sent none, or one that is not valid (the recommendation's rule: restart).
pub fn request_trace(headers: &HeaderMap) -> TraceParent {
    // Two are ambiguous: neither is followed.
    let received = validate::single(headers, HEADER)
        .ok()
        .flatten()
        .and_then(|value| value.to_str().ok())
        .and_then(TraceParent::parse);
    received.map_or_else(TraceParent::root, |parent| parent.child())
}
