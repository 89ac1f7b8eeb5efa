use super::{Store, StoreError, tenant};
use crate::{
    Category,
    device::Gateway,
    job::{CategoryState, JobState, Lane},
};
use bson::{Bson, DateTime, Document, doc, oid::ObjectId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRecord {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    pub organization: ObjectId,
    pub device: ObjectId,
    pub created_at: DateTime,
    pub updated_at: DateTime,
    pub lane: Lane,
    pub categories: BTreeMap<Category, CategoryRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CategoryRecord {
    pub state: CategoryState,
    pub attempts: u32,
    pub gateway: Option<Gateway>,
    pub last_error: Option<String>,
    pub pushed_at: Option<DateTime>,
}

impl JobRecord {
    pub fn new(
        organization: ObjectId,
        device: ObjectId,
        categories: &[Category],
        lane: Lane,
    ) -> JobRecord {
        let now = DateTime::now();
        JobRecord {
            id: ObjectId::new(),
            organization,
            device,
            created_at: now,
            updated_at: now,
            lane,
            categories: categories
                .iter()
                .map(|&category| {
                    let record = CategoryRecord {
                        state: CategoryState::Queued,
                        attempts: 0,
                        gateway: None,
                        last_error: None,
                        pushed_at: None,
                    };
                    (category, record)
                })
                .collect(),
        }
    }

    pub fn state(&self) -> JobState {
        JobState::derive(self.categories.values().map(|c| c.state))
    }
}

/// One guarded move of a category's state, with what the attempt learnt.
#[derive(Debug, Clone)]
pub struct CategoryUpdate {
    pub to: CategoryState,
    /// Push attempts this write accounts for (added to `attempts`).
    pub attempts: u32,
    pub gateway: Option<Gateway>,
    pub last_error: Option<String>,
}

impl CategoryUpdate {
    pub fn to(to: CategoryState) -> CategoryUpdate {
        CategoryUpdate {
            to,
            attempts: 0,
            gateway: None,
            last_error: None,
        }
    }
}

impl Store {
    pub async fn insert_job(&self, job: &JobRecord) -> Result<(), StoreError> {
        self.jobs.insert_one(job).await?;
        Ok(())
    }

    /// Removes a job that was never published.
    pub async fn delete_job(&self, id: ObjectId) -> Result<(), StoreError> {
        self.jobs.delete_one(doc! { "_id": id }).await?;
        Ok(())
    }

    /// Takes still-queued `categories` out of a job that was never published: another job
    /// holds them.
    pub async fn drop_categories(
        &self,
        id: ObjectId,
        categories: &[Category],
    ) -> Result<(), StoreError> {
        let fields: Document = categories
            .iter()
            .map(|c| (format!("categories.{c}"), Bson::String(String::new())))
            .collect();
        self.jobs
            .update_one(doc! { "_id": id }, doc! { "$unset": fields })
            .await?;
        Ok(())
    }

    pub async fn job(
        &self,
        organization: ObjectId,
        id: ObjectId,
    ) -> Result<Option<JobRecord>, StoreError> {
        Ok(self
            .jobs
            .find_one(tenant(organization, doc! { "_id": id }))
            .await?)
    }

    /// Job by id across organizations: for the worker (which got the id from its own queue) and
    /// for operators.
    pub async fn job_by_id(&self, id: ObjectId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.jobs.find_one(doc! { "_id": id }).await?)
    }

    /// Applies `update` to `categories` of a job in one write, only if every one of them is in a
    /// state `update.to` may be reached from. Returns whether it applied: a guarded write, never
    /// read-then-write, so concurrent or redelivered work cannot move a state backwards.
    pub async fn transition(
        &self,
        job: ObjectId,
        categories: &[Category],
        update: &CategoryUpdate,
    ) -> Result<bool, StoreError> {
        let sources: Vec<&str> = update
            .to
            .allowed_sources()
            .iter()
            .map(|s| s.as_str())
            .collect();
        let mut filter = doc! { "_id": job };
        let mut set = doc! { "updatedAt": DateTime::now() };
        let mut inc = Document::new();
        for category in categories {
            let field = |name: &str| format!("categories.{category}.{name}");
            filter.insert(field("state"), doc! { "$in": sources.clone() });
            set.insert(field("state"), update.to.as_str());
            if let Some(gateway) = update.gateway {
                set.insert(field("gateway"), gateway.as_str());
            }
            if let Some(error) = &update.last_error {
                set.insert(field("lastError"), error.as_str());
            }
            if update.to == CategoryState::Pushed {
                set.insert(field("pushedAt"), DateTime::now());
            }
            if update.attempts > 0 {
                inc.insert(field("attempts"), i64::from(update.attempts));
            }
        }
        let mut change = doc! { "$set": set };
        if !inc.is_empty() {
            change.insert("$inc", Bson::Document(inc));
        }
        let result = self.jobs.update_one(filter, change).await?;
        Ok(result.matched_count == 1)
    }
}

/// A job as the status call and `refreshctl job get` show it (contract §3).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: String,
    pub organization_id: String,
    pub device_id: String,
    pub created_at: String,
    pub updated_at: String,
    pub state: JobState,
    pub categories: BTreeMap<Category, CategoryView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CategoryView {
    pub state: CategoryState,
    pub attempts: u32,
    pub gateway: Option<Gateway>,
    pub last_error: Option<String>,
    pub pushed_at: Option<String>,
}

fn rfc3339(at: DateTime) -> String {
    at.try_to_rfc3339_string()
        .unwrap_or_else(|_| at.timestamp_millis().to_string())
}

impl From<&JobRecord> for JobView {
    fn from(job: &JobRecord) -> JobView {
        JobView {
            id: job.id.to_hex(),
            organization_id: job.organization.to_hex(),
            device_id: job.device.to_hex(),
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
            state: job.state(),
            categories: job
                .categories
                .iter()
                .map(|(&category, record)| {
                    let view = CategoryView {
                        state: record.state,
                        attempts: record.attempts,
                        gateway: record.gateway,
                        last_error: record.last_error.clone(),
                        pushed_at: record.pushed_at.map(rfc3339),
                    };
                    (category, view)
                })
                .collect(),
        }
    }
}
