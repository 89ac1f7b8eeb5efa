//! `POST …/refresh-batches` and `GET …/refresh-batches/{batchId}`: bulk refresh. The api only
//! records the batch and queues its expansion; a worker turns it into jobs on the bulk lane.

use crate::{
    audit::{self, Accepted},
    auth::Authenticated,
    error::ApiError,
    idempotency::{self, KeyCheck},
    openapi::{
        BatchParams, BulkBody, CancelErrors, CreateBatchErrors, CreateBatchParams, StatusErrors,
    },
    routes::{Success, callers_id, organization_of, refresh::body_rejection, success},
    state::AppState,
    trace::request_trace,
    validate::{self, BulkRequest, BulkTarget, OrganizationRef},
};
use axum::{
    Json,
    body::Bytes,
    extract::{
        ConnectInfo, Path, State,
        rejection::{BytesRejection, PathRejection},
    },
    http::{HeaderMap, StatusCode, Uri},
};
use bson::oid::ObjectId;
use refresh_events::view::BatchView;
use refresh_shared::{
    batch::ExpandBatch,
    metric,
    store::{AuditAction, AuditResult, BatchRecord, KeyAnswer, StoreError},
    token::PERMISSION_DEVICE_INFO,
    trace::TraceParent,
};
use serde::Serialize;
use std::net::SocketAddr;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchAccepted {
    /// The batch to follow at `…/refresh-batches/{batchId}`.
    #[schema(pattern = "^[a-f0-9]{24}$")]
    batch_id: String,
}

/// Refresh up to 100,000 devices, named or matched by a filter. Answers once the batch is
/// recorded and its expansion queued; a worker turns it into jobs on the bulk lane.
#[utoipa::path(
    post,
    path = "/v1/organizations/{organizationId}/mdm/windows/enterprise/refresh-batches",
    tag = "refresh",
    params(CreateBatchParams),
    request_body(content = BulkBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Recorded and queued", body = Success<BatchAccepted>),
        CreateBatchErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn create_batch(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    caller: Authenticated,
    path: Result<Path<String>, PathRejection>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Success<BatchAccepted>>), ApiError> {
    caller.require(PERMISSION_DEVICE_INFO)?;
    let body = body.map_err(body_rejection)?;
    let trace = request_trace(&headers);
    let (organization, request, key) = validate_request(path, &headers, &body)?;
    let organization = caller.organization(&state, &organization).await?;
    let (device_ids, filter, total) = match request.target {
        BulkTarget::DeviceIds(ids) => {
            let total = ids.len() as u64;
            (ids, None, total)
        }
        BulkTarget::Filter(filter) => {
            let total = state
                .store
                .count_devices_matching(organization.id, &filter)
                .await?;
            (Vec::new(), Some(filter), total)
        }
    };
    let accepted = |result, answer| Accepted {
        action: AuditAction::BulkRefresh,
        caller: &caller,
        client,
        device: None,
        devices: Some(total),
        categories: &request.categories,
        result,
        answer,
    };
    let held = match idempotency::check(&state, organization.id, key, &uri, &body).await? {
        KeyCheck::Replay(KeyAnswer { id, .. }) => {
            // A batch's key is always answered with the batch.
            let batch_id = id.ok_or(StoreError::Unreadable("idempotency_keys.answer"))?;
            audit::record(&state, accepted(AuditResult::Replayed, Some(batch_id))).await;
            return Ok(batch_answer(batch_id));
        }
        KeyCheck::Proceed(held) => held,
    };
    let batch = BatchRecord::new(
        organization.id,
        caller.token_id,
        request.categories.clone(),
        filter,
        request.max_age,
        total,
    );
    let queued = queue(&state, &batch, &device_ids, trace).await;
    let answer = KeyAnswer::id(batch.id);
    idempotency::finish(&state, held, queued.as_ref().map(|()| &answer)).await;
    queued?;
    audit::record(&state, accepted(AuditResult::Accepted, Some(batch.id))).await;
    metrics::counter!(metric::BATCHES_ACCEPTED).increment(1);
    tracing::info!(batch_id = %batch.id, token_id = %caller.token_id, devices = total, trace_id = %trace.trace_id(), "batch accepted");
    Ok(batch_answer(batch.id))
}

/// The organization, the batch asked for and its `Idempotency-Key`, or every problem with the
/// path, the content type, the body and the key at once.
fn validate_request(
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(OrganizationRef, BulkRequest, Option<String>), ApiError> {
    let mut problems = Vec::new();
    let organization = organization_of(path).map_err(|p| problems.push(p)).ok();
    let request = validate::json_body(headers, body, validate::bulk_body, &mut problems);
    let key = validate::idempotency_key(headers)
        .map_err(|p| problems.push(p))
        .ok()
        .flatten();
    match (organization, request) {
        (Some(organization), Some(request)) if problems.is_empty() => {
            Ok((organization, request, key))
        }
        _ => Err(ApiError::Validation(problems)),
    }
}

/// Records the batch and has the broker confirm its expansion request; a batch whose request
/// the broker did not take is marked failed, never left waiting.
async fn queue(
    state: &AppState,
    batch: &BatchRecord,
    device_ids: &[String],
    trace: TraceParent,
) -> Result<(), ApiError> {
    state.store.insert_batch(batch, device_ids).await?;
    if let Err(error) = state
        .publisher
        .publish_expansion(&ExpandBatch::new(batch.id, Some(trace)))
        .await
    {
        let reason = "not queued: the broker was unavailable";
        if let Err(store_error) = state.store.fail_batch(batch.id, reason).await {
            tracing::error!(batch_id = %batch.id, %store_error, "could not mark an unqueued batch failed");
        }
        return Err(error.into());
    }
    Ok(())
}

fn batch_answer(batch_id: ObjectId) -> (StatusCode, Json<Success<BatchAccepted>>) {
    let accepted = BatchAccepted {
        batch_id: batch_id.to_hex(),
    };
    (StatusCode::ACCEPTED, success(accepted))
}

/// A batch's progress: where each of its devices is.
#[utoipa::path(
    get,
    path = "/v1/organizations/{organizationId}/mdm/windows/enterprise/refresh-batches/{batchId}",
    tag = "refresh",
    params(BatchParams),
    responses((status = 200, description = "The batch", body = Success<BatchView>), StatusErrors),
    security(("bearer" = [])),
)]
pub async fn get_batch(
    State(state): State<AppState>,
    caller: Authenticated,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Success<BatchView>>, ApiError> {
    caller.require(PERMISSION_DEVICE_INFO)?;
    let (organization, batch) = callers_id(&state, &caller, path, "batchId").await?;
    let batch = state
        .store
        .batch(organization.id, batch)
        .await?
        .ok_or(ApiError::NotFound)?;
    let batch = state.store.repaired_batch(batch).await?;
    Ok(success(BatchView::from(&batch)))
}

/// Cancels a batch: its expansion stops (a chunk being expanded at that moment is the most
/// that can still be pushed), and every job it made is canceled as `DELETE
/// …/refresh-jobs/{jobId}` cancels one.
#[utoipa::path(
    delete,
    path = "/v1/organizations/{organizationId}/mdm/windows/enterprise/refresh-batches/{batchId}",
    tag = "refresh",
    params(BatchParams),
    responses((status = 200, description = "The batch, canceled", body = Success<BatchView>), CancelErrors),
    security(("bearer" = [])),
)]
pub async fn cancel_batch(
    State(state): State<AppState>,
    caller: Authenticated,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Success<BatchView>>, ApiError> {
    caller.require(PERMISSION_DEVICE_INFO)?;
    let (organization, batch) = callers_id(&state, &caller, path, "batchId").await?;
    let canceled = (state.store)
        .cancel_batch(organization.id, batch)
        .await?
        .ok_or(ApiError::NotFound)?;
    // Also when it had ended: a cancel answered 503 because this failed is announced by the
    // cancel tried again.
    state.announcer.batch(canceled.batch.id).await?;
    if !canceled.now {
        return Err(ApiError::JobFinished);
    }
    tracing::info!(batch_id = %canceled.batch.id, token_id = %caller.token_id, jobs = canceled.jobs, "batch canceled");
    Ok(success(BatchView::from(&canceled.batch)))
}
