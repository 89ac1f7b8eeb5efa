//! Every index the product relies on, created at start (creating an existing index is a no-op).

use super::{Store, StoreError};
use bson::doc;
use mongodb::{IndexModel, options::IndexOptions};

impl Store {
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let unique = || IndexOptions::builder().unique(true).build();
        self.organizations
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "slug": 1 })
                    .options(unique())
                    .build(),
            )
            .await?;
        // Device lookup is one equality on this array (id, IMEI, serial): `$or` would not use an
        // index on every server we support. `organization` second: a planner that takes any
        // index with an `organization` prefix would otherwise scan a whole tenant for the
        // `{organization, _id}` queries instead of using `_id` (SecantusDB does).
        self.devices
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "lookupKeys": 1, "organization": 1 })
                    .build(),
            )
            .await?;
        self.tokens
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "hash": 1 })
                    .options(unique())
                    .build(),
            )
            .await?;
        // A device's jobs, newest first; `device` leads for the reason given above.
        self.jobs
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "device": 1, "organization": 1, "createdAt": -1 })
                    .build(),
            )
            .await?;
        // A batch's jobs for a chunk of devices (resuming an expansion), and its outcome counts.
        self.jobs
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "batch": 1, "device": 1 })
                    .build(),
            )
            .await?;
        self.jobs
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "batch": 1, "outcome": 1 })
                    .build(),
            )
            .await?;
        // A batch's device list, page by page.
        self.batch_devices
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "batch": 1, "page": 1 })
                    .options(unique())
                    .build(),
            )
            .await?;
        // Bulk refresh by filter: an organization's devices carrying some tags.
        self.devices
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "tags": 1, "organization": 1 })
                    .build(),
            )
            .await?;
        // The audit trail of a tenant, newest first.
        self.audit_events
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "organization": 1, "at": -1 })
                    .build(),
            )
            .await?;
        Ok(())
    }
}
