//! Who is reporting: the device whose node key the request carries (`Authorization: Bearer
//! <node key>`), for the device listener's routes. A key reports for its own device only.

use crate::{
    auth::{bearer_token, refused, unblocked_client},
    error::{ApiError, FieldProblem},
    rate_limit::within_limit,
    state::AppState,
    validate,
};
use axum::{
    extract::{FromRequestParts, Path},
    http::request::Parts,
};
use refresh_shared::{store::Device, token};
use subtle::ConstantTimeEq;

/// A device that proved itself with its node key, within its rate limit.
#[derive(Debug, Clone)]
pub struct ReportingDevice(pub Device);

impl FromRequestParts<AppState> for ReportingDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = unblocked_client(parts, state)?;
        let found = match bearer_token(parts) {
            Ok(presented) => identify(parts, state, &token::hash(presented)).await,
            Err(refused) => Err(refused),
        };
        let device = found.map_err(|error| match error {
            // Guessing keys costs the guesser, as guessing tokens does.
            ApiError::Unauthorized | ApiError::NoToken => refused(state, client, error),
            other => other,
        })?;
        within_limit(parts, state.rate_limits.check_device(device.id))?;
        Ok(ReportingDevice(device))
    }
}

/// The device the path names, if `hash` is its node key's. A key of another device is "not
/// found" (that device's key is valid, this device is not its to report for); a key of no
/// device is unauthorized.
async fn identify(parts: &mut Parts, state: &AppState, hash: &str) -> Result<Device, ApiError> {
    let Path(device_id) = Path::<String>::from_request_parts(parts, state)
        .await
        .map_err(|rejection| {
            ApiError::Validation(vec![FieldProblem::new("path", rejection.body_text())])
        })?;
    let id = validate::object_id("deviceId", &device_id)
        .map_err(|problem| ApiError::Validation(vec![problem]))?;
    if let Some(device) = state.store.device_by_id(id).await? {
        let stored = device.node_key.as_ref().map(|key| key.hash.as_bytes());
        if stored.is_some_and(|stored| bool::from(stored.ct_eq(hash.as_bytes()))) {
            return Ok(device);
        }
    }
    match state.store.device_by_node_key(hash).await? {
        Some(_) => Err(ApiError::NotFound),
        None => Err(ApiError::Unauthorized),
    }
}
