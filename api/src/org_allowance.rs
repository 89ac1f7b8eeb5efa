//! An organization's request rate across the whole deployment (`ORG_RATE_LIMIT_PER_SECOND`,
//! `_BURST`): however many apis run, together they admit no more. The allowance lives in
//! MongoDB (`Store::lease_requests`, a GCRA on the organization's document); each api leases a
//! twentieth of a second's worth at a time and spends it from memory, so the database sees one
//! guarded write per lease rather than per request. What an api leased and did not spend is
//! lost to the others (at most one lease per api and organization: the allowance errs on the
//! side of refusing).

use bson::oid::ObjectId;
use moka::future::Cache;
use refresh_shared::store::{Allowance, Lease, Store, StoreError};
use std::{
    num::NonZeroU32,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tokio::sync::Mutex;

/// Leased requests not spent within this long are given up (and never reused).
const LEASE_IDLE: Duration = Duration::from_secs(10);
/// Organizations with a lease in memory: far above what one api serves at once.
const CAPACITY: u64 = 100_000;

pub struct OrgAllowance {
    allowance: Allowance,
    lease_size: u32,
    /// Per organization, what this api holds. The lock is held while a lease is fetched, so
    /// one api fetches one at a time per organization.
    leased: Cache<ObjectId, Arc<Mutex<Leased>>>,
}

#[derive(Default)]
struct Leased {
    /// Requests leased and not yet spent.
    left: u32,
    /// After a refusal, until when the allowance is known to be spent: requests meanwhile are
    /// refused without asking the database (a caller over its limit costs it nothing).
    spent_until: Option<Instant>,
}

impl OrgAllowance {
    pub fn new(rate: NonZeroU32, burst: NonZeroU32) -> OrgAllowance {
        let interval_us = 1_000_000 / i64::from(rate.get()).max(1);
        OrgAllowance {
            allowance: Allowance {
                interval_us: interval_us.max(1),
                tolerance_us: interval_us.max(1) * i64::from(burst.get()),
            },
            lease_size: (rate.get() / 20).clamp(1, burst.get()),
            leased: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_idle(LEASE_IDLE)
                .build(),
        }
    }

    /// Spends one request of `organization`'s allowance: `Ok(None)` when admitted,
    /// `Ok(Some(wait))` when the deployment has used it up for now.
    pub async fn admit(
        &self,
        store: &Store,
        organization: ObjectId,
    ) -> Result<Option<Duration>, StoreError> {
        let slot = self
            .leased
            .get_with(organization, async { Arc::default() })
            .await;
        let mut leased = slot.lock().await;
        if leased.left > 0 {
            leased.left -= 1;
            return Ok(None);
        }
        if let Some(wait) = leased
            .spent_until
            .and_then(|until| until.checked_duration_since(Instant::now()))
        {
            return Ok(Some(wait));
        }
        let lease = store
            .lease_requests(organization, self.lease_size, self.allowance, now_us())
            .await?;
        Ok(match lease {
            Lease::Granted(granted) => {
                *leased = Leased {
                    left: granted.saturating_sub(1),
                    spent_until: None,
                };
                None
            }
            Lease::Refused { wait_us } => {
                let wait = Duration::from_micros(u64::try_from(wait_us).unwrap_or(1));
                leased.spent_until = Instant::now().checked_add(wait);
                Some(wait)
            }
        })
    }
}

fn now_us() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}
