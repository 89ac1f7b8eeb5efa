//! Request rates per token and per organization (GCRA, `governor`), and the `RateLimit-*`
//! headers that tell a caller where it stands: on every authenticated answer, 429 included.
//! Failed authentications are limited per client address, since they have no token to count.

use crate::error::seconds_rounded_up;
use crate::settings::{ApiSettings, DeviceListenerSettings};
use axum::{
    extract::Request,
    http::{HeaderMap, HeaderValue},
    middleware::Next,
    response::Response,
};
use bson::oid::ObjectId;
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::{StateInformationMiddleware, StateSnapshot},
    state::keyed::DefaultKeyedStateStore,
};
use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

type Limiter = RateLimiter<
    ObjectId,
    DefaultKeyedStateStore<ObjectId>,
    DefaultClock,
    StateInformationMiddleware,
>;

pub struct RateLimits {
    tokens: Limiter,
    organizations: Limiter,
    /// Reports per device, on the device listener.
    devices: Limiter,
    failures: governor::DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses over their failure allowance → until when their requests are refused.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

/// Where a caller stands: the tighter of its token's and its organization's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Requests that may come at once (the burst).
    pub limit: u32,
    pub remaining: u32,
    /// Until the allowance is whole again; for a refused request, until the next one may come
    /// (its `Retry-After`).
    pub reset: Duration,
}

impl RateLimits {
    pub fn new(settings: &ApiSettings, device: &DeviceListenerSettings) -> RateLimits {
        let limiter = |rate: NonZeroU32, burst: NonZeroU32| {
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
                .with_middleware::<StateInformationMiddleware>()
        };
        RateLimits {
            tokens: limiter(settings.rate_limit_per_second, settings.rate_limit_burst),
            organizations: limiter(
                settings.organization_rate_limit_per_second,
                settings.organization_rate_limit_burst,
            ),
            devices: limiter(device.rate_limit_per_second, device.rate_limit_burst),
            failures: RateLimiter::keyed(
                Quota::per_second(settings.auth_failure_rate_limit_per_second)
                    .allow_burst(settings.auth_failure_burst),
            ),
            blocked: Mutex::default(),
        }
    }

    /// How long requests from `client` are still refused, after too many failed
    /// authentications.
    pub fn blocked(&self, client: IpAddr) -> Option<Duration> {
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let until = *blocked.get(&client)?;
        until.checked_duration_since(Instant::now())
    }

    /// Counts a failed authentication from `client`; past the allowance, blocks the address
    /// and returns for how long.
    pub fn failed(&self, client: IpAddr) -> Option<Duration> {
        let not_until = self.failures.check_key(&client).err()?;
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked.insert(client, Instant::now() + wait);
        Some(wait)
    }

    /// Counts one request of `token` of `organization`: its standing, `Err` when refused.
    pub fn check(&self, token: ObjectId, organization: ObjectId) -> Result<Standing, Standing> {
        let of_token = check(&self.tokens, token)?;
        let of_organization = check(&self.organizations, organization)?;
        Ok(if of_organization.remaining < of_token.remaining {
            of_organization
        } else {
            of_token
        })
    }

    /// Counts one report of `device`: its standing, `Err` when refused.
    pub fn check_device(&self, device: ObjectId) -> Result<Standing, Standing> {
        check(&self.devices, device)
    }

    /// Drops the state of keys not seen for a while, so it does not grow with every token.
    pub fn retain_recent(&self) {
        self.tokens.retain_recent();
        self.devices.retain_recent();
        self.organizations.retain_recent();
        self.failures.retain_recent();
        let now = Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked.retain(|_, until| *until > now);
    }
}

fn check(limiter: &Limiter, key: ObjectId) -> Result<Standing, Standing> {
    match limiter.check_key(&key) {
        Ok(snapshot) => Ok(standing(&snapshot)),
        Err(not_until) => Err(Standing {
            limit: not_until.quota().burst_size().get(),
            remaining: 0,
            reset: not_until.wait_time_from(DefaultClock::default().now()),
        }),
    }
}

fn standing(snapshot: &StateSnapshot) -> Standing {
    let quota = snapshot.quota();
    let limit = quota.burst_size().get();
    let remaining = snapshot.remaining_burst_capacity();
    Standing {
        limit,
        remaining,
        reset: quota.replenish_interval() * (limit - remaining.min(limit)),
    }
}

/// Where the authenticating extractor leaves the caller's standing for [`headers`].
#[derive(Clone, Default)]
pub struct StandingSlot(Arc<Mutex<Option<Standing>>>);

impl StandingSlot {
    pub fn set(&self, standing: Standing) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(standing);
        }
    }

    fn take(&self) -> Option<Standing> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// Records `checked` (a caller's standing after counting its request) for the `RateLimit-*`
/// headers; 429 when the request was refused.
pub fn within_limit(
    parts: &axum::http::request::Parts,
    checked: Result<Standing, Standing>,
) -> Result<(), crate::error::ApiError> {
    within(parts.extensions.get::<StandingSlot>(), checked)
}

/// [`within_limit`] for a handler that learns who is counted only from the body: it holds
/// the request's `slot` itself.
pub fn within(
    slot: Option<&StandingSlot>,
    checked: Result<Standing, Standing>,
) -> Result<(), crate::error::ApiError> {
    let (Ok(standing) | Err(standing)) = checked;
    if let Some(slot) = slot {
        slot.set(standing);
    }
    match checked {
        Ok(_) => Ok(()),
        Err(_) => Err(crate::error::ApiError::RateLimited {
            retry_after: standing.reset,
        }),
    }
}

/// Middleware: gives the handler a [`StandingSlot`] and turns what it holds afterwards into
/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds, rounded up).
pub async fn headers(mut request: Request, next: Next) -> Response {
    let slot = StandingSlot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    if let Some(standing) = slot.take() {
        write_headers(response.headers_mut(), standing);
    }
    response
}

fn write_headers(headers: &mut HeaderMap, standing: Standing) {
    headers.insert("ratelimit-limit", HeaderValue::from(standing.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(standing.remaining));
    headers.insert(
        "ratelimit-reset",
        HeaderValue::from(seconds_rounded_up(standing.reset)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use refresh_shared::settings::Load;

    fn limits(token_burst: u32, organization_burst: u32) -> RateLimits {
        let mut settings = ApiSettings::from_lookup(|_| None).expect("defaults are valid");
        settings.rate_limit_per_second = NonZeroU32::MIN;
        settings.rate_limit_burst = NonZeroU32::new(token_burst).expect("burst");
        settings.organization_rate_limit_per_second = NonZeroU32::MIN;
        settings.organization_rate_limit_burst =
            NonZeroU32::new(organization_burst).expect("burst");
        RateLimits::new(&settings, &device_defaults())
    }

    fn device_defaults() -> DeviceListenerSettings {
        DeviceListenerSettings::from_lookup(|_| None).expect("defaults are valid")
    }

    #[test]
    fn a_token_spends_its_burst_then_waits() {
        let limits = limits(3, 100);
        let (token, organization) = (ObjectId::new(), ObjectId::new());
        let remaining: Vec<u32> = (0..3)
            .map(|_| {
                limits
                    .check(token, organization)
                    .expect("within the burst")
                    .remaining
            })
            .collect();
        assert_eq!(remaining, [2, 1, 0]);
        let standing = limits.check(token, organization).expect_err("over");
        let wait = standing.reset;
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!((standing.limit, standing.remaining), (3, 0));
        // Another token of the same organization is not held back by the first.
        assert!(limits.check(ObjectId::new(), organization).is_ok());
    }

    #[test]
    fn an_organization_is_limited_across_its_tokens_and_alone() {
        let limits = limits(100, 4);
        let (flooding, other) = (ObjectId::new(), ObjectId::new());
        for _ in 0..4 {
            assert!(limits.check(ObjectId::new(), flooding).is_ok());
        }
        let standing = limits.check(ObjectId::new(), flooding).expect_err("over");
        assert_eq!((standing.limit, standing.remaining), (4, 0));
        let standing = limits
            .check(ObjectId::new(), other)
            .expect("another tenant");
        assert_eq!((standing.limit, standing.remaining), (4, 3));
    }

    #[test]
    fn an_address_failing_too_often_is_blocked_alone() {
        let mut settings = ApiSettings::from_lookup(|_| None).expect("defaults are valid");
        settings.auth_failure_rate_limit_per_second = NonZeroU32::MIN;
        settings.auth_failure_burst = NonZeroU32::new(3).expect("burst");
        let limits = RateLimits::new(&settings, &device_defaults());
        let (attacker, other) = (
            "192.0.2.1".parse().expect("ip"),
            "192.0.2.2".parse().expect("ip"),
        );
        for _ in 0..3 {
            assert_eq!(limits.failed(attacker), None, "within the allowance");
            assert_eq!(limits.blocked(attacker), None);
        }
        let wait = limits.failed(attacker).expect("over the allowance");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limits.blocked(attacker).is_some());
        assert_eq!(
            limits.blocked(other),
            None,
            "another address is not blocked"
        );
    }

    #[test]
    fn headers_say_seconds_rounded_up() {
        let mut headers = HeaderMap::new();
        let standing = Standing {
            limit: 100,
            remaining: 7,
            reset: Duration::from_millis(1_200),
        };
        write_headers(&mut headers, standing);
        assert_eq!(headers["ratelimit-limit"], "100");
        assert_eq!(headers["ratelimit-remaining"], "7");
        assert_eq!(headers["ratelimit-reset"], "2");
    }
}
