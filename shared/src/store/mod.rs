//! MongoDB: typed collections and the queries the product makes, nothing else.
//!
//! Every query for tenant data goes through [`tenant`], so no lookup can leave its organization.

mod audit;
mod batches;
mod cancel;
mod deliveries;
mod devices;
mod idempotency;
mod indexes;
mod inventory;
mod jobs;
mod organizations;
mod reports;
mod tokens;
mod webhooks;

pub use audit::{AuditAction, AuditEvent, AuditResult};
pub use batches::{BatchRecord, BatchState, ChunkProgress, DevicePage, Expansion, Skipped};
pub use cancel::BatchCanceled;
pub use deliveries::{DELIVERY_LOG_RETENTION, DeliveryAttempt, DeliveryRecord};
pub use devices::{
    Claim, Device, DeviceSummary, DeviceWalk, NewDevice, NodeKey, OmaDmIdentity,
    OmaDmIdentityRefused, PushRoutes, WnsChannel, WnsChannelStatus, cert_thumbprint,
};
pub use idempotency::{
    IDEMPOTENCY_ABANDONED_AFTER, IDEMPOTENCY_WINDOW, IdempotencyRecord, KeyAnswer, Reservation,
};
pub use inventory::{InventoryRecord, NodeValue};
pub use jobs::{
    Announced, CategoryRecord, CategoryUpdate, JobRecord, Transition, skip_cutoff, stale_after,
};
pub use organizations::{Allowance, Lease, Organization};
pub use reports::ReportApplied;
pub use tokens::ApiToken;
pub use webhooks::{AddEndpointError, MAX_ENDPOINTS_PER_ORGANIZATION, WebhookEndpoint};

use crate::{settings::MongoSettings, snapshot::Snapshot};
use bson::{Document, doc, oid::ObjectId};
use futures::TryStreamExt;
use mongodb::{
    Client, Collection, Database,
    error::{ErrorKind, IndexedWriteError, WriteFailure},
    options::{Acknowledgment, ClientOptions},
};
use secrecy::ExposeSecret;
use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

pub const ORGANIZATIONS: &str = "organizations";
pub const DEVICES: &str = "win_devices";
pub const TOKENS: &str = "api_tokens";
pub const JOBS: &str = "refresh_jobs";
pub const BATCHES: &str = "refresh_batches";
pub const BATCH_DEVICES: &str = "refresh_batch_devices";
pub const IDEMPOTENCY_KEYS: &str = "idempotency_keys";
pub const AUDIT_EVENTS: &str = "audit_events";
pub const INVENTORY: &str = "win_device_inventory";
pub const WEBHOOK_ENDPOINTS: &str = "webhook_endpoints";
pub const WEBHOOK_DELIVERIES: &str = "webhook_deliveries";

// Clone: a group of writes made as one answers each of its callers with the group's error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(#[source] mongodb::error::Error),
    #[error("{0} already exists")]
    Duplicate(String),
    #[error("stored document does not have the expected shape: {0}")]
    Corrupt(#[source] mongodb::error::Error),
    /// A stored field this build cannot read (written by hand, or by another program).
    #[error("stored field {0} is not what this build writes")]
    Unreadable(&'static str),
    /// One statement of a command that carried many was refused (the others were not).
    #[error("the database refused a write (code {code}): {message}")]
    Refused { code: i32, message: String },
    /// The write was made but not acknowledged as the write concern asks (by a majority).
    #[error("the write was not acknowledged as asked: {0}")]
    NotAcknowledged(String),
    #[error("database error: {0}")]
    Other(#[source] mongodb::error::Error),
}

impl From<mongodb::error::Error> for StoreError {
    fn from(error: mongodb::error::Error) -> Self {
        match *error.kind {
            ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
            | ErrorKind::Shutdown => StoreError::Unavailable(error),
            // A write the driver does not retry on its own (a command it runs as given) meets
            // an election or a server shutting down: it passes like an outage.
            ErrorKind::Command(ref command) if PASSING_COMMAND_ERRORS.contains(&command.code) => {
                StoreError::Unavailable(error)
            }
            ErrorKind::BsonDeserialization(_) => StoreError::Corrupt(error),
            _ => StoreError::Other(error),
        }
    }
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::NotAcknowledged(_)
        )
    }

    /// Whether `error` is a duplicate-key write error.
    fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
        matches!(&*error.kind, ErrorKind::Write(WriteFailure::WriteError(write)) if write.code == DUPLICATE_KEY)
    }

    /// Maps a duplicate-key write error to [`StoreError::Duplicate`] naming `what`.
    fn duplicate_as(error: mongodb::error::Error, what: impl FnOnce() -> String) -> StoreError {
        if StoreError::is_duplicate_key(&error) {
            StoreError::Duplicate(what())
        } else {
            error.into()
        }
    }
}

/// The server's code for a write refused by a unique index.
const DUPLICATE_KEY: i32 = 11000;

/// The server's codes for a command that failed because the server is stepping down, not
/// primary, shutting down or unreachable: the codes after which a write may be retried.
const PASSING_COMMAND_ERRORS: [i32; 12] = [
    6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

/// The answer to an `update` command, as far as it is read.
#[derive(serde::Deserialize)]
struct UpdateReply {
    #[serde(rename = "writeErrors", default)]
    write_errors: Vec<IndexedWriteError>,
    #[serde(rename = "writeConcernError")]
    write_concern_error: Option<Document>,
}

/// `filter` restricted to one organization: the only way tenant data is queried.
pub fn tenant(organization: ObjectId, mut filter: Document) -> Document {
    filter.insert("organization", organization);
    filter
}

/// A page of `organization`'s documents matching `filter`, newest first by id, from just past
/// the id `after` when given: a keyset on the id (its creation time, then the order each
/// process made them), so a page never shifts as documents are added.
async fn newest_first<T>(
    collection: &Collection<T>,
    organization: ObjectId,
    mut filter: Document,
    after: Option<ObjectId>,
    limit: u32,
) -> Result<Vec<T>, StoreError>
where
    T: serde::de::DeserializeOwned + Send + Sync,
{
    if let Some(after) = after {
        filter.insert("_id", doc! { "$lt": after });
    }
    Ok(collection
        .find(tenant(organization, filter))
        .sort(doc! { "_id": -1 })
        .limit(i64::from(limit))
        .await?
        .try_collect()
        .await?)
}

/// The database, through the queries below only: the collections are private, so every
/// tenant query goes through a method that filters by organization ([`tenant`]).
#[derive(Clone)]
pub struct Store {
    database: Database,
    organizations: Collection<Organization>,
    devices: Collection<Device>,
    tokens: Collection<ApiToken>,
    jobs: Collection<JobRecord>,
    batches: Collection<BatchRecord>,
    batch_devices: Collection<DevicePage>,
    idempotency_keys: Collection<IdempotencyRecord>,
    audit_events: Collection<AuditEvent>,
    inventory: Collection<InventoryRecord>,
    webhooks: Collection<WebhookEndpoint>,
    deliveries: Collection<DeliveryRecord>,
    /// Set once the server answered that it has no client `bulkWrite` (before MongoDB 8).
    bulk_write_missing: Arc<AtomicBool>,
}

impl Store {
    /// Builds the client; the driver connects lazily, so this fails only on a malformed URI.
    pub async fn connect(settings: &MongoSettings, app_name: &str) -> Result<Store, StoreError> {
        let mut options = ClientOptions::parse(settings.uri.expose_secret()).await?;
        options.app_name = Some(app_name.to_owned());
        // An unreachable server must turn into a 503 quickly, not after the driver's 30 s.
        options.server_selection_timeout = Some(settings.server_timeout);
        options.connect_timeout = Some(settings.server_timeout);
        // What a 200 or 202 promises must survive the loss of the primary (CONTRACT §7):
        // acknowledged by a majority of a replica set (on a single server, that server). A `w`
        // in MONGODB_URI is the operator's to set, and wins. Retryable writes are the driver's
        // default, kept: a write interrupted by an election is retried once.
        if options
            .write_concern
            .as_ref()
            .is_none_or(|concern| concern.w.is_none())
        {
            let mut concern = options.write_concern.take().unwrap_or_default();
            concern.w = Some(Acknowledgment::Majority);
            options.write_concern = Some(concern);
        }
        let client = Client::with_options(options)?;
        Ok(Store::new(client.database(&settings.database)))
    }

    /// Connects and makes sure every index exists: what a service does at start.
    pub async fn open(settings: &MongoSettings, app_name: &str) -> Result<Store, StoreError> {
        let store = Store::connect(settings, app_name).await?;
        store.ensure_indexes().await?;
        Ok(store)
    }

    fn new(database: Database) -> Store {
        Store {
            organizations: database.collection(ORGANIZATIONS),
            devices: database.collection(DEVICES),
            tokens: database.collection(TOKENS),
            jobs: database.collection(JOBS),
            batches: database.collection(BATCHES),
            batch_devices: database.collection(BATCH_DEVICES),
            idempotency_keys: database.collection(IDEMPOTENCY_KEYS),
            audit_events: database.collection(AUDIT_EVENTS),
            inventory: database.collection(INVENTORY),
            webhooks: database.collection(WEBHOOK_ENDPOINTS),
            deliveries: database.collection(WEBHOOK_DELIVERIES),
            bulk_write_missing: Arc::new(AtomicBool::new(false)),
            database,
        }
    }

    /// This store, writing groups one statement at a time as it does on a server without
    /// client `bulkWrite`: for such servers known in advance, and for tests of that path.
    pub fn without_bulk_write(self) -> Store {
        self.bulk_write_missing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Runs many update `statements` (each `{q, u, upsert?}`) on `collection` in one `update`
    /// command, unordered, with the database's write concern: one round trip for what would
    /// be as many `update_one`s, on every server (the driver's `bulk_write` needs MongoDB 8).
    /// Returns the statements refused, by index; the others applied.
    async fn update_each(
        &self,
        collection: &str,
        statements: Vec<Document>,
    ) -> Result<Vec<IndexedWriteError>, StoreError> {
        if statements.is_empty() {
            return Ok(Vec::new());
        }
        let mut command = doc! { "update": collection, "updates": statements, "ordered": false };
        if let Some(concern) = self.database.write_concern() {
            let concern = bson::to_document(concern)
                .map_err(|error| StoreError::Other(mongodb::error::Error::custom(error)))?;
            command.insert("writeConcern", concern);
        }
        let reply = self.database.run_command(command).await?;
        let reply: UpdateReply = bson::from_document(reply)
            .map_err(|error| StoreError::Corrupt(mongodb::error::Error::custom(error)))?;
        if let Some(concern) = reply.write_concern_error {
            return Err(StoreError::NotAcknowledged(concern.to_string()));
        }
        Ok(reply.write_errors)
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.database.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }
}

/// What a readiness probe says of the database: whether it answered a ping, asked at most once
/// a second however often the probe is called. Why it did not answer goes to the log only: the
/// probe is unauthenticated, and the error names hosts, ports and the driver's topology.
pub struct DatabaseProbe {
    store: Store,
    answered: Snapshot<bool>,
}

impl DatabaseProbe {
    pub fn new(store: Store) -> DatabaseProbe {
        DatabaseProbe {
            store,
            answered: Snapshot::new(Duration::from_secs(1)),
        }
    }

    pub async fn answers(&self) -> bool {
        self.answered
            .get(|| async {
                let pinged = self.store.ping().await;
                if let Err(error) = &pinged {
                    tracing::warn!(%error, "readiness: the database does not answer");
                }
                pinged.is_ok()
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use std::time::Duration;

    async fn write_concern_of(uri: &str) -> Option<Acknowledgment> {
        let settings = MongoSettings {
            uri: SecretString::from(uri.to_owned()),
            database: "unused".to_owned(),
            server_timeout: Duration::from_secs(1),
        };
        // The driver connects lazily: nothing listens there, and nothing needs to.
        let store = Store::connect(&settings, "test")
            .await
            .expect("a valid URI");
        store
            .database()
            .write_concern()
            .and_then(|concern| concern.w.clone())
    }

    #[tokio::test]
    async fn writes_are_acknowledged_by_a_majority_unless_the_uri_says_otherwise() {
        assert_eq!(
            write_concern_of("mongodb://127.0.0.1:1").await,
            Some(Acknowledgment::Majority)
        );
        assert_eq!(
            write_concern_of("mongodb://127.0.0.1:1/?journal=true").await,
            Some(Acknowledgment::Majority)
        );
        assert_eq!(
            write_concern_of("mongodb://127.0.0.1:1/?w=2").await,
            Some(Acknowledgment::Nodes(2))
        );
    }
}
