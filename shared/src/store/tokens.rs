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
        // Found by equality on the SHA-256 of a 256-bit secret: how long the comparison takes
        // could only tell an attacker about hashes, which they cannot invert into a token.
        Ok(self.tokens.find_one(doc! { "hash": hash }).await?)
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
