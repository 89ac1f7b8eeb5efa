//! `win_device_inventory`: the latest values each device reported, one document per (device,
//! category). A report older than the stored one (by `collectedAt`) never overwrites it.

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

impl Store {
    /// Stores each category of `report` unless a report collected at the same time or later is
    /// stored: returns the categories written. Safe to repeat (a redelivery writes nothing).
    pub async fn record_inventory(
        &self,
        report: &DeviceReport,
    ) -> Result<Vec<Category>, StoreError> {
        let collected_at = DateTime::from_millis(
            i64::try_from(report.collected_at.unix_timestamp_nanos() / 1_000_000)
                .unwrap_or(i64::MAX),
        );
        let mut written = Vec::new();
        for (&category, values) in &report.categories {
            if self
                .write_inventory(report, category, values, collected_at)
                .await?
            {
                written.push(category);
            }
        }
        Ok(written)
    }

    async fn write_inventory(
        &self,
        report: &DeviceReport,
        category: Category,
        values: &CategoryReport,
        collected_at: DateTime,
    ) -> Result<bool, StoreError> {
        let record = InventoryRecord {
            organization: report.organization_id,
            device: report.device_id,
            category,
            collected_at,
            reported_at: DateTime::now(),
            source: report.source,
            job_id: report.job_id,
            nodes: pairs(&values.nodes),
            errors: pairs(&values.errors),
        };
        // Matches only an older stored report; when a newer (or the same) one is stored, the
        // upsert's insert hits the unique (device, category) index instead.
        let filter = tenant(
            report.organization_id,
            doc! {
                "device": report.device_id,
                "category": category.as_str(),
                "collectedAt": { "$lt": collected_at },
            },
        );
        let written = self
            .inventory
            .replace_one(filter, &record)
            .upsert(true)
            .await;
        match written {
            Ok(_) => Ok(true),
            Err(error) if StoreError::is_duplicate_key(&error) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

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
