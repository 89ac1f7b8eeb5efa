//! Every index the product relies on, created at start (creating an existing index is a no-op).

use super::{DELIVERY_LOG_RETENTION, IDEMPOTENCY_WINDOW, Store, StoreError};
use bson::{Document, doc};
use mongodb::{Collection, IndexModel, error::ErrorKind, options::IndexOptions};

/// An index on `keys`, unique or not.
fn index(keys: Document, unique: bool) -> IndexModel {
    let options = IndexOptions::builder().unique(unique).build();
    IndexModel::builder().keys(keys).options(options).build()
}

async fn ensure<T: Send + Sync>(
    collection: &Collection<T>,
    indexes: impl IntoIterator<Item = IndexModel>,
) -> Result<(), StoreError> {
    for model in indexes {
        collection.create_index(model).await?;
    }
    Ok(())
}

/// Indexes earlier versions made on jobs that no query reads any more. Each still costs every
/// job written (a request's, every one of a batch's) an entry, so they are dropped at start.
///
/// `{device, organization, createdAt}`: a device's jobs are read newest first by `_id` (its
/// creation time), never by `createdAt`.
const RETIRED_JOB_INDEXES: &[&str] = &["device_1_organization_1_createdAt_-1"];

/// Drops the indexes named `names` where they exist. Every process does this at start, so
/// another one may have dropped an index first.
async fn retire<T: Send + Sync>(
    collection: &Collection<T>,
    names: &[&str],
) -> Result<(), StoreError> {
    for name in names {
        match collection.drop_index(*name).await {
            Ok(()) => tracing::info!(
                collection = collection.name(),
                index = name,
                "dropped an index nothing reads"
            ),
            Err(error) if already_gone(&error) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// The server's answer to dropping an index that does not exist.
fn already_gone(error: &mongodb::error::Error) -> bool {
    const INDEX_NOT_FOUND: i32 = 27;
    matches!(&*error.kind, ErrorKind::Command(command) if command.code == INDEX_NOT_FOUND)
}

impl Store {
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        ensure(&self.organizations, [index(doc! { "slug": 1 }, true)]).await?;
        ensure(
            &self.devices,
            [
                // Device lookup is one equality on this array (id, IMEI, serial): `$or` would
                // not use an index on every server we support. `organization` second: a planner
                // that takes any index with an `organization` prefix would otherwise scan a
                // whole tenant for the `{organization, _id}` queries instead of using `_id`
                // (SecantusDB does).
                index(doc! { "lookupKeys": 1, "organization": 1 }, false),
                // Bulk refresh by filter: an organization's devices carrying some tags.
                index(doc! { "tags": 1, "organization": 1 }, false),
                // Bulk refresh by filter on state alone, and with no filter at all: the
                // tenant's devices (in a state) walked in `_id` order from a checkpoint, each
                // read exactly once (checked with explain on secantusd-rs: keys examined =
                // devices returned, no sort; without these the walk went through every
                // tenant's devices by `_id`). A device read by `{organization, _id}` still
                // takes `_id`.
                index(doc! { "organization": 1, "state": 1, "_id": 1 }, false),
                index(doc! { "organization": 1, "_id": 1 }, false),
                // A device reporting is found by its node key's hash. Not unique: most devices
                // have none, and 256 random bits do not collide.
                index(doc! { "nodeKey.hash": 1 }, false),
                // A device opening an OMA-DM session is found by its certificate.
                index(doc! { "omadm.certThumbprint": 1 }, false),
            ],
        )
        .await?;
        ensure(&self.tokens, [index(doc! { "hash": 1 }, true)]).await?;
        // An organization's endpoints: listed, counted, and found for an event's delivery.
        ensure(
            &self.webhooks,
            [index(doc! { "organization": 1, "_id": 1 }, false)],
        )
        .await?;
        ensure(
            &self.deliveries,
            [
                // One log per message and endpoint: an announcement made again finds it.
                index(doc! { "endpoint": 1, "messageId": 1 }, true),
                // An endpoint's deliveries, newest first, page by page.
                index(doc! { "endpoint": 1, "organization": 1, "_id": -1 }, false),
                // The log expires: without this it only grows.
                IndexModel::builder()
                    .keys(doc! { "createdAt": 1 })
                    .options(
                        IndexOptions::builder()
                            .expire_after(DELIVERY_LOG_RETENTION)
                            .build(),
                    )
                    .build(),
            ],
        )
        .await?;
        ensure(
            &self.jobs,
            [
                // A device's history, newest first, page by page from a cursor (a job id);
                // `device` leads for the reason given above.
                index(doc! { "device": 1, "organization": 1, "_id": -1 }, false),
                // A batch's jobs for a chunk of devices (resuming an expansion), and its
                // outcomes (recounting a batch).
                index(doc! { "batch": 1, "device": 1 }, false),
                index(doc! { "batch": 1, "outcome": 1 }, false),
            ],
        )
        .await?;
        retire(&self.jobs, RETIRED_JOB_INDEXES).await?;
        // A batch's device list, page by page.
        ensure(
            &self.batch_devices,
            [index(doc! { "batch": 1, "page": 1 }, true)],
        )
        .await?;
        // Keys expire: without this the collection only grows.
        let expiring = IndexOptions::builder()
            .expire_after(IDEMPOTENCY_WINDOW)
            .build();
        ensure(
            &self.idempotency_keys,
            [IndexModel::builder()
                .keys(doc! { "createdAt": 1 })
                .options(expiring)
                .build()],
        )
        .await?;
        // One document per (device, category): the upsert that stores a report relies on it to
        // refuse an older report instead of adding a second document.
        ensure(
            &self.inventory,
            [index(doc! { "device": 1, "category": 1 }, true)],
        )
        .await?;
        // The audit trail of a tenant, newest first.
        ensure(
            &self.audit_events,
            [index(doc! { "organization": 1, "at": -1 }, false)],
        )
        .await?;
        Ok(())
    }
}
