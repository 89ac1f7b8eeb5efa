mod batches;
mod health;
mod inventory;
mod jobs;
mod omadm;
mod ops;
mod refresh;
mod reports;
mod webhooks;

pub use refresh_events::view::BatchView;
use refresh_events::view::rfc3339;

use crate::settings::{ApiSettings, DeviceListenerSettings};
use crate::{
    auth::Authenticated,
    error::{ApiError, FieldProblem},
    limits::{self, Limits, Slots},
    openapi::{self, ApiDoc, Document},
    rate_limit,
    state::AppState,
    validate::{self, OrganizationRef},
};
use axum::{
    Extension, Json, Router,
    extract::{
        DefaultBodyLimit, Path, Query,
        rejection::{PathRejection, QueryRejection},
    },
};
use bson::oid::ObjectId;
use refresh_shared::store::{Device, Organization};
use serde::{Deserialize, Serialize};
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

/// Every route, each with its entry in the OpenAPI document.
pub fn documented(settings: &ApiSettings) -> OpenApiRouter<AppState> {
    let (schemas, paths, create_batch) = routes!(batches::create_batch);
    // A 100,000-id list is megabytes: this route has its own, larger limit, and its own small
    // number of requests at once, taken before the body is read.
    let create_batch = create_batch
        .layer(DefaultBodyLimit::max(settings.bulk_body_limit_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Slots::new(settings.bulk_max_in_flight),
            limits::within,
        ));
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(refresh::refresh_device_info))
        .routes(routes!(jobs::get_job, jobs::cancel_job))
        .routes(routes!(jobs::device_history))
        .routes(routes!(inventory::get_inventory))
        .routes((schemas, paths, create_batch))
        .routes(routes!(batches::get_batch, batches::cancel_batch))
        .routes(routes!(webhooks::list_webhooks, webhooks::add_webhook))
        .routes(routes!(webhooks::remove_webhook))
        .routes(routes!(webhooks::webhook_deliveries))
        .routes(routes!(ops::queues))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi::document))
}

pub fn router(state: AppState, settings: &ApiSettings) -> Router {
    let (router, document) = documented(settings).split_for_parts();
    guarded(
        router.layer(Extension(Document::new(&document))),
        settings.body_limit_bytes,
        settings,
    )
    .with_state(state)
}

/// The device listener's routes: only what devices send.
pub fn device_router(
    state: AppState,
    settings: &ApiSettings,
    device: &DeviceListenerSettings,
) -> Router {
    let read_up_to = device
        .mdm_max_msg_bytes
        .saturating_mul(omadm::READ_PAST_LIMIT);
    let session = axum::routing::post(omadm::management_session)
        .layer::<_, std::convert::Infallible>(DefaultBodyLimit::max(read_up_to))
        .layer::<_, std::convert::Infallible>(axum::Extension(omadm::MessageLimit(
            device.mdm_max_msg_bytes,
        )));
    let routes = Router::new()
        .route(
            "/v1/agent/windows/devices/{device_id}/reports",
            axum::routing::post(reports::submit_report),
        )
        .route("/ManagementServer/MDM.svc", session);
    guarded(routes, device.report_body_limit_bytes, settings).with_state(state)
}

/// `routes` behind what every listener enforces: the envelope for unknown routes and methods,
/// the body limit, panics answered 500, the rate-limit headers, and the request limits.
fn guarded(
    routes: Router<AppState>,
    body_limit_bytes: usize,
    settings: &ApiSettings,
) -> Router<AppState> {
    routes
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::Internal(
                "handler panicked".into(),
            ))
        }))
        .layer(axum::middleware::from_fn(rate_limit::headers))
        .layer(axum::middleware::from_fn_with_state(
            Limits::new(settings),
            limits::enforce,
        ))
        .layer(TraceLayer::new_for_http())
}

/// `{"status": true, "data": …}`: every success answer that carries data.
#[derive(Debug, Serialize, ToSchema)]
pub struct Success<T> {
    /// Always `true`.
    status: bool,
    data: T,
}

pub fn success<T>(data: T) -> Json<Success<T>> {
    Json(Success { status: true, data })
}

/// `{"status": true}`: the process is up, or ready.
#[derive(Debug, Serialize, ToSchema)]
pub struct Up {
    /// Always `true`.
    status: bool,
}

pub const UP: Up = Up { status: true };

/// The `{organizationId}` of an organization's route.
fn organization_of(
    path: Result<Path<String>, PathRejection>,
) -> Result<OrganizationRef, FieldProblem> {
    match path {
        Ok(Path(organization)) => validate::organization_ref(&organization),
        Err(rejection) => Err(FieldProblem::new("path", rejection.body_text())),
    }
}

/// The `{organizationId}` and 24-hex `{<id_field>}` of a status route, or every problem with them.
fn organization_and_id(
    path: Result<Path<(String, String)>, PathRejection>,
    id_field: &str,
) -> Result<(OrganizationRef, ObjectId), ApiError> {
    let Path((organization, id)) = path.map_err(|rejection| {
        ApiError::Validation(vec![FieldProblem::new("path", rejection.body_text())])
    })?;
    match (
        validate::organization_ref(&organization),
        validate::object_id(id_field, &id),
    ) {
        (Ok(organization), Ok(id)) => Ok((organization, id)),
        (organization, id) => {
            let problems = [organization.err(), id.err()]
                .into_iter()
                .flatten()
                .collect();
            Err(ApiError::Validation(problems))
        }
    }
}

/// The `{organizationId}` and `{winDeviceId}` of a device route, each `None` when invalid, with
/// what is wrong added to `problems`.
fn organization_and_device(
    path: Result<Path<(String, String)>, PathRejection>,
    problems: &mut Vec<FieldProblem>,
) -> (Option<OrganizationRef>, Option<String>) {
    match path {
        Ok(Path((organization, device))) => (
            validate::organization_ref(&organization)
                .map_err(|p| problems.push(p))
                .ok(),
            validate::device_key(&device)
                .map(str::to_owned)
                .map_err(|p| problems.push(p))
                .ok(),
        ),
        Err(rejection) => {
            problems.push(FieldProblem::new("path", rejection.body_text()));
            (None, None)
        }
    }
}

/// The first `limit` of `found` (read with one more than asked) and, when more follow, the
/// cursor of the next page: the last one's id.
pub(crate) fn page<T>(
    mut found: Vec<T>,
    limit: u32,
    id: impl Fn(&T) -> ObjectId,
) -> (Vec<T>, Option<String>) {
    let more = found.len() > limit as usize;
    found.truncate(limit as usize);
    let next_cursor = more
        .then(|| found.last().map(|last| id(last).to_hex()))
        .flatten();
    (found, next_cursor)
}

/// What `read_query` makes of a route's query, or `None` with what is wrong added to
/// `problems`.
fn query_read<Q, T>(
    query: Result<Query<Q>, QueryRejection>,
    read_query: impl FnOnce(Q) -> Result<T, Vec<FieldProblem>>,
    problems: &mut Vec<FieldProblem>,
) -> Option<T> {
    match query {
        Ok(Query(query)) => read_query(query)
            .map_err(|found| problems.extend(found))
            .ok(),
        Err(rejection) => {
            problems.push(FieldProblem::new("query", rejection.body_text()));
            None
        }
    }
}

/// A device read route's path and query: the organization and device they name and what
/// `read_query` makes of the query, or every problem with them at once.
fn device_read<Q, T>(
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Q>, QueryRejection>,
    read_query: impl FnOnce(Q) -> Result<T, Vec<FieldProblem>>,
) -> Result<(OrganizationRef, String, T), ApiError> {
    let mut problems = Vec::new();
    let (organization, device_key) = organization_and_device(path, &mut problems);
    let read = query_read(query, read_query, &mut problems);
    match (organization, device_key, read) {
        (Some(organization), Some(device_key), Some(read)) => Ok((organization, device_key, read)),
        _ => Err(ApiError::Validation(problems)),
    }
}

/// `?limit=&after=` of a paged list: newest first, `after` the `nextCursor` of the page before.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    limit: Option<String>,
    after: Option<String>,
}

impl PageQuery {
    /// How many entries, and after which.
    pub(crate) fn read(self) -> Result<(u32, Option<ObjectId>), Vec<FieldProblem>> {
        validate::page(self.limit.as_deref(), self.after.as_deref())
    }
}

/// The `{organizationId}` and `{<id_field>}` of an id route and what `read_query` reads of
/// its query, or every problem with them at once.
pub(crate) fn id_read<Q, T>(
    path: Result<Path<(String, String)>, PathRejection>,
    id_field: &str,
    query: Result<Query<Q>, QueryRejection>,
    read_query: impl FnOnce(Q) -> Result<T, Vec<FieldProblem>>,
) -> Result<(OrganizationRef, ObjectId, T), ApiError> {
    let mut problems = Vec::new();
    let ids = match organization_and_id(path, id_field) {
        Ok(ids) => Some(ids),
        Err(ApiError::Validation(found)) => {
            problems.extend(found);
            None
        }
        Err(other) => return Err(other),
    };
    let read = query_read(query, read_query, &mut problems);
    match (ids, read) {
        (Some((organization, id)), Some(read)) => Ok((organization, id, read)),
        _ => Err(ApiError::Validation(problems)),
    }
}

/// The caller's organization, which a status route's `{organizationId}` must name, and the
/// 24-hex `{<id_field>}` of the path.
async fn callers_id(
    state: &AppState,
    caller: &Authenticated,
    path: Result<Path<(String, String)>, PathRejection>,
    id_field: &str,
) -> Result<(Organization, ObjectId), ApiError> {
    let (organization, id) = organization_and_id(path, id_field)?;
    Ok((caller.organization(state, &organization).await?, id))
}

/// The caller's organization (which `organization` must name) and its device `device_key`.
async fn callers_device(
    state: &AppState,
    caller: &Authenticated,
    organization: &OrganizationRef,
    device_key: &str,
) -> Result<(Organization, Device), ApiError> {
    let organization = caller.organization(state, organization).await?;
    let device = state
        .store
        .device_by_key(organization.id, device_key)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok((organization, device))
}
