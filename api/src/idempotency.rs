//! `Idempotency-Key` on the refresh endpoints: the same key with the same request within 24 h
//! gets the first answer again; with another request, 409 4091.

use crate::{error::ApiError, state::AppState};
use axum::http::Uri;
use bson::oid::ObjectId;
use refresh_shared::store::{KeyAnswer, Reservation};
use sha2::{Digest, Sha256};

/// A key this request holds until it is answered.
pub struct HeldKey {
    organization: ObjectId,
    key: String,
}

/// What the request should do about its key.
pub enum KeyCheck {
    /// Handle the request; then [`finish`] with the key, if there was one.
    Proceed(Option<HeldKey>),
    /// Answer as the first request with the key was.
    Replay(KeyAnswer),
}

/// Reserves `key` for this request (its path and body; both routes take only POST), or says
/// why not.
pub async fn check(
    state: &AppState,
    organization: ObjectId,
    key: Option<String>,
    uri: &Uri,
    body: &[u8],
) -> Result<KeyCheck, ApiError> {
    let Some(key) = key else {
        return Ok(KeyCheck::Proceed(None));
    };
    let mut request = Sha256::new();
    for part in [uri.path().as_bytes(), b"\n", body] {
        request.update(part);
    }
    let request_hash = hex::encode(request.finalize());
    match state
        .store
        .reserve_idempotency_key(organization, &key, &request_hash, state.request_timeout)
        .await?
    {
        Reservation::Granted => Ok(KeyCheck::Proceed(Some(HeldKey { organization, key }))),
        Reservation::Replay(answer) => Ok(KeyCheck::Replay(answer)),
        Reservation::Mismatch => Err(ApiError::IdempotencyMismatch),
        Reservation::InProgress => Err(ApiError::IdempotencyInProgress),
    }
}

/// Remembers the answer under the key, or frees the key when the request failed so that a retry
/// is handled afresh.
pub async fn finish(
    state: &AppState,
    held: Option<HeldKey>,
    answer: Result<&KeyAnswer, &ApiError>,
) {
    let Some(HeldKey { organization, key }) = held else {
        return;
    };
    let recorded = match answer {
        Ok(answer) => {
            state
                .store
                .complete_idempotency_key(organization, &key, answer)
                .await
        }
        Err(_) => {
            state
                .store
                .release_idempotency_key(organization, &key)
                .await
        }
    };
    if let Err(error) = recorded {
        // The key stays "in progress" until REQUEST_TIMEOUT_MS and a margin have passed;
        // retries get 409 4092 meanwhile.
        tracing::error!(%error, "could not record the outcome of an idempotency key");
    }
}
