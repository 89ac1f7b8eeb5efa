use super::{Store, StoreError, tenant};
use crate::token;
use bson::{DateTime, doc, oid::ObjectId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiToken {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub organization: ObjectId,
    /// SHA-256 of the token; the plaintext is never stored.
    pub hash: String,
    pub permissions: Vec<String>,
    pub created_at: DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime>,
}

impl ApiToken {
    pub fn is_usable(&self, now: DateTime) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expiry| expiry > now)
    }

    pub fn allows(&self, permission: &str) -> bool {
        self.permissions.iter().any(|p| p == permission)
    }
}

impl Store {
    /// Creates a token and returns it with its plaintext, which exists nowhere else afterwards.
    pub async fn create_token(
        &self,
        organization: ObjectId,
        permissions: Vec<String>,
        expires_at: Option<DateTime>,
    ) -> Result<(ApiToken, String), StoreError> {
        let new = token::generate();
        let record = ApiToken {
            id: ObjectId::new(),
            organization,
            hash: new.hash,
            permissions,
            created_at: DateTime::now(),
            expires_at,
            revoked_at: None,
        };
        self.tokens.insert_one(&record).await?;
        Ok((record, new.plaintext))
    }

    /// The token whose plaintext hashes to `hash`, usable or not.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        let found = self.tokens.find_one(doc! { "hash": hash }).await?;
        // The index found it by equality; compare once more in constant time so the answer's
        // timing never depends on how much of a hash matched.
        Ok(found.filter(|t| token::hashes_match(&t.hash, hash)))
    }

    /// Revokes a token of `organization`; false when there is no such token.
    pub async fn revoke_token(
        &self,
        organization: ObjectId,
        id: ObjectId,
    ) -> Result<bool, StoreError> {
        let result = self
            .tokens
            .update_one(
                tenant(organization, doc! { "_id": id, "revokedAt": null }),
                doc! { "$set": { "revokedAt": DateTime::now() } },
            )
            .await?;
        Ok(result.matched_count == 1)
    }
}
