//! Waiting for something that should happen, with a deadline: never a sleep to synchronise.

use std::{
    fmt::Debug,
    future::Future,
    time::{Duration, Instant},
};

/// How long a test waits for something that should happen.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Reads `fetch` until what it read satisfies `done`, or panics with `what` and the last read
/// after `deadline`: a test that times out says where the thing it waited for got stuck.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut fetch: F,
    done: impl Fn(&T) -> bool,
) -> T
where
    T: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let started = Instant::now();
    loop {
        let value = fetch().await;
        if done(&value) {
            return value;
        }
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}; last seen: {value:#?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
