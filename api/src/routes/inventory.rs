//! `GET …/devices/{winDeviceId}/inventory`: what the device last reported, per category.

use crate::{
    auth::Authenticated,
    error::ApiError,
    openapi::{InventoryParams, StatusErrors, schema},
    routes::{Success, callers_device, device_read, rfc3339, success},
    state::AppState,
    validate,
};
use axum::{
    Json,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
};
use refresh_shared::{
    Category,
    report::ReportSource,
    store::{InventoryRecord, NodeValue},
    token::PERMISSION_DEVICE_READ,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A device's inventory: each category it has reported, with the values of its last report.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InventoryView {
    pub device_id: String,
    /// A category never reported is absent.
    #[schema(value_type = BTreeMap<schema::Category, CategoryInventory>)]
    pub categories: BTreeMap<Category, CategoryInventory>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CategoryInventory {
    /// When the report was applied.
    pub reported_at: String,
    /// When the device read the values.
    pub collected_at: String,
    #[schema(value_type = schema::ReportSource)]
    pub source: ReportSource,
    /// The refresh job the report answered, if any.
    pub job_id: Option<String>,
    /// OMA-URI → value.
    pub nodes: BTreeMap<String, String>,
    /// OMA-URI → the status the device got reading it.
    pub errors: BTreeMap<String, String>,
}

impl From<InventoryRecord> for CategoryInventory {
    fn from(record: InventoryRecord) -> CategoryInventory {
        let map = |pairs: Vec<NodeValue>| pairs.into_iter().map(|p| (p.uri, p.value)).collect();
        CategoryInventory {
            reported_at: rfc3339(record.reported_at),
            collected_at: rfc3339(record.collected_at),
            source: record.source,
            job_id: record.job_id.map(|id| id.to_hex()),
            nodes: map(record.nodes),
            errors: map(record.errors),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct InventoryQuery {
    categories: Option<String>,
}

/// What a device last reported, per category.
#[utoipa::path(
    get,
    path = "/v1/organizations/{organizationId}/mdm/windows/enterprise/devices/{winDeviceId}/inventory",
    tag = "refresh",
    params(InventoryParams),
    responses((status = 200, description = "The device's inventory", body = Success<InventoryView>), StatusErrors),
    security(("bearer" = [])),
)]
pub async fn get_inventory(
    State(state): State<AppState>,
    caller: Authenticated,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<InventoryQuery>, QueryRejection>,
) -> Result<Json<Success<InventoryView>>, ApiError> {
    caller.require(PERMISSION_DEVICE_READ)?;
    let (organization, device_key, categories) = device_read(path, query, |query| {
        validate::category_list(query.categories.as_deref()).map_err(|p| vec![p])
    })?;
    let (organization, device) =
        callers_device(&state, &caller, &organization, &device_key).await?;
    let records = state
        .store
        .inventory(organization.id, device.id, &categories)
        .await?;
    Ok(success(InventoryView {
        device_id: device.id.to_hex(),
        categories: records
            .into_iter()
            .map(|record| (record.category, CategoryInventory::from(record)))
            .collect(),
    }))
}
