//! `…/webhooks`: the endpoints an organization's refresh events are delivered to. Adding one
//! shows its signing secret, once; nothing shows it again.

use crate::{
    auth::Authenticated,
    error::{ApiError, FieldProblem},
    openapi::{
        CreateWebhookErrors, DeliveriesParams, OrganizationParams, StatusErrors, WebhookBody,
        WebhookParams, schema,
    },
    routes::{
        PageQuery, Success, callers_id, id_read, organization_of, page, refresh::body_rejection,
        rfc3339, success,
    },
    state::AppState,
    validate::{self, OrganizationRef, WebhookRequest},
};
use axum::{
    Json,
    body::Bytes,
    extract::{
        Path, Query, State,
        rejection::{BytesRejection, PathRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode},
};
use refresh_shared::{
    store::{AddEndpointError, DeliveryRecord, WebhookEndpoint},
    token::PERMISSION_WEBHOOKS_MANAGE,
    webhook::{DeliveryState, EndpointState, WebhookEvent},
};
use secrecy::ExposeSecret;
use serde::Serialize;
use utoipa::ToSchema;

/// A webhook endpoint as the API shows it: never its secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    #[schema(value_type = Vec<schema::WebhookEvent>)]
    pub events: Vec<WebhookEvent>,
    #[schema(value_type = schema::WebhookState)]
    pub state: EndpointState,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&WebhookEndpoint> for WebhookView {
    fn from(endpoint: &WebhookEndpoint) -> WebhookView {
        WebhookView {
            id: endpoint.id.to_hex(),
            url: endpoint.url.clone(),
            events: endpoint.events.clone(),
            state: endpoint.state,
            created_at: rfc3339(endpoint.created_at),
            updated_at: rfc3339(endpoint.updated_at),
        }
    }
}

/// A webhook endpoint just added, with the secret its deliveries are signed with.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAdded {
    #[serde(flatten)]
    pub endpoint: WebhookView,
    /// `whsec_` and the base64 key, as Standard Webhooks libraries take it. Shown only here.
    pub secret: String,
}

/// Adds an endpoint for some of the organization's refresh events. Its URL must be `https`
/// and resolve to public addresses only.
#[utoipa::path(
    post,
    path = "/v1/organizations/{organizationId}/mdm/windows/enterprise/webhooks",
    tag = "webhooks",
    params(OrganizationParams),
    request_body(content = WebhookBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Added; the secret is shown this once", body = Success<WebhookAdded>),
        CreateWebhookErrors,
    ),
    security(("bearer" = [])),
)]
pub async fn add_webhook(
    State(state): State<AppState>,
    caller: Authenticated,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Success<WebhookAdded>>), ApiError> {
    caller.require(PERMISSION_WEBHOOKS_MANAGE)?;
    let body = body.map_err(body_rejection)?;
    let (organization, request) = validate_request(path, &headers, &body)?;
    // After the organization check: only its own callers make the api resolve a name.
    let organization = caller.organization(&state, &organization).await?;
    let added = (state.store)
        .add_webhook(
            &state.webhooks,
            organization.id,
            request.url,
            request.events,
        )
        .await;
    let (endpoint, secret) = match added {
        Ok(added) => added,
        Err(error @ AddEndpointError::NotConfigured) => {
            return Err(ApiError::Unavailable(error.into()));
        }
        Err(AddEndpointError::Url(refusal)) => {
            return Err(url_problem(refusal.to_string()));
        }
        Err(too_many @ AddEndpointError::TooMany) => return Err(url_problem(too_many.to_string())),
        Err(AddEndpointError::Store(error)) => return Err(error.into()),
    };
    tracing::info!(webhook_id = %endpoint.id, token_id = %caller.token_id, "webhook endpoint added");
    let added = WebhookAdded {
        endpoint: WebhookView::from(&endpoint),
        secret: secret.expose_secret().to_owned(),
    };
    Ok((StatusCode::CREATED, success(added)))
}

/// The organization's webhook endpoints, oldest first.
#[utoipa::path(
    get,
    path = "/v1/organizations/{organizationId}/mdm/windows/enterprise/webhooks",
    tag = "webhooks",
    params(OrganizationParams),
    responses((status = 200, description = "The endpoints", body = Success<Vec<WebhookView>>), StatusErrors),
    security(("bearer" = [])),
)]
pub async fn list_webhooks(
    State(state): State<AppState>,
    caller: Authenticated,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Success<Vec<WebhookView>>>, ApiError> {
    caller.require(PERMISSION_WEBHOOKS_MANAGE)?;
    let organization = organization_of(path).map_err(|p| ApiError::Validation(vec![p]))?;
    let organization = caller.organization(&state, &organization).await?;
    let endpoints = state.store.webhooks(organization.id).await?;
    Ok(success(endpoints.iter().map(WebhookView::from).collect()))
}

/// Removes an endpoint: nothing more is delivered to it.
#[utoipa::path(
    delete,
    path = "/v1/organizations/{organizationId}/mdm/windows/enterprise/webhooks/{webhookId}",
    tag = "webhooks",
    params(WebhookParams),
    responses((status = 200, description = "The endpoint removed", body = Success<WebhookView>), StatusErrors),
    security(("bearer" = [])),
)]
pub async fn remove_webhook(
    State(state): State<AppState>,
    caller: Authenticated,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Success<WebhookView>>, ApiError> {
    caller.require(PERMISSION_WEBHOOKS_MANAGE)?;
    let (organization, id) = callers_id(&state, &caller, path, "webhookId").await?;
    let endpoint = state
        .store
        .remove_webhook(organization.id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    tracing::info!(webhook_id = %endpoint.id, token_id = %caller.token_id, "webhook endpoint removed");
    Ok(success(WebhookView::from(&endpoint)))
}

/// One event's delivery to an endpoint, with every attempt made.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryView {
    pub id: String,
    /// The `webhook-id` it is sent with.
    pub message_id: String,
    #[schema(value_type = schema::WebhookEvent)]
    pub event: WebhookEvent,
    #[schema(value_type = schema::DeliveryState)]
    pub state: DeliveryState,
    /// Oldest first.
    pub attempts: Vec<AttemptView>,
    pub created_at: String,
    pub updated_at: String,
}

/// One attempt: the receiver's status, or why it gave none.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptView {
    pub at: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

impl From<&DeliveryRecord> for DeliveryView {
    fn from(record: &DeliveryRecord) -> DeliveryView {
        DeliveryView {
            id: record.id.to_hex(),
            message_id: record.message_id.clone(),
            event: record.event,
            state: record.state,
            attempts: record
                .attempts
                .iter()
                .map(|attempt| AttemptView {
                    at: rfc3339(attempt.at),
                    status: attempt.status,
                    error: attempt.error.clone(),
                    duration_ms: attempt.duration_ms,
                })
                .collect(),
            created_at: rfc3339(record.created_at),
            updated_at: rfc3339(record.updated_at),
        }
    }
}

/// A page of an endpoint's deliveries.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveriesPage {
    /// Newest first.
    pub deliveries: Vec<DeliveryView>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// An endpoint's deliveries, newest first, a page at a time (kept for 7 days).
#[utoipa::path(
    get,
    path = "/v1/organizations/{organizationId}/mdm/windows/enterprise/webhooks/{webhookId}/deliveries",
    tag = "webhooks",
    params(DeliveriesParams),
    responses((status = 200, description = "A page of the endpoint's deliveries", body = Success<DeliveriesPage>), StatusErrors),
    security(("bearer" = [])),
)]
pub async fn webhook_deliveries(
    State(state): State<AppState>,
    caller: Authenticated,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Success<DeliveriesPage>>, ApiError> {
    caller.require(PERMISSION_WEBHOOKS_MANAGE)?;
    let (organization, id, (limit, after)) = id_read(path, "webhookId", query, PageQuery::read)?;
    let organization = caller.organization(&state, &organization).await?;
    let endpoint = (state.store)
        .webhook(organization.id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    // One more than asked: whether another page follows.
    let deliveries = (state.store)
        .deliveries(organization.id, endpoint.id, after, limit + 1)
        .await?;
    let (deliveries, next_cursor) = page(deliveries, limit, |delivery| delivery.id);
    Ok(success(DeliveriesPage {
        deliveries: deliveries.iter().map(DeliveryView::from).collect(),
        next_cursor,
    }))
}

/// The path and body of an add, or every problem with them at once.
fn validate_request(
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(OrganizationRef, WebhookRequest), ApiError> {
    let mut problems = Vec::new();
    let organization = organization_of(path).map_err(|p| problems.push(p)).ok();
    let request = validate::json_body(headers, body, validate::webhook_body, &mut problems);
    match (organization, request) {
        (Some(organization), Some(request)) if problems.is_empty() => Ok((organization, request)),
        _ => Err(ApiError::Validation(problems)),
    }
}

fn url_problem(problem: String) -> ApiError {
    ApiError::Validation(vec![FieldProblem::new("url", problem)])
}
