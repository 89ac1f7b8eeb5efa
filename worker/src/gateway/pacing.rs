//! Client-side pacing: a request rate per gateway, and holds on a target (a device at the agent
//! gateway, a channel at WNS) that asked us to wait. A throttled target never slows the others.

use super::Route;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

pub struct Pacing {
    agent: DefaultDirectRateLimiter,
    wns: DefaultDirectRateLimiter,
    /// Target → the instant before which it must not be pushed to.
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

    /// Puts `route` to `device` on hold for `duration` (never shortening a longer hold).
    pub fn hold_for(&self, route: Route<'_>, device: &str, duration: Duration) {
        // The gateway chose `duration`: a wait past what an `Instant` can hold is ignored rather
        // than allowed to panic (classify clamps it long before that).
        let Some(until) = Instant::now().checked_add(duration) else {
            return;
        };
        let mut holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        let entry = holds.entry(target(route, device)).or_insert(until);
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

fn target(route: Route<'_>, device: &str) -> String {
    match route {
        Route::Agent => format!("agent:{device}"),
        Route::Wns { channel_uri } => format!("wns:{channel_uri}"),
    }
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
}
