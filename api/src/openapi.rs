//! The OpenAPI 3.1 document served at `/openapi.json`. Each route is registered together with its
//! `#[utoipa::path]` (utoipa-axum's `routes!`), so no route is served undocumented; the error
//! answers are built from `ErrorKind`'s table and the parameter patterns are `validate`'s own, so
//! the document says what the code does.

use crate::{
    error::{ErrorKind, FieldProblem},
    validate,
};
use axum::{
    Extension,
    body::Bytes,
    http::header,
    response::{IntoResponse, Response},
};
use refresh_events::view::{BatchView, CategoryReported, JobView};
use refresh_shared::{batch::MAX_BATCH_DEVICES, trace, webhook::WebhookEvent};
use serde_json::json;
use std::collections::BTreeMap;
use utoipa::{
    IntoParams, IntoResponses, Modify, OpenApi, PartialSchema, ToSchema,
    openapi::{
        self, ArrayBuilder, ContentBuilder, HeaderBuilder, ObjectBuilder, RefOr, Required,
        Response as ApiResponse, ResponseBuilder, Schema, Type,
        path::{Parameter, ParameterBuilder, ParameterIn},
        schema::AdditionalProperties,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

pub use refresh_events::schema;

/// The name the operations' `security` refers to.
pub const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "device-refresh",
        description = "Asks Windows devices to re-report selected inventory categories without a full sync."
    ),
    components(schemas(
        FieldProblem,
        schema::Category,
        schema::DeviceState,
        JobView,
        BatchView,
        CategoryReported
    )),
    modifiers(&Conventions),
    tags(
        (name = "refresh", description = "Refreshing devices, one or in bulk, and following the work"),
        (name = "operations", description = "Health, metrics, queue depths and this document"),
        (name = "webhooks", description = "Where refresh events are delivered, signed (Standard Webhooks)"),
    )
)]
pub struct ApiDoc;

/// What every operation shares: the bearer scheme, the error answers the operations refer to,
/// and the answers to a request no operation matches (an unknown path, or a method the path
/// does not serve).
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, document: &mut openapi::OpenApi) {
        let components = document.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let route_level = [[ErrorKind::RouteNotFound], [ErrorKind::MethodNotAllowed]]
            .map(|kinds| (response_name(&kinds), error_response(&kinds)));
        for (name, response) in shared_error_responses().into_iter().chain(route_level) {
            components.responses.insert(name, response.into());
        }
    }
}

/// The document, rendered once at start.
#[derive(Clone)]
pub struct Document(Bytes);

impl Document {
    pub fn new(document: &openapi::OpenApi) -> Document {
        let json =
            serde_json::to_vec(&rendered(document)).expect("an OpenAPI document always serializes");
        Document(Bytes::from(json))
    }
}

/// The document as JSON, with what utoipa cannot say: the `webhooks` (OpenAPI 3.1) the
/// service delivers, one per event.
pub fn rendered(document: &openapi::OpenApi) -> serde_json::Value {
    let mut json = serde_json::to_value(document).expect("an OpenAPI document always serializes");
    json["webhooks"] = serde_json::to_value(webhooks()).expect("webhooks serialize");
    json
}

/// Each event as a receiver gets it: a POST signed by Standard Webhooks, whose `data` is the
/// job or batch as its GET shows it, or a category's entry of the job.
fn webhooks() -> BTreeMap<&'static str, openapi::PathItem> {
    let events = [
        (
            WebhookEvent::JobFinished,
            reference::<JobView>(),
            "Every category of a job has ended: `data` is the job as its GET shows it.",
        ),
        (
            WebhookEvent::BatchFinished,
            reference::<BatchView>(),
            "A batch has ended (completed, or canceled): `data` is the batch as its GET shows it.",
        ),
        (
            WebhookEvent::CategoryReported,
            reference::<CategoryReported>(),
            "The device reported one category of a job: `data` names the job and carries the category's entry of it.",
        ),
    ];
    let header = |name: &str, description: &str| {
        ParameterBuilder::new()
            .name(name)
            .parameter_in(ParameterIn::Header)
            .required(Required::True)
            .description(Some(description))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .build()
    };
    events
        .into_iter()
        .map(|(event, data, description)| {
            let body = ObjectBuilder::new()
                .property(
                    "type",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some([event.as_str()])),
                )
                .property(
                    "timestamp",
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .description(Some("When it happened (RFC 3339)")),
                )
                .property("data", data)
                .required("type")
                .required("timestamp")
                .required("data");
            let operation = openapi::path::OperationBuilder::new()
                .summary(Some(event.as_str()))
                .description(Some(description))
                .tag("webhooks")
                .parameters(Some([
                    header("webhook-id", "The message's id: the same on every attempt, and for the same event announced again"),
                    header("webhook-timestamp", "When this attempt was signed, in seconds since the Unix epoch"),
                    header("webhook-signature", "`v1,` and the base64 HMAC-SHA256 of `id.timestamp.body` under the endpoint's secret"),
                ]))
                .request_body(Some(
                    openapi::request_body::RequestBodyBuilder::new()
                        .content("application/json", ContentBuilder::new().schema(Some(body)).build())
                        .required(Some(Required::True))
                        .build(),
                ))
                .response("2XX", ResponseBuilder::new().description("Delivered"))
                .response(
                    "410",
                    ResponseBuilder::new().description("Gone: the endpoint is disabled, nothing more is delivered to it"),
                )
                .response(
                    "default",
                    ResponseBuilder::new().description("Tried again after the next retry tier's delay"),
                )
                .build();
            let item = openapi::PathItem::new(openapi::HttpMethod::Post, operation);
            (event.as_str(), item)
        })
        .collect()
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json"),
        AnyRouteErrors,
    )
)]
pub async fn document(Extension(document): Extension<Document>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document.0).into_response()
}

/// Answers any route may give: headers over `HEADER_LIMIT_BYTES`, `MAX_IN_FLIGHT_REQUESTS` or
/// `MAX_CONNECTIONS` reached, no answer within `REQUEST_TIMEOUT_MS`, and the catch-all for a bug.
const ANY_ROUTE: &[ErrorKind] = &[
    ErrorKind::HeadersTooLarge,
    ErrorKind::Overloaded,
    ErrorKind::RequestTimeout,
    ErrorKind::Internal,
];
/// Answers of a route that takes a bearer token (the token lookup may find the database down;
/// two `Authorization` headers are a 400).
const AUTHENTICATED: &[ErrorKind] = &[
    ErrorKind::Validation,
    ErrorKind::NoToken,
    ErrorKind::Unauthorized,
    ErrorKind::Forbidden,
    ErrorKind::RateLimited,
    ErrorKind::Unavailable,
];
/// Answers of a route that reads a JSON body.
const WITH_BODY: &[ErrorKind] = &[
    ErrorKind::Validation,
    ErrorKind::PayloadTooLarge,
    ErrorKind::BodyTimeout,
];
/// Answers of a route that takes an `Idempotency-Key`.
const IDEMPOTENT: &[ErrorKind] = &[
    ErrorKind::IdempotencyMismatch,
    ErrorKind::IdempotencyInProgress,
];

/// Declares, for each kind of route, a type whose `IntoResponses` refers to its error answers
/// (one per HTTP status) in `components.responses`, and `shared_error_responses`, which writes
/// each of those answers there once.
macro_rules! error_answers {
    ($($(#[$doc:meta])* $name:ident = [$($group:expr),* $(,)?];)*) => {
        $(
            $(#[$doc])*
            pub struct $name;

            impl IntoResponses for $name {
                fn responses() -> BTreeMap<String, RefOr<ApiResponse>> {
                    by_status(&[$($group),*].concat())
                        .into_iter()
                        .map(|(status, kinds)| {
                            let shared = openapi::Ref::from_response_name(response_name(&kinds));
                            (status.to_string(), RefOr::Ref(shared))
                        })
                        .collect()
                }
            }
        )*

        /// Every error answer an operation refers to, by name.
        fn shared_error_responses() -> BTreeMap<String, ApiResponse> {
            let routes: Vec<Vec<ErrorKind>> = vec![$([$($group),*].concat()),*];
            routes
                .iter()
                .flat_map(|kinds| by_status(kinds).into_values())
                .map(|kinds| (response_name(&kinds), error_response(&kinds)))
                .collect()
        }
    };
}

error_answers! {
    /// `POST …/devices/{winDeviceId}/info`.
    RefreshErrors = [
        ANY_ROUTE,
        AUTHENTICATED,
        WITH_BODY,
        IDEMPOTENT,
        &[ErrorKind::NotFound, ErrorKind::DeviceNotActive],
    ];
    /// `POST …/refresh-batches`.
    CreateBatchErrors = [ANY_ROUTE, AUTHENTICATED, WITH_BODY, IDEMPOTENT, &[ErrorKind::NotFound]];
    /// `POST …/webhooks`.
    CreateWebhookErrors = [ANY_ROUTE, AUTHENTICATED, WITH_BODY, &[ErrorKind::NotFound]];
    /// A status read by id: `…/refresh-jobs/{jobId}`, `…/refresh-batches/{batchId}`; the
    /// webhook list and removal.
    StatusErrors = [ANY_ROUTE, AUTHENTICATED, &[ErrorKind::Validation, ErrorKind::NotFound]];
    /// `DELETE …/refresh-jobs/{jobId}`, `DELETE …/refresh-batches/{batchId}`.
    CancelErrors = [
        ANY_ROUTE,
        AUTHENTICATED,
        &[ErrorKind::Validation, ErrorKind::NotFound, ErrorKind::JobFinished],
    ];
    /// `GET /v1/ops/queues`.
    OperatorErrors = [ANY_ROUTE, AUTHENTICATED];
    /// `GET /readyz`.
    ReadinessErrors = [ANY_ROUTE, &[ErrorKind::NotReady]];
    /// Routes without a token: `/healthz`, `/metrics`, `/openapi.json`.
    AnyRouteErrors = [ANY_ROUTE];
}

/// `kinds` grouped by HTTP status, each once, in the order given.
fn by_status(kinds: &[ErrorKind]) -> BTreeMap<u16, Vec<ErrorKind>> {
    let mut by_status: BTreeMap<u16, Vec<ErrorKind>> = BTreeMap::new();
    for &kind in kinds {
        let (status, _, _) = kind.parts();
        let same_status = by_status.entry(status.as_u16()).or_default();
        if !same_status.contains(&kind) {
            same_status.push(kind);
        }
    }
    by_status
}

/// The distinct `error.code`s of `kinds`, with their messages, in the order given.
fn codes(kinds: &[ErrorKind]) -> Vec<(u16, &'static str)> {
    let mut codes: Vec<(u16, &'static str)> = Vec::new();
    for kind in kinds {
        let (_, code, message) = kind.parts();
        if !codes.iter().any(|(known, _)| *known == code) {
            codes.push((code, message));
        }
    }
    codes
}

/// `Error4002_4001`: the name of the shared answer allowing exactly these codes.
fn response_name(kinds: &[ErrorKind]) -> String {
    let codes: Vec<String> = codes(kinds)
        .into_iter()
        .map(|(code, _)| code.to_string())
        .collect();
    format!("Error{}", codes.join("_"))
}

/// The envelope `{"status":false,"error":{"code","message","details"?}}` for kinds of one status.
fn error_response(kinds: &[ErrorKind]) -> ApiResponse {
    let (codes, messages): (Vec<u16>, Vec<&str>) = codes(kinds).into_iter().unzip();
    let description = codes
        .iter()
        .zip(&messages)
        .map(|(code, message)| format!("{code} {message}"))
        .collect::<Vec<_>>()
        .join("; ");
    let error = ObjectBuilder::new()
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some(codes)),
        )
        .required("code")
        .property(
            "message",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(messages)),
        )
        .required("message")
        .property(
            "details",
            ArrayBuilder::new().items(reference::<FieldProblem>()),
        )
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let always_false = ObjectBuilder::new()
        .schema_type(Type::Boolean)
        .enum_values(Some([false]));
    let envelope = ObjectBuilder::new()
        .property("status", always_false)
        .required("status")
        .property("error", error)
        .required("error")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let mut response = ResponseBuilder::new().description(description).content(
        "application/json",
        ContentBuilder::new().schema(Some(envelope)).build(),
    );
    if kinds.iter().any(|kind| kind.has_retry_after()) {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1)),
                )
                .description(Some("Seconds to wait before trying again"))
                .build(),
        );
    }
    response.build()
}

/// A reference to `T`'s schema, which `ApiDoc` lists among its components.
fn reference<T: ToSchema>() -> RefOr<Schema> {
    RefOr::Ref(openapi::Ref::from_schema_name(T::name()))
}

/// A string parameter matching `pattern`: required in the path, optional elsewhere.
fn parameter(name: &str, location: ParameterIn, pattern: &str, description: &str) -> Parameter {
    let required = match location {
        ParameterIn::Path => Required::True,
        _ => Required::False,
    };
    ParameterBuilder::new()
        .name(name)
        .parameter_in(location)
        .required(required)
        .description(Some(description))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(pattern)),
        ))
        .build()
}

fn organization_id() -> Parameter {
    parameter(
        "organizationId",
        ParameterIn::Path,
        validate::ORGANIZATION_PATTERN,
        "The organization's 24-hex id or its slug",
    )
}

fn idempotency_key() -> Parameter {
    parameter(
        "Idempotency-Key",
        ParameterIn::Header,
        validate::IDEMPOTENCY_KEY_PATTERN,
        "Makes a retried request answer what the first one did instead of acting twice",
    )
}

/// `traceparent`: any string. One that is not a valid trace context is not refused (W3C: the
/// receiver starts a new trace), so the document states no pattern a caller could be refused by.
fn traceparent() -> Parameter {
    ParameterBuilder::new()
        .name(trace::HEADER)
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "W3C trace context (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`): the refresh continues the caller's trace (its job's messages, logs and gateway requests carry it); without one, or with one that is not valid, a new trace starts",
        ))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

fn page_limit() -> Parameter {
    ParameterBuilder::new()
        .name("limit")
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(format!(
            "Entries in the page (default {})",
            validate::PAGE_LIMIT_DEFAULT
        )))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(validate::PAGE_LIMIT_MAX)),
        ))
        .build()
}

fn webhook_id() -> Parameter {
    parameter(
        "webhookId",
        ParameterIn::Path,
        validate::OBJECT_ID_PATTERN,
        "The id adding the endpoint answered",
    )
}

fn page_after() -> Parameter {
    parameter(
        "after",
        ParameterIn::Query,
        validate::OBJECT_ID_PATTERN,
        "The `nextCursor` of the page before (absent: the newest entries)",
    )
}

/// Declares a type whose `IntoParams` lists the given parameters.
macro_rules! parameters {
    ($($(#[$doc:meta])* $name:ident = [$($parameter:expr),* $(,)?];)*) => {$(
        $(#[$doc])*
        pub struct $name;

        impl IntoParams for $name {
            fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
                vec![$($parameter),*]
            }
        }
    )*};
}

fn win_device_id() -> Parameter {
    parameter(
        "winDeviceId",
        ParameterIn::Path,
        validate::DEVICE_PATTERN,
        "The device's 24-hex id, IMEI or serial number, looked up inside the organization",
    )
}

parameters! {
    /// `POST …/devices/{winDeviceId}/info`.
    RefreshParams = [organization_id(), win_device_id(), idempotency_key(), traceparent()];
    /// `GET …/devices/{winDeviceId}/inventory`.
    InventoryParams = [
        organization_id(),
        win_device_id(),
        parameter(
            "categories",
            ParameterIn::Query,
            validate::CATEGORY_LIST_PATTERN,
            "The categories to show, comma-separated (all when absent)",
        ),
    ];
    /// `GET …/devices/{winDeviceId}/refresh-jobs`.
    HistoryParams = [organization_id(), win_device_id(), page_limit(), page_after()];
    /// `POST …/refresh-batches`.
    CreateBatchParams = [organization_id(), idempotency_key(), traceparent()];
    /// `POST|GET …/webhooks`.
    OrganizationParams = [organization_id()];
    /// `DELETE …/webhooks/{webhookId}`.
    WebhookParams = [
        organization_id(),
        webhook_id(),
    ];
    /// `GET …/webhooks/{webhookId}/deliveries`.
    DeliveriesParams = [
        organization_id(),
        webhook_id(),
        page_limit(),
        page_after(),
    ];
    /// `GET …/refresh-jobs/{jobId}`.
    JobParams = [
        organization_id(),
        parameter(
            "jobId",
            ParameterIn::Path,
            validate::OBJECT_ID_PATTERN,
            "The id a refresh answered",
        ),
    ];
    /// `GET …/refresh-batches/{batchId}`.
    BatchParams = [
        organization_id(),
        parameter(
            "batchId",
            ParameterIn::Path,
            validate::OBJECT_ID_PATTERN,
            "The id a bulk refresh answered",
        ),
    ];
}

/// `maxAgeSecs`: skip a category the device reported this recently.
fn max_age_secs() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
        .maximum(Some(validate::MAX_AGE_SECS_LIMIT))
        .description(Some(
            "A category the device reported within this many seconds is not refreshed: it is listed in `skipped` (no job at all when every one is)",
        ))
}

fn categories() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(reference::<schema::Category>())
        .min_items(Some(1))
}

/// The body `validate::webhook_body` accepts: the URL to deliver to and the events wanted.
pub struct WebhookBody;

impl ToSchema for WebhookBody {}

impl PartialSchema for WebhookBody {
    fn schema() -> RefOr<Schema> {
        let url = ObjectBuilder::new()
            .schema_type(Type::String)
            .max_length(Some(refresh_shared::webhook::MAX_URL_LEN))
            .description(Some(
                "`https`, resolving to public addresses only (checked when added, and at every delivery)",
            ));
        let events = ArrayBuilder::new()
            .items(reference::<schema::WebhookEvent>())
            .min_items(Some(1))
            .max_items(Some(validate::MAX_EVENTS_LISTED));
        ObjectBuilder::new()
            .property("url", url)
            .required("url")
            .property("events", events)
            .required("events")
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .examples([json!({
                "url": "https://93.184.216.34/device-refresh",
                "events": ["refresh.job.finished", "refresh.category.reported"]
            })])
            .into()
    }
}

/// The body `validate::refresh_body` accepts: `{"info": [category, …], "maxAgeSecs"?: N}`,
/// duplicates merged.
pub struct RefreshBody;

impl ToSchema for RefreshBody {}

impl PartialSchema for RefreshBody {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property("info", categories())
            .required("info")
            .property("maxAgeSecs", max_age_secs())
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .examples([json!({ "info": ["hardware", "applications", "certificates"] })])
            .into()
    }
}

/// The body `validate::bulk_body` accepts: the categories and either the devices (ids, IMEIs or
/// serials) or a filter over the organization's devices.
pub struct BulkBody;

impl ToSchema for BulkBody {}

impl PartialSchema for BulkBody {
    fn schema() -> RefOr<Schema> {
        let device_ids = ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(validate::DEVICE_PATTERN)),
            )
            .min_items(Some(1))
            .max_items(Some(MAX_BATCH_DEVICES));
        let tag = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(validate::MAX_TAG_CHARS));
        let filter = ObjectBuilder::new()
            .property("state", reference::<schema::DeviceState>())
            .property(
                "tags",
                ArrayBuilder::new()
                    .items(tag)
                    .max_items(Some(validate::MAX_FILTER_TAGS)),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        let by_ids = ObjectBuilder::new()
            .property("info", categories())
            .required("info")
            .property("deviceIds", device_ids)
            .required("deviceIds")
            .property("maxAgeSecs", max_age_secs())
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        let by_filter = ObjectBuilder::new()
            .property("info", categories())
            .required("info")
            .property("filter", filter)
            .required("filter")
            .property("maxAgeSecs", max_age_secs())
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        openapi::schema::OneOfBuilder::new()
            .item(by_ids)
            .item(by_filter)
            .examples([
                json!({ "info": ["hardware"], "deviceIds": ["356938035643809", "SN_123"] }),
                json!({ "info": ["applications"], "filter": { "state": "ACTIVE", "tags": ["kiosk"] } }),
            ])
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{routes, settings::ApiSettings};
    use refresh_shared::settings::Load;
    use serde_json::Value;
    use std::collections::BTreeSet;
    use strum::IntoEnumIterator;

    fn document() -> Value {
        let settings = ApiSettings::from_lookup(|_| None).expect("defaults are valid");
        let (_, document) = routes::documented(&settings).split_for_parts();
        rendered(&document)
    }

    /// Every `error.code` a response of the document allows.
    fn documented_codes(document: &Value) -> BTreeSet<u64> {
        let mut responses: Vec<&Value> = document["components"]["responses"]
            .as_object()
            .into_iter()
            .flat_map(|responses| responses.values())
            .collect();
        for item in document["paths"].as_object().expect("paths").values() {
            for operation in item.as_object().expect("path item").values() {
                responses.extend(
                    operation["responses"]
                        .as_object()
                        .expect("responses")
                        .values(),
                );
            }
        }
        responses
            .into_iter()
            .filter_map(|response| {
                let schema = &response["content"]["application/json"]["schema"];
                schema["properties"]["error"]["properties"]["code"]["enum"].as_array()
            })
            .flatten()
            .filter_map(Value::as_u64)
            .collect()
    }

    fn references(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(fields) => {
                if let Some(Value::String(reference)) = fields.get("$ref") {
                    found.push(reference.clone());
                }
                fields.values().for_each(|field| references(field, found));
            }
            Value::Array(items) => items.iter().for_each(|item| references(item, found)),
            _ => {}
        }
    }

    #[test]
    fn every_reference_in_the_document_resolves() {
        let document = document();
        let mut found = Vec::new();
        references(&document, &mut found);
        assert!(found.len() > 20, "{found:?}");
        for reference in found {
            let pointer = reference.strip_prefix('#').expect("a local reference");
            assert!(document.pointer(pointer).is_some(), "{reference} resolves");
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_and_lists_every_error_of_the_table() {
        let document = document();
        assert!(
            document["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1"))
        );
        let table: BTreeSet<u64> = ErrorKind::iter()
            .map(|kind| u64::from(kind.parts().1))
            .collect();
        assert_eq!(documented_codes(&document), table);
    }

    #[test]
    fn every_webhook_event_is_documented_with_its_body() {
        let document = document();
        let webhooks = document["webhooks"].as_object().expect("webhooks");
        let names: BTreeSet<&str> = webhooks.keys().map(String::as_str).collect();
        let events: BTreeSet<&str> = WebhookEvent::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(names, events);
        for (name, item) in webhooks {
            let schema = &item["post"]["requestBody"]["content"]["application/json"]["schema"];
            assert_eq!(schema["properties"]["type"]["enum"][0], name.as_str());
            assert!(schema["properties"]["data"]["$ref"].is_string(), "{name}");
        }
    }
}
