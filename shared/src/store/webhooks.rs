//! Webhook endpoints: where an organization wants its refreshes' events delivered.

use super::{Store, StoreError, tenant};
use crate::{
    settings::WebhookSettings,
    webhook::{self, EndpointState, UrlRefusal, WebhookEvent},
};
use bson::{DateTime, doc, oid::ObjectId};
use futures::TryStreamExt;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// The most endpoints one organization may have: every event is delivered to each of its
/// subscribers, so this bounds the deliveries one refresh can cause.
pub const MAX_ENDPOINTS_PER_ORGANIZATION: u64 = 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpoint {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub organization: ObjectId,
    pub url: String,
    pub events: Vec<WebhookEvent>,
    /// What the endpoint's signing secret is derived from (with `WEBHOOK_SIGNING_KEY`), in hex:
    /// the secret itself is stored nowhere.
    pub salt: String,
    pub state: EndpointState,
    pub created_at: DateTime,
    pub updated_at: DateTime,
}

impl WebhookEndpoint {
    fn new(
        organization: ObjectId,
        url: String,
        events: Vec<WebhookEvent>,
        salt: &[u8],
    ) -> WebhookEndpoint {
        let now = DateTime::now();
        WebhookEndpoint {
            id: ObjectId::new(),
            organization,
            url,
            events,
            salt: hex::encode(salt),
            state: EndpointState::Active,
            created_at: now,
            updated_at: now,
        }
    }
}

/// Why an endpoint was not added.
#[derive(Debug, thiserror::Error)]
pub enum AddEndpointError {
    #[error("WEBHOOK_SIGNING_KEY is not set: webhooks are not configured")]
    NotConfigured,
    #[error("url {0}")]
    Url(#[from] UrlRefusal),
    #[error(
        "the organization has {MAX_ENDPOINTS_PER_ORGANIZATION} webhook endpoints, the most it may have: remove one first"
    )]
    TooMany,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Adds an endpoint for `events` (repeats merged, in the order first named) of the
    /// organization at `url`, if the URL is one the service may call (its form, then what its
    /// host resolves to); returns it with its signing secret, which nothing can show again.
    pub async fn add_webhook(
        &self,
        settings: &WebhookSettings,
        organization: ObjectId,
        url: String,
        events: Vec<WebhookEvent>,
    ) -> Result<(WebhookEndpoint, SecretString), AddEndpointError> {
        let key = settings
            .signing_key
            .as_ref()
            .ok_or(AddEndpointError::NotConfigured)?;
        let parsed = settings.url_policy.check(&url)?;
        settings.url_policy.resolve(&parsed).await?;
        let mut distinct = Vec::with_capacity(events.len());
        for event in events {
            if !distinct.contains(&event) {
                distinct.push(event);
            }
        }
        let salt = webhook::new_salt();
        let endpoint = WebhookEndpoint::new(organization, url, distinct, &salt);
        self.insert_webhook(&endpoint).await?;
        Ok((endpoint, key.endpoint_secret(&salt).shown()))
    }

    /// Inserts `endpoint` unless its organization has as many as it may. (Two adds racing past
    /// the count may leave one more: the bound is on what one refresh fans out to, not exact.)
    async fn insert_webhook(&self, endpoint: &WebhookEndpoint) -> Result<(), AddEndpointError> {
        let existing = self
            .webhooks
            .count_documents(tenant(endpoint.organization, doc! {}))
            .await
            .map_err(StoreError::from)?;
        if existing >= MAX_ENDPOINTS_PER_ORGANIZATION {
            return Err(AddEndpointError::TooMany);
        }
        self.webhooks
            .insert_one(endpoint)
            .await
            .map_err(StoreError::from)?;
        Ok(())
    }

    /// An organization's endpoints, oldest first.
    pub async fn webhooks(
        &self,
        organization: ObjectId,
    ) -> Result<Vec<WebhookEndpoint>, StoreError> {
        Ok(self
            .webhooks
            .find(tenant(organization, doc! {}))
            .sort(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?)
    }

    /// One endpoint of the organization.
    pub async fn webhook(
        &self,
        organization: ObjectId,
        id: ObjectId,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        Ok(self
            .webhooks
            .find_one(tenant(organization, doc! { "_id": id }))
            .await?)
    }

    /// Moves an endpoint to `to` from any of `from`; whether it moved. (Disabled is left only
    /// by removing the endpoint: a receiver that said 410 Gone meant it.)
    pub async fn set_webhook_state(
        &self,
        organization: ObjectId,
        id: ObjectId,
        from: &[EndpointState],
        to: EndpointState,
    ) -> Result<bool, StoreError> {
        let from: Vec<&str> = from.iter().map(|state| state.as_str()).collect();
        let moved = self
            .webhooks
            .update_one(
                tenant(organization, doc! { "_id": id, "state": { "$in": from } }),
                doc! { "$set": { "state": to.as_str(), "updatedAt": DateTime::now() } },
            )
            .await?;
        Ok(moved.modified_count == 1)
    }

    /// Removes an endpoint of the organization; what it was, if it existed.
    pub async fn remove_webhook(
        &self,
        organization: ObjectId,
        id: ObjectId,
    ) -> Result<Option<WebhookEndpoint>, StoreError> {
        Ok(self
            .webhooks
            .find_one_and_delete(tenant(organization, doc! { "_id": id }))
            .await?)
    }
}
