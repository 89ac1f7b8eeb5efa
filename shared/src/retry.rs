//! Retry timing: the only module that touches the `backoff` crate.
//!
//! Every retry in the product (gateway pushes, broker and database reconnects, holding a
//! delivery through an outage) draws its delays from a [`RetrySchedule`] and sleeps them with
//! [`RetrySchedule::wait`]: jittered exponential backoff, bounded in attempts and elapsed time,
//! cut short by a cancellation.

use backoff::{ExponentialBackoff, ExponentialBackoffBuilder, backoff::Backoff};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

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

    /// Holding a delivery while a dependency is away: like [`RetryPolicy::RECONNECT`], but
    /// given up after `limit`, so the broker never sees a delivery outlive its consumer
    /// timeout.
    pub fn hold(limit: Duration) -> RetryPolicy {
        RetryPolicy {
            max_elapsed: limit,
            ..RetryPolicy::RECONNECT
        }
    }

    pub fn schedule(&self) -> RetrySchedule {
        let max_elapsed = (self.max_elapsed != Duration::MAX).then_some(self.max_elapsed);
        RetrySchedule {
            started: Instant::now(),
            max_elapsed,
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
    started: Instant,
    /// No wait may end past this much time after `started`.
    max_elapsed: Option<Duration>,
    backoff: ExponentialBackoff,
    attempts: u32,
    max_attempts: u32,
}

impl RetrySchedule {
    /// How long to wait before the next attempt, or `None` once the policy is spent: out of
    /// attempts, or the wait would end past the policy's elapsed-time bound. `at_least` is the
    /// peer's own wish (`Retry-After` and the like), which always wins over a shorter backoff,
    /// and is never slept beyond that bound.
    pub fn next_delay(&mut self, at_least: Option<Duration>) -> Option<Duration> {
        if self.attempts >= self.max_attempts {
            return None;
        }
        let delay = self.backoff.next_backoff()?;
        let delay = at_least.map_or(delay, |floor| delay.max(floor));
        if !self.fits(delay) {
            return None;
        }
        self.attempts += 1;
        Some(delay)
    }

    /// Whether a wait of `delay`, starting now, ends within the policy's elapsed-time bound.
    pub fn fits(&self, delay: Duration) -> bool {
        self.max_elapsed
            .is_none_or(|bound| self.started.elapsed().saturating_add(delay) <= bound)
    }

    /// Sleeps until the next attempt is due: `Err(Spent)` at once when the policy is spent,
    /// `Err(Cancelled)` as soon as `cancel` fires. Returns the delay slept.
    pub async fn wait(
        &mut self,
        at_least: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Result<Duration, WaitEnd> {
        let delay = self.next_delay(at_least).ok_or(WaitEnd::Spent)?;
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(delay),
            () = cancel.cancelled() => Err(WaitEnd::Cancelled),
        }
    }
}

/// Why [`RetrySchedule::wait`] did not wait out a delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitEnd {
    /// The policy allows no further attempt.
    Spent,
    Cancelled,
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
    fn a_wait_past_the_elapsed_bound_is_never_taken() {
        let mut schedule = policy(10).schedule();
        // A peer asking for a year (or for u64::MAX seconds) gets no sleep: the policy is spent.
        assert_eq!(
            schedule.next_delay(Some(Duration::from_secs(365 * 86_400))),
            None
        );
        assert_eq!(schedule.next_delay(Some(Duration::MAX)), None);
        assert!(schedule.fits(Duration::from_secs(59)));
        assert!(!schedule.fits(Duration::from_secs(61)));
        let hold = RetryPolicy::hold(Duration::from_millis(300)).schedule();
        assert!(!hold.fits(Duration::from_millis(400)));
    }

    #[tokio::test]
    async fn wait_sleeps_until_spent_or_cancelled() {
        let cancel = CancellationToken::new();
        let mut schedule = RetryPolicy::hold(Duration::from_millis(400)).schedule();
        let mut waited = Duration::ZERO;
        while let Ok(delay) = schedule.wait(None, &cancel).await {
            waited += delay;
        }
        assert!(waited <= Duration::from_millis(400), "{waited:?}");
        assert_eq!(
            schedule.wait(None, &cancel).await,
            Err(WaitEnd::Spent),
            "spent stays spent"
        );
        cancel.cancel();
        let mut reconnect = RetryPolicy::RECONNECT.schedule();
        assert_eq!(reconnect.wait(None, &cancel).await, Err(WaitEnd::Cancelled));
    }

    #[test]
    fn reconnect_policy_never_gives_up() {
        let mut schedule = RetryPolicy::RECONNECT.schedule();
        for _ in 0..1_000 {
            assert!(schedule.next_delay(None).expect("forever") <= Duration::from_millis(7_500));
        }
    }
}
