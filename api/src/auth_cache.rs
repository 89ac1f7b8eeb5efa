//! Tokens and organizations in memory for `AUTH_CACHE_TTL_MS`: every request needs both, and
//! both change rarely. Revocations are announced on the invalidations exchange
//! (`refresh_shared::broker::invalidations`) and drop the cache at once; the TTL bounds
//! staleness when an announcement is missed. Unknown token hashes are remembered for the same
//! TTL, so presenting one again costs no lookup (a token created meanwhile works once that
//! TTL has run out).

use bson::oid::ObjectId;
use moka::future::Cache;
use refresh_shared::{
    broker::Invalidation,
    store::{ApiToken, Organization, Store, StoreError},
};
use std::{future::Future, time::Duration};

/// Entries per cache: far above the tokens and organizations one api serves in a TTL.
const CAPACITY: u64 = 100_000;

pub struct AuthCache {
    /// By token hash (the key is a SHA-256 of the secret, never the secret itself).
    tokens: Option<Cache<String, ApiToken>>,
    /// Hashes no token has: the negative cache.
    unknown: Option<Cache<String, ()>>,
    organizations: Option<Cache<ObjectId, Organization>>,
}

impl AuthCache {
    pub fn new(ttl: Duration) -> AuthCache {
        AuthCache {
            tokens: cache(ttl),
            unknown: cache(ttl),
            organizations: cache(ttl),
        }
    }

    pub async fn token(&self, store: &Store, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        if let Some(unknown) = &self.unknown
            && unknown.contains_key(hash)
        {
            return Ok(None);
        }
        let found = read_through(
            self.tokens.as_ref(),
            hash.to_owned(),
            store.token_by_hash(hash),
        )
        .await?;
        if let (None, Some(unknown)) = (&found, &self.unknown) {
            unknown.insert(hash.to_owned(), ()).await;
        }
        Ok(found)
    }

    pub async fn organization(
        &self,
        store: &Store,
        id: ObjectId,
    ) -> Result<Option<Organization>, StoreError> {
        read_through(self.organizations.as_ref(), id, store.organization(id)).await
    }

    pub fn invalidate(&self, what: Invalidation) {
        if matches!(what, Invalidation::Tokens | Invalidation::Everything) {
            if let Some(cache) = &self.tokens {
                cache.invalidate_all();
            }
            if let Some(cache) = &self.unknown {
                cache.invalidate_all();
            }
        }
        if matches!(what, Invalidation::Organizations | Invalidation::Everything)
            && let Some(cache) = &self.organizations
        {
            cache.invalidate_all();
        }
    }
}

/// The cached value of `key`, else what `load` finds (cached when found).
async fn read_through<K, V>(
    cache: Option<&Cache<K, V>>,
    key: K,
    load: impl Future<Output = Result<Option<V>, StoreError>>,
) -> Result<Option<V>, StoreError>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    if let Some(cache) = cache
        && let Some(cached) = cache.get(&key).await
    {
        return Ok(Some(cached));
    }
    let found = load.await?;
    if let (Some(cache), Some(value)) = (cache, &found) {
        cache.insert(key, value.clone()).await;
    }
    Ok(found)
}

fn cache<K, V>(ttl: Duration) -> Option<Cache<K, V>>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    (!ttl.is_zero()).then(|| {
        Cache::builder()
            .max_capacity(CAPACITY)
            .time_to_live(ttl)
            .build()
    })
}
