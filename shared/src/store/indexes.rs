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
        // index on every server we support.
        self.devices
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "organization": 1, "lookupKeys": 1 })
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
        self.jobs
            .create_index(
                IndexModel::builder()
                    .keys(doc! { "organization": 1, "device": 1, "createdAt": -1 })
                    .build(),
            )
            .await?;
        Ok(())
    }
}
