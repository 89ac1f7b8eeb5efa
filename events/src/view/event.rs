//! A webhook's body: `{"type","timestamp","data"}` (Standard Webhooks), `data` being the job or
//! batch as its GET shows it, or a category's entry of the job.

use super::CategoryView;
use refresh_shared::{Category, webhook::WebhookEvent};
use serde::{Deserialize, Serialize};

/// What every webhook carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventBody<T> {
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::WebhookEvent))]
    pub event: WebhookEvent,
    /// When what it tells of happened (RFC 3339).
    pub timestamp: String,
    pub data: T,
}

/// `refresh.category.reported`'s `data`: which job's category, and its entry as the job's GET
/// shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CategoryReported {
    pub job_id: String,
    pub organization_id: String,
    pub device_id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::Category))]
    pub category: Category,
    #[serde(flatten)]
    pub entry: CategoryView,
}
