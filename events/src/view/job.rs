//! A job as `GET …/refresh-jobs/{jobId}` shows it and `refresh.job.finished` carries it.

use super::rfc3339;
use refresh_shared::{
    Category,
    device::Gateway,
    job::{CategoryState, JobState},
    report::ReportSource,
    store::{CategoryRecord, JobRecord},
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A job as `GET …/refresh-jobs/{jobId}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct JobView {
    pub id: String,
    pub organization_id: String,
    pub device_id: String,
    pub created_at: String,
    pub updated_at: String,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::JobState))]
    pub state: JobState,
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<crate::schema::Category, CategoryView>))]
    pub categories: BTreeMap<Category, CategoryView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct CategoryView {
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::CategoryState))]
    pub state: CategoryState,
    pub attempts: u32,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::Gateway>))]
    pub gateway: Option<Gateway>,
    pub last_error: Option<String>,
    pub pushed_at: Option<String>,
    /// When the device's report of the category was applied.
    pub reported_at: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::schema::ReportSource>))]
    pub report_source: Option<ReportSource>,
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
                .map(|(&category, record)| (category, CategoryView::from(record)))
                .collect(),
        }
    }
}

impl From<&CategoryRecord> for CategoryView {
    fn from(record: &CategoryRecord) -> CategoryView {
        CategoryView {
            state: record.state,
            attempts: record.attempts,
            gateway: record.gateway,
            last_error: record.last_error.clone(),
            pushed_at: record.pushed_at.map(rfc3339),
            reported_at: record.reported_at.map(rfc3339),
            report_source: record.report_source,
        }
    }
}
