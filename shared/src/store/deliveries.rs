//! The deliveries log: for each event handed to an endpoint, where its delivery is and every
//! attempt made, newest first for the endpoint's owner to read. Kept for
//! [`DELIVERY_LOG_RETENTION`].

use super::{Store, StoreError, newest_first};
use crate::webhook::{DeliveryState, WebhookEvent};
use bson::{DateTime, doc, oid::ObjectId};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a delivery's log stays readable: well past the last retry tier of the default
/// schedule (about 17.5 hours after the event).
pub const DELIVERY_LOG_RETENTION: Duration = Duration::from_secs(7 * 86_400);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryRecord {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub organization: ObjectId,
    pub endpoint: ObjectId,
    /// `webhook-id`.
    pub message_id: String,
    pub event: WebhookEvent,
    pub state: DeliveryState,
    #[serde(default)]
    pub attempts: Vec<DeliveryAttempt>,
    pub created_at: DateTime,
    pub updated_at: DateTime,
}

/// One attempt: the receiver's status, or why there was none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryAttempt {
    pub at: DateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong, when no 2xx came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
}

impl Store {
    /// Opens the log of `event`'s message `message_id` for `endpoint`: the id its attempts are
    /// recorded under. An announcement made again (one whose first left before it was marked)
    /// finds the log the first one opened.
    pub async fn open_delivery(
        &self,
        organization: ObjectId,
        endpoint: ObjectId,
        event: WebhookEvent,
        message_id: &str,
    ) -> Result<ObjectId, StoreError> {
        let now = DateTime::now();
        let record = DeliveryRecord {
            id: ObjectId::new(),
            organization,
            endpoint,
            message_id: message_id.to_owned(),
            event,
            state: DeliveryState::Pending,
            attempts: Vec::new(),
            created_at: now,
            updated_at: now,
        };
        match self.deliveries.insert_one(&record).await {
            Ok(_) => Ok(record.id),
            Err(error) if StoreError::is_duplicate_key(&error) => {
                let existing = self
                    .deliveries
                    .find_one(doc! { "endpoint": endpoint, "messageId": message_id })
                    .await?;
                existing
                    .map(|record| record.id)
                    .ok_or_else(|| StoreError::from(error))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Adds an attempt to a delivery's log and sets where the delivery is. A delivery already
    /// `delivered` stays so (a repeated attempt of a message whose 2xx was recorded).
    pub async fn record_delivery_attempt(
        &self,
        delivery: ObjectId,
        attempt: Option<&DeliveryAttempt>,
        state: DeliveryState,
    ) -> Result<(), StoreError> {
        let mut update = doc! {
            "$set": { "state": state.as_str(), "updatedAt": DateTime::now() },
        };
        if let Some(attempt) = attempt {
            update.insert(
                "$push",
                doc! { "attempts": bson::to_bson(attempt).map_err(|_| StoreError::Unreadable("attempt"))? },
            );
        }
        self.deliveries
            .update_one(
                doc! { "_id": delivery, "state": { "$ne": DeliveryState::Delivered.as_str() } },
                update,
            )
            .await?;
        Ok(())
    }

    /// A page of an endpoint's deliveries, newest first, from just past `after` when given.
    pub async fn deliveries(
        &self,
        organization: ObjectId,
        endpoint: ObjectId,
        after: Option<ObjectId>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let filter = doc! { "endpoint": endpoint };
        newest_first(&self.deliveries, organization, filter, after, limit).await
    }
}
