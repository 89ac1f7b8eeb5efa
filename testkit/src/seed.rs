//! The data a run needs before it starts: an organization and tokens of it.

use bson::oid::ObjectId;
use refresh_shared::store::{Organization, Store, StoreError};

/// A new organization (slug `<prefix>-<id>`) and `tokens` tokens of it with `permissions`,
/// each printed once as a plaintext.
pub async fn organization(
    store: &Store,
    prefix: &str,
    permissions: &[&str],
    tokens: usize,
) -> Result<(Organization, Vec<String>), StoreError> {
    let slug = format!("{prefix}-{}", ObjectId::new().to_hex());
    let organization = store.create_organization(&slug, prefix).await?;
    let mut plaintexts = Vec::with_capacity(tokens);
    for _ in 0..tokens {
        let permissions = permissions.iter().map(|p| (*p).to_owned()).collect();
        let (_, token) = store
            .create_token(organization.id, permissions, None)
            .await?;
        plaintexts.push(token);
    }
    Ok((organization, plaintexts))
}
