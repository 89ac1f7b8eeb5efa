//! Client-side pacing: a request rate per gateway, and holds on a target (a device at the agent
//! gateway, a channel at WNS) that asked us to wait. A throttled target never slows the others.
//! Holds are the deployment's: one this worker is asked for is announced to the others
//! ([`GatewayHold`]), and theirs are kept here.

use super::{Route, classify::MAX_REQUESTED_WAIT};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use refresh_shared::broker::GatewayHold;
use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

pub struct Pacing {
    agent: DefaultDirectRateLimiter,
    wns: DefaultDirectRateLimiter,
    /// Target digest → the instant before which it must not be pushed to.
    holds: Mutex<HashMap<String, Instant>>,
}

impl Pacing {
    pub fn new(agent_per_second: NonZeroU32, wns_per_second: NonZeroU32) -> Pacing {
        Pacing {
            agent: RateLimiter::direct(Quota::per_second(agent_per_second)),
            wns: RateLimiter::direct(Quota::per_second(wns_per_second)),
            holds: Mutex::new(HashMap::new()),
        }
    }

    /// How long `route` to `device` is still on hold, if it is.
    pub fn hold(&self, route: Route<'_>, device: &str) -> Option<Duration> {
        let key = target(route, device);
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // Expired holds go as they are met, so the map holds only live ones.
        holds.retain(|_, until| *until > now);
        holds.get(&key).map(|until| *until - now)
    }

    /// Puts `route` to `device` on hold for `duration` (never shortening a longer hold); the
    /// hold to announce to the other workers.
    pub fn hold_for(&self, route: Route<'_>, device: &str, duration: Duration) -> GatewayHold {
        let target = target(route, device);
        self.hold_until(&target, duration);
        GatewayHold {
            target,
            until_ms: unix_ms(SystemTime::now() + duration),
        }
    }

    /// Keeps a hold another worker announced. Its length is bounded like a gateway's own
    /// request: the broker is trusted no further than the gateway.
    pub fn keep(&self, hold: &GatewayHold) {
        let left = hold.until_ms.saturating_sub(unix_ms(SystemTime::now()));
        if let Ok(left) = u64::try_from(left) {
            let left = Duration::from_millis(left).min(MAX_REQUESTED_WAIT);
            self.hold_until(&hold.target, left);
        }
    }

    fn hold_until(&self, target: &str, duration: Duration) {
        // A wait past what an `Instant` can hold is ignored rather than allowed to panic
        // (every caller clamps it long before that).
        let Some(until) = Instant::now().checked_add(duration) else {
            return;
        };
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        let entry = holds.entry(target.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Waits for the gateway's rate limit to allow one more request.
    pub async fn ready(&self, route: Route<'_>) {
        match route {
            Route::Agent => self.agent.until_ready().await,
            Route::Wns { .. } => self.wns.until_ready().await,
        }
    }
}

/// The digest a hold on `route` to `device` is kept (and announced) by.
fn target(route: Route<'_>, device: &str) -> String {
    GatewayHold::digest(&match route {
        Route::Agent => format!("agent:{device}"),
        Route::Wns { channel_uri } => format!("wns:{channel_uri}"),
    })
}

fn unix_ms(at: SystemTime) -> i64 {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_covers_only_its_target_and_expires() {
        let limit = NonZeroU32::new(100).expect("non-zero");
        let pacing = Pacing::new(limit, limit);
        let channel = Route::Wns {
            channel_uri: "https://wns/a",
        };
        pacing.hold_for(channel, "d1", Duration::from_millis(50));
        assert!(
            pacing.hold(channel, "d2").is_some(),
            "a channel is held whatever the device"
        );
        assert!(pacing.hold(Route::Agent, "d1").is_none());
        assert!(
            pacing
                .hold(
                    Route::Wns {
                        channel_uri: "https://wns/b"
                    },
                    "d1"
                )
                .is_none()
        );
        pacing.hold_for(channel, "d1", Duration::from_millis(1));
        assert!(pacing.hold(channel, "d1").expect("held") > Duration::from_millis(10));
        std::thread::sleep(Duration::from_millis(60));
        assert!(pacing.hold(channel, "d1").is_none());
    }

    #[test]
    fn a_hold_one_worker_announces_holds_the_same_target_at_another() {
        let limit = NonZeroU32::new(100).expect("non-zero");
        let (heard, other) = (Pacing::new(limit, limit), Pacing::new(limit, limit));
        let channel = Route::Wns {
            channel_uri: "https://wns/secret-channel",
        };
        let hold = heard.hold_for(channel, "d1", Duration::from_secs(2));
        assert!(!hold.target.contains("secret-channel"), "{hold:?}");
        other.keep(&hold);
        let left = other.hold(channel, "d2").expect("held at the other worker");
        assert!(left > Duration::from_millis(1_500) && left <= Duration::from_secs(2));
        assert!(other.hold(Route::Agent, "d1").is_none());

        // Past holds are ignored; absurd ones are bounded like a gateway's own request.
        let agent = Pacing::new(limit, limit);
        let target = |pacing: &Pacing| pacing.hold_for(Route::Agent, "d9", Duration::ZERO).target;
        agent.keep(&GatewayHold {
            target: target(&heard),
            until_ms: 0,
        });
        assert!(agent.hold(Route::Agent, "d9").is_none());
        agent.keep(&GatewayHold {
            target: target(&heard),
            until_ms: i64::MAX,
        });
        assert!(agent.hold(Route::Agent, "d9").expect("held") <= MAX_REQUESTED_WAIT);
    }
}
