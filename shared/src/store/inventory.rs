//! `win_device_inventory`: the latest values each device reported, one document per (device,
//! category). A report older than the stored one (by `collectedAt`) never overwrites it
//! (`reports.rs` writes it).

use super::{Store, StoreError, tenant};
use crate::{
    Category,
    report::{CategoryReport, DeviceReport, ReportSource},
};
use bson::{DateTime, doc, oid::ObjectId};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InventoryRecord {
    pub organization: ObjectId,
    pub device: ObjectId,
    pub category: Category,
    pub collected_at: DateTime,
    pub reported_at: DateTime,
    pub source: ReportSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<ObjectId>,
    /// Pairs, not a document: an OMA-URI holds `.` and may hold `$`, which field names must not.
    pub nodes: Vec<NodeValue>,
    #[serde(default)]
    pub errors: Vec<NodeValue>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeValue {
    pub uri: String,
    pub value: String,
}

fn pairs(map: &std::collections::BTreeMap<String, String>) -> Vec<NodeValue> {
    map.iter()
        .map(|(uri, value)| NodeValue {
            uri: uri.clone(),
            value: value.clone(),
        })
        .collect()
}

impl InventoryRecord {
    /// What `report` stores for `category`.
    pub(super) fn of(
        report: &DeviceReport,
        category: Category,
        values: &CategoryReport,
        collected_at: DateTime,
        reported_at: DateTime,
    ) -> InventoryRecord {
        InventoryRecord {
            organization: report.organization_id,
            device: report.device_id,
            category,
            collected_at,
            reported_at,
            source: report.source,
            job_id: report.job_id,
            nodes: pairs(&values.nodes),
            errors: pairs(&values.errors),
        }
    }
}

impl Store {
    /// The stored inventory of a device of `organization`, for `categories` (all when empty).
    pub async fn inventory(
        &self,
        organization: ObjectId,
        device: ObjectId,
        categories: &[Category],
    ) -> Result<Vec<InventoryRecord>, StoreError> {
        let mut filter = doc! { "device": device };
        if !categories.is_empty() {
            let names: Vec<&str> = categories.iter().map(|c| c.as_str()).collect();
            filter.insert("category", doc! { "$in": names });
        }
        let found = self.inventory.find(tenant(organization, filter)).await?;
        Ok(found.try_collect().await?)
    }
}
