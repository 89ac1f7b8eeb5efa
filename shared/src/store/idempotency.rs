//! `idempotency_keys`: an `Idempotency-Key` header, the request it first came with, and the answer
//! that request got, so a retried request gets the same answer instead of a second job.

use super::{Store, StoreError};
use crate::Category;
use bson::{DateTime, doc, oid::ObjectId};
use mongodb::error::{ErrorKind, WriteFailure};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a key is remembered (also the TTL index that removes it afterwards).
pub const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// How long past the request deadline a key without an answer is still taken to be held by its
/// request. A request's work may outlive its deadline (the caller got 5040), but not by this
/// much; past it, the api that held the key is taken to be gone (it crashed mid-request).
pub const IDEMPOTENCY_ABANDONED_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotencyRecord {
    /// `<organization>:<key>`: keys are per organization.
    #[serde(rename = "_id")]
    pub id: String,
    pub organization: ObjectId,
    /// SHA-256 of the path and body the key first came with (both routes take only POST).
    pub request_hash: String,
    pub created_at: DateTime,
    /// The id (job or batch) the first request was answered with, once it succeeded; empty
    /// when it was answered without one (every category was fresh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// The categories that answer listed as fresh, not refreshed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Category>,
}

/// What the first request with a key was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAnswer {
    /// The job or batch; none when every category asked for was fresh.
    pub id: Option<ObjectId>,
    pub skipped: Vec<Category>,
}

impl KeyAnswer {
    /// An answer naming a job or batch and nothing skipped.
    pub fn id(id: ObjectId) -> KeyAnswer {
        KeyAnswer {
            id: Some(id),
            skipped: Vec::new(),
        }
    }
}

/// What a request carrying a key may do.
#[derive(Debug, PartialEq, Eq)]
pub enum Reservation {
    /// The key is new (or its previous use is older than the window): go ahead, then
    /// [`Store::complete_idempotency_key`] or [`Store::release_idempotency_key`].
    Granted,
    /// The same request succeeded before: answer as it was answered.
    Replay(KeyAnswer),
    /// The key came before with another request.
    Mismatch,
    /// The same request is being handled right now.
    InProgress,
}

impl Store {
    /// `request_timeout`: the api's `REQUEST_TIMEOUT_MS`; an unanswered key older than it
    /// plus [`IDEMPOTENCY_ABANDONED_AFTER`] is free again.
    pub async fn reserve_idempotency_key(
        &self,
        organization: ObjectId,
        key: &str,
        request_hash: &str,
        request_timeout: Duration,
    ) -> Result<Reservation, StoreError> {
        let record = IdempotencyRecord {
            id: format!("{}:{key}", organization.to_hex()),
            organization,
            request_hash: request_hash.to_owned(),
            created_at: DateTime::now(),
            answer: None,
            skipped: Vec::new(),
        };
        match self.idempotency_keys.insert_one(&record).await {
            Ok(_) => return Ok(Reservation::Granted),
            Err(error) if !is_duplicate(&error) => return Err(error.into()),
            Err(_) => {}
        }
        let Some(existing) = self
            .idempotency_keys
            .find_one(doc! { "_id": &record.id })
            .await?
        else {
            // Released between our insert and this read: the caller may simply try again.
            return Ok(Reservation::InProgress);
        };
        let age = u64::try_from(
            DateTime::now().timestamp_millis() - existing.created_at.timestamp_millis(),
        )
        .map_or(Duration::ZERO, Duration::from_millis);
        let abandoned = existing.answer.is_none()
            && age > request_timeout.saturating_add(IDEMPOTENCY_ABANDONED_AFTER);
        // The TTL index removes expired keys within a minute or so; until then they are
        // treated as gone already.
        if age > IDEMPOTENCY_WINDOW || abandoned {
            // Take the key over, unless another request just did.
            let taken = self
                .idempotency_keys
                .replace_one(
                    doc! { "_id": &record.id, "createdAt": existing.created_at },
                    &record,
                )
                .await?;
            return Ok(if taken.matched_count == 1 {
                Reservation::Granted
            } else {
                Reservation::InProgress
            });
        }
        Ok(match existing.answer {
            _ if existing.request_hash != request_hash => Reservation::Mismatch,
            Some(answer) if answer.is_empty() => Reservation::Replay(KeyAnswer {
                id: None,
                skipped: existing.skipped,
            }),
            Some(answer) => ObjectId::parse_str(&answer)
                .map(|id| {
                    Reservation::Replay(KeyAnswer {
                        id: Some(id),
                        skipped: existing.skipped,
                    })
                })
                .map_err(|_| StoreError::Unreadable("idempotency_keys.answer"))?,
            None => Reservation::InProgress,
        })
    }

    /// Remembers the answer the key's request got.
    pub async fn complete_idempotency_key(
        &self,
        organization: ObjectId,
        key: &str,
        answer: &KeyAnswer,
    ) -> Result<(), StoreError> {
        let id = answer.id.map(|id| id.to_hex()).unwrap_or_default();
        let skipped: Vec<&str> = answer.skipped.iter().map(|c| c.as_str()).collect();
        self.idempotency_keys
            .update_one(
                doc! { "_id": format!("{}:{key}", organization.to_hex()) },
                doc! { "$set": { "answer": id, "skipped": skipped } },
            )
            .await?;
        Ok(())
    }

    /// Forgets a key whose request failed, so a retry with it is handled afresh.
    pub async fn release_idempotency_key(
        &self,
        organization: ObjectId,
        key: &str,
    ) -> Result<(), StoreError> {
        self.idempotency_keys
            .delete_one(doc! {
                "_id": format!("{}:{key}", organization.to_hex()),
                "answer": { "$exists": false },
            })
            .await?;
        Ok(())
    }
}

fn is_duplicate(error: &mongodb::error::Error) -> bool {
    matches!(&*error.kind, ErrorKind::Write(WriteFailure::WriteError(write)) if write.code == 11000)
}
