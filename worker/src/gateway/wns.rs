//! Windows Push Notification Services: an OAuth client-credentials token, cached until it
//! expires, and raw pushes to the device's channel URI.

use super::{PushPayload, PushResult, agent::without_url, classify, classify::Verdict};
use crate::settings::GatewaySettings;
use refresh_shared::{device::Gateway, trace};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio::sync::Mutex;
use url::Url;

/// Renew a token this long before WNS would expire it, so no push carries a dying token.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// The raw payload: Windows ignores it (MS-MDM push), so it says nothing but what it is for.
const WAKE_UP: &[u8] = b"mdm-session";
/// The longest a token is reused, whatever `expires_in` says (WNS issues them for a day).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

pub struct WnsGateway {
    http: reqwest::Client,
    token_url: Url,
    client_id: String,
    client_secret: SecretString,
    token: Mutex<Option<AccessToken>>,
}

#[derive(Clone)]
struct AccessToken {
    value: SecretString,
    renew_at: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

impl WnsGateway {
    pub fn new(http: reqwest::Client, settings: &GatewaySettings) -> WnsGateway {
        WnsGateway {
            http,
            token_url: settings.wns_token_url.clone(),
            client_id: settings.wns_client_id.clone(),
            client_secret: settings.wns_client_secret.clone(),
            token: Mutex::new(None),
        }
    }

    /// Pushes to `channel`, which the caller checked against the channel policy.
    pub async fn push(&self, channel: Url, payload: &PushPayload) -> PushResult {
        let token = match self.token(false).await {
            Ok(token) => token,
            Err(result) => return result,
        };
        let result = self.send(&channel, &token, payload).await;
        if result.verdict != Verdict::RenewToken {
            return result;
        }
        // 401: the token was revoked or expired early. One fresh token, one more try.
        let token = match self.token(true).await {
            Ok(token) => token,
            Err(result) => return result,
        };
        let result = self.send(&channel, &token, payload).await;
        match result.verdict {
            Verdict::RenewToken => {
                permanent("WNS rejected a freshly issued token (401)".to_owned())
            }
            _ => result,
        }
    }

    async fn send(&self, channel: &Url, token: &SecretString, payload: &PushPayload) -> PushResult {
        let request = self
            .http
            .post(channel.clone())
            .bearer_auth(token.expose_secret())
            // A raw notification: for an MDM channel it only wakes the DM client.
            .header("X-WNS-Type", "wns/raw")
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            // An offline device gets the push when it reconnects, while the job still wants it.
            .header("X-WNS-Cache-Policy", "cache")
            .header("X-WNS-TTL", time_to_live(payload.expires_at).to_string())
            // Correlation vector: lets a push be traced from our job to Microsoft's logs.
            .header("MS-CV", &payload.job_id)
            .body(WAKE_UP);
        let request = match payload.traceparent() {
            Some(traceparent) => request.header(trace::HEADER, traceparent),
            None => request,
        };
        match request.send().await {
            Ok(response) => PushResult::answered(
                classify::wns(response.status(), response.headers()),
                Gateway::Wns,
                response.status(),
            ),
            Err(error) => PushResult {
                verdict: classify::unreachable(Gateway::Wns),
                detail: format!("WNS unreachable: {}", without_url(&error)),
            },
        }
    }

    /// The cached token, or a new one when there is none, it is near expiry, or `renew`.
    async fn token(&self, renew: bool) -> Result<SecretString, PushResult> {
        let mut cached = self.token.lock().await;
        if !renew && let Some(token) = cached.as_ref().filter(|t| t.renew_at > Instant::now()) {
            return Ok(token.value.clone());
        }
        let fresh = self.request_token().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    async fn request_token(&self) -> Result<AccessToken, PushResult> {
        if self.client_id.is_empty() {
            return Err(permanent(
                "WNS_CLIENT_ID and WNS_CLIENT_SECRET are not configured".to_owned(),
            ));
        }
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose_secret()),
            ("scope", "notify.windows.com"),
        ];
        let response = self
            .http
            .post(self.token_url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|error| PushResult {
                verdict: classify::unreachable(Gateway::Wns),
                detail: format!("WNS token endpoint unreachable: {}", without_url(&error)),
            })?;
        let status = response.status();
        if let Some(verdict) = classify::wns_token(status) {
            return Err(PushResult {
                verdict,
                detail: format!("WNS token endpoint answered {status}"),
            });
        }
        let token: TokenResponse = response.json().await.map_err(|error| PushResult {
            verdict: Verdict::Retry { after: None },
            detail: format!("WNS token response unreadable: {}", without_url(&error)),
        })?;
        let lifetime = Duration::from_secs(token.expires_in)
            .min(MAX_TOKEN_LIFETIME)
            .saturating_sub(EXPIRY_MARGIN);
        Ok(AccessToken {
            value: SecretString::from(token.access_token),
            renew_at: Instant::now() + lifetime,
        })
    }
}

/// The seconds until `expires_at`, at least one: a push sent at all is worth delivering now.
fn time_to_live(expires_at: OffsetDateTime) -> i64 {
    (expires_at - OffsetDateTime::now_utc())
        .whole_seconds()
        .max(1)
}

fn permanent(detail: String) -> PushResult {
    PushResult {
        verdict: Verdict::Permanent,
        detail,
    }
}
