//! Retry timing: the only module that touches the `backoff` crate.
//!
//! Every retry in the product (gateway pushes, broker and database reconnects) draws its delays
//! from a [`RetrySchedule`]: jittered exponential backoff, bounded in attempts and elapsed time.

use backoff::{ExponentialBackoff, ExponentialBackoffBuilder, backoff::Backoff};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max_interval: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub max_elapsed: Duration,
    /// Give up after this many attempts (the first one included).
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// Reconnecting to the broker or the database: keep trying, never wait more than 5 s.
    pub const RECONNECT: RetryPolicy = RetryPolicy {
        initial: Duration::from_millis(100),
        max_interval: Duration::from_secs(5),
        max_elapsed: Duration::MAX,
        max_attempts: u32::MAX,
    };

    pub fn schedule(&self) -> RetrySchedule {
        let max_elapsed = (self.max_elapsed != Duration::MAX).then_some(self.max_elapsed);
        RetrySchedule {
            backoff: ExponentialBackoffBuilder::new()
                .with_initial_interval(self.initial)
                .with_max_interval(self.max_interval)
                // ±50 % jitter so workers that failed together do not retry together.
                .with_randomization_factor(0.5)
                .with_multiplier(2.0)
                .with_max_elapsed_time(max_elapsed)
                .build(),
            attempts: 1,
            max_attempts: self.max_attempts,
        }
    }
}

/// The delays of one operation's retries, started when its first attempt starts.
#[derive(Debug)]
pub struct RetrySchedule {
    backoff: ExponentialBackoff,
    attempts: u32,
    max_attempts: u32,
}

impl RetrySchedule {
    /// How long to wait before the next attempt, or `None` once the policy is spent.
    /// `at_least` is the peer's own wish (`Retry-After` and the like), which always wins over a
    /// shorter backoff.
    pub fn next_delay(&mut self, at_least: Option<Duration>) -> Option<Duration> {
        if self.attempts >= self.max_attempts {
            return None;
        }
        let delay = self.backoff.next_backoff()?;
        self.attempts += 1;
        Some(at_least.map_or(delay, |floor| delay.max(floor)))
    }

    /// Attempts made so far, the first one included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(100),
            max_interval: Duration::from_millis(400),
            max_elapsed: Duration::from_secs(60),
            max_attempts,
        }
    }

    #[test]
    fn stops_after_max_attempts() {
        let mut schedule = policy(3).schedule();
        assert!(schedule.next_delay(None).is_some());
        assert!(schedule.next_delay(None).is_some());
        assert_eq!(schedule.attempts(), 3);
        assert_eq!(schedule.next_delay(None), None);
    }

    #[test]
    fn delays_are_jittered_bounded_and_honour_the_peer() {
        let mut schedule = policy(10).schedule();
        for _ in 0..5 {
            let delay = schedule.next_delay(None).expect("attempts left");
            assert!(delay <= Duration::from_millis(600), "{delay:?}");
        }
        let floor = Duration::from_secs(2);
        assert!(schedule.next_delay(Some(floor)).expect("attempts left") >= floor);
    }

    #[test]
    fn reconnect_policy_never_gives_up() {
        let mut schedule = RetryPolicy::RECONNECT.schedule();
        for _ in 0..1_000 {
            assert!(schedule.next_delay(None).expect("forever") <= Duration::from_millis(7_500));
        }
    }
}
