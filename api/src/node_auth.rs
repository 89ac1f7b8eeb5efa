//! Who is reporting: the device whose node key the request carries (`Authorization: Bearer
//! <node key>`), for the device listener's routes. A key reports for its own device only.

use crate::{
    auth::bearer_token,
    error::{ApiError, FieldProblem},
    rate_limit::StandingSlot,
    state::AppState,
    validate,
};
use axum::{
    extract::{ConnectInfo, FromRequestParts, Path},
    http::request::Parts,
};
use refresh_shared::{store::Device, token};
use std::net::SocketAddr;
use subtle::ConstantTimeEq;

/// A device that proved itself with its node key, within its rate limit.
#[derive(Debug, Clone)]
pub struct ReportingDevice(pub Device);

impl FromRequestParts<AppState> for ReportingDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(address)| address.ip());
        if let Some(wait) = client.and_then(|client| state.rate_limits.blocked(client)) {
            return Err(ApiError::RateLimited { retry_after: wait });
        }
        let found = match bearer_token(parts) {
            Ok(presented) => identify(parts, state, &token::hash(presented)).await,
            Err(refused) => Err(refused),
        };
        let device = match found {
            Ok(device) => device,
            Err(error @ (ApiError::Unauthorized | ApiError::NoToken)) => {
                // Guessing keys costs the guesser: the address is limited like a token guesser.
                let blocked = client.and_then(|client| state.rate_limits.failed(client));
                return Err(match blocked {
                    Some(wait) => ApiError::RateLimited { retry_after: wait },
                    None => error,
                });
            }
            Err(other) => return Err(other),
        };
        let checked = state.rate_limits.check_device(device.id);
        let (Ok(standing) | Err(standing)) = checked;
        if let Some(slot) = parts.extensions.get::<StandingSlot>() {
            slot.set(standing);
        }
        if checked.is_err() {
            return Err(ApiError::RateLimited {
                retry_after: standing.reset,
            });
        }
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
