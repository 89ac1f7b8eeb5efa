//! Turns path parameters and bodies into typed values, or into the list of what is wrong.

use crate::{error::FieldProblem, strict_json};
use axum::http::{HeaderMap, header};
use bson::oid::ObjectId;
use refresh_shared::{
    Category,
    batch::{DeviceFilter, MAX_BATCH_DEVICES},
    device::DeviceState,
    report::CategoryReport,
    store::Organization,
    webhook::WebhookEvent,
};
use serde_json::Value;
use std::{collections::BTreeMap, time::Duration};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// `organizationId`, as the upstream page gives it.
pub const ORGANIZATION_PATTERN: &str = r"^(([a-fA-F0-9]{24})|([a-zA-Z0-9\-]{3,}))$";
/// `winDeviceId`: the upstream page's `^(([a-fA-F0-9]{24})|(\w{1,}))$` with `\w` written out as
/// the ASCII word characters it means in ECMA-262, the regex dialect of OpenAPI 3.1 (a reader in
/// another dialect, such as Python's, would take `\w` to include every Unicode letter), and at
/// most [`MAX_DEVICE_KEY_CHARS`] of them: no IMEI or serial is longer, and a
/// megabyte-long "id" must not reach the database.
pub const DEVICE_PATTERN: &str = r"^(([a-fA-F0-9]{24})|([a-zA-Z0-9_]{1,128}))$";
/// The longest device key (id, IMEI or serial).
pub const MAX_DEVICE_KEY_CHARS: usize = 128;
/// `jobId`, `batchId`: an ObjectId in hex.
pub const OBJECT_ID_PATTERN: &str = "^[a-fA-F0-9]{24}$";
/// `?categories=`: category names, comma-separated.
pub const CATEGORY_LIST_PATTERN: &str = "^(hardware|applications|certificates|network|security|os)(,(hardware|applications|certificates|network|security|os))*$";
/// `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,255}$";

/// `organizationId` ([`ORGANIZATION_PATTERN`]): an id or a slug.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrganizationRef {
    Id(ObjectId),
    Slug(String),
}

pub fn organization_ref(raw: &str) -> Result<OrganizationRef, FieldProblem> {
    if let Ok(id) = ObjectId::parse_str(raw) {
        return Ok(OrganizationRef::Id(id));
    }
    if Organization::is_slug(raw) {
        Ok(OrganizationRef::Slug(raw.to_owned()))
    } else {
        Err(FieldProblem::new(
            "organizationId",
            "must be a 24-hex id or a slug of at least 3 letters, digits or '-'",
        ))
    }
}

/// `winDeviceId` ([`DEVICE_PATTERN`]): an id, IMEI or serial.
pub fn device_key(raw: &str) -> Result<&str, FieldProblem> {
    if (1..=MAX_DEVICE_KEY_CHARS).contains(&raw.len())
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        Ok(raw)
    } else {
        Err(FieldProblem::new("winDeviceId", DEVICE_KEY_PROBLEM))
    }
}

const DEVICE_KEY_PROBLEM: &str =
    "must be a 24-hex id, an IMEI or a serial number (1 to 128 letters, digits or '_')";

pub fn object_id(field: &str, raw: &str) -> Result<ObjectId, FieldProblem> {
    ObjectId::parse_str(raw).map_err(|_| FieldProblem::new(field, "must be a 24-hex id"))
}

/// Checks the request is `application/json`, given once, in UTF-8 (the only charset JSON
/// has, RFC 8259): a body the client encoded otherwise would be read as something it did not
/// send.
fn json_content_type(headers: &HeaderMap) -> Result<(), FieldProblem> {
    content_type(headers, "application/json")
}

/// The body is of `media_type`, in UTF-8 (no charset parameter, or that one): said by one
/// `Content-Type` header.
pub fn content_type(headers: &HeaderMap, media_type: &str) -> Result<(), FieldProblem> {
    let refused = || FieldProblem::new("Content-Type", format!("must be {media_type} (UTF-8)"));
    let value = single(headers, "Content-Type")
        .map_err(|_| refused())?
        .and_then(|v| v.to_str().ok())
        .ok_or_else(refused)?;
    let mut parts = value.split(';').map(str::trim);
    let essence = parts.next().unwrap_or_default();
    let utf8 = parts.all(|parameter| match parameter.split_once('=') {
        Some((name, charset)) if name.trim().eq_ignore_ascii_case("charset") => {
            let charset = charset.trim().trim_matches('"');
            charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    });
    if essence.eq_ignore_ascii_case(media_type) && utf8 {
        Ok(())
    } else {
        Err(refused())
    }
}

/// The body, checked to be JSON by its content type and then parsed by `parse`; what is wrong
/// with either goes to `problems`.
pub fn json_body<T>(
    headers: &HeaderMap,
    body: &[u8],
    parse: fn(&[u8]) -> Result<T, Vec<FieldProblem>>,
    problems: &mut Vec<FieldProblem>,
) -> Option<T> {
    let parsed = json_content_type(headers)
        .map_err(|problem| vec![problem])
        .and_then(|()| parse(body));
    parsed.map_err(|found| problems.extend(found)).ok()
}

/// The value of a header a request may carry at most once; two are ambiguous (a proxy may act
/// on one, we on the other), so they are refused.
pub fn single<'a>(
    headers: &'a HeaderMap,
    name: &str,
) -> Result<Option<&'a header::HeaderValue>, FieldProblem> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(FieldProblem::new(name, "must be given at most once"));
    }
    Ok(first)
}

/// A refresh: the categories, and how recent a report of one must be for it to be skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshRequest {
    /// Duplicates merged, in the order first named.
    pub categories: Vec<Category>,
    /// `maxAgeSecs`: a category the device reported within this long is not refreshed.
    pub max_age: Option<Duration>,
}

/// Longest `maxAgeSecs` (a year): anything longer is surely a mistake in the caller's units.
pub const MAX_AGE_SECS_LIMIT: u64 = 365 * 24 * 3600;

/// Parses `{"info": [...], "maxAgeSecs"?: N}`.
pub fn refresh_body(body: &[u8]) -> Result<RefreshRequest, Vec<FieldProblem>> {
    let mut fields = json_object(body)?;
    let mut problems = unknown_fields(&fields, &["info", "maxAgeSecs"]);
    let info = info(&mut fields);
    let max_age = max_age(&mut fields);
    match (info, max_age) {
        (Ok(categories), Ok(max_age)) if problems.is_empty() => Ok(RefreshRequest {
            categories,
            max_age,
        }),
        (info, max_age) => {
            let found = [info.err(), max_age.err()].into_iter().flatten();
            problems.splice(0..0, found);
            Err(problems)
        }
    }
}

/// A JSON number without a fraction, as JSON Schema's `integer` takes it: `60` or `60.0`.
fn whole_number(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        let float = value.as_f64()?;
        // Exactly representable: below 2^53 every whole f64 is an exact integer.
        (float.fract() == 0.0 && (0.0..9_007_199_254_740_992.0).contains(&float))
            .then_some(float as u64)
    })
}

/// `"maxAgeSecs"`: a whole number of seconds, 0 to [`MAX_AGE_SECS_LIMIT`], if given.
fn max_age(fields: &mut serde_json::Map<String, Value>) -> Result<Option<Duration>, FieldProblem> {
    let Some(value) = fields.remove("maxAgeSecs") else {
        return Ok(None);
    };
    whole_number(&value)
        .filter(|secs| *secs <= MAX_AGE_SECS_LIMIT)
        .map(|secs| Some(Duration::from_secs(secs)))
        .ok_or_else(|| {
            FieldProblem::new(
                "maxAgeSecs",
                format!("must be a whole number of seconds from 0 to {MAX_AGE_SECS_LIMIT}"),
            )
        })
}

/// A bulk refresh: the categories, either the devices named or a filter, and `maxAgeSecs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkRequest {
    pub categories: Vec<Category>,
    pub target: BulkTarget,
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BulkTarget {
    /// De-duplicated, in the order first named.
    DeviceIds(Vec<String>),
    Filter(DeviceFilter),
}

/// Most problems listed for one bulk body: a 100,000-id list with every id wrong must not
/// produce a 100,000-line answer.
const MAX_LISTED_PROBLEMS: usize = 20;
/// Most tags a filter may require.
pub const MAX_FILTER_TAGS: usize = 50;
/// Longest tag a filter may name, in characters (as JSON Schema's `maxLength` counts).
pub const MAX_TAG_CHARS: usize = 128;

/// Parses `{"info": [...], "deviceIds": [...]}` or `{"info": [...], "filter": {...}}`, either
/// with `"maxAgeSecs"` if wanted.
pub fn bulk_body(body: &[u8]) -> Result<BulkRequest, Vec<FieldProblem>> {
    let mut fields = json_object(body)?;
    let mut problems = unknown_fields(&fields, &["info", "deviceIds", "filter", "maxAgeSecs"]);
    let categories = info(&mut fields).map_err(|p| problems.push(p)).ok();
    let max_age = max_age(&mut fields).map_err(|p| problems.push(p)).ok();
    let target = match (fields.remove("deviceIds"), fields.remove("filter")) {
        (Some(ids), None) => device_ids(ids, &mut problems).map(BulkTarget::DeviceIds),
        (None, Some(filter)) => device_filter(filter, &mut problems).map(BulkTarget::Filter),
        (Some(_), Some(_)) => {
            problems.push(FieldProblem::new(
                "body",
                "give either deviceIds or filter, not both",
            ));
            None
        }
        (None, None) => {
            problems.push(FieldProblem::new("body", "deviceIds or filter is required"));
            None
        }
    };
    match (categories, target, max_age) {
        (Some(categories), Some(target), Some(max_age)) if problems.is_empty() => Ok(BulkRequest {
            categories,
            target,
            max_age,
        }),
        _ => Err(problems),
    }
}

fn device_ids(value: Value, problems: &mut Vec<FieldProblem>) -> Option<Vec<String>> {
    let Value::Array(items) = value else {
        problems.push(FieldProblem::new(
            "deviceIds",
            "must be an array of device ids",
        ));
        return None;
    };
    if items.is_empty() {
        problems.push(FieldProblem::new(
            "deviceIds",
            "must name at least one device",
        ));
        return None;
    }
    if items.len() > MAX_BATCH_DEVICES {
        problems.push(FieldProblem::new(
            "deviceIds",
            format!(
                "names {} devices; at most {MAX_BATCH_DEVICES} per batch",
                items.len()
            ),
        ));
        return None;
    }
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut ids = Vec::with_capacity(items.len());
    let mut bad = 0;
    for (index, item) in items.into_iter().enumerate() {
        match item {
            Value::String(id) if device_key(&id).is_ok() => {
                if seen.insert(id.clone()) {
                    ids.push(id);
                }
            }
            _ => {
                bad += 1;
                if bad <= MAX_LISTED_PROBLEMS {
                    problems.push(FieldProblem::new(
                        format!("deviceIds[{index}]"),
                        DEVICE_KEY_PROBLEM,
                    ));
                }
            }
        }
    }
    if bad > MAX_LISTED_PROBLEMS {
        problems.push(FieldProblem::new(
            "deviceIds",
            format!("{} more invalid ids not listed", bad - MAX_LISTED_PROBLEMS),
        ));
    }
    (bad == 0).then_some(ids)
}

fn device_filter(value: Value, problems: &mut Vec<FieldProblem>) -> Option<DeviceFilter> {
    let Value::Object(mut fields) = value else {
        problems.push(FieldProblem::new("filter", "must be an object"));
        return None;
    };
    let before = problems.len();
    problems.extend(
        unknown_fields(&fields, &["state", "tags"])
            .into_iter()
            .map(|p| FieldProblem::new(format!("filter.{}", p.field), p.problem)),
    );
    let state = match fields.remove("state") {
        None => None,
        Some(Value::String(state)) => match state.parse::<DeviceState>() {
            Ok(state) => Some(state),
            Err(problem) => {
                problems.push(FieldProblem::new("filter.state", problem));
                None
            }
        },
        Some(_) => {
            problems.push(FieldProblem::new("filter.state", "must be a device state"));
            None
        }
    };
    let tags = match fields.remove("tags") {
        None => Vec::new(),
        Some(Value::Array(items)) if items.len() <= MAX_FILTER_TAGS => {
            let mut tags = Vec::new();
            for (index, item) in items.into_iter().enumerate() {
                match item {
                    Value::String(tag)
                        if !tag.is_empty() && tag.chars().count() <= MAX_TAG_CHARS =>
                    {
                        if !tags.contains(&tag) {
                            tags.push(tag);
                        }
                    }
                    _ => problems.push(FieldProblem::new(
                        format!("filter.tags[{index}]"),
                        format!("must be a non-empty string of at most {MAX_TAG_CHARS} characters"),
                    )),
                }
            }
            tags
        }
        Some(_) => {
            problems.push(FieldProblem::new(
                "filter.tags",
                format!("must be an array of at most {MAX_FILTER_TAGS} tags"),
            ));
            Vec::new()
        }
    };
    (problems.len() == before).then_some(DeviceFilter { state, tags })
}

/// An optional `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, FieldProblem> {
    let Some(value) = single(headers, "Idempotency-Key")? else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(key.to_owned()))
        }
        _ => Err(FieldProblem::new(
            "Idempotency-Key",
            "must be 1 to 255 visible ASCII characters",
        )),
    }
}

/// A device's report, as the agent sends it (CONTRACT §5), before the node checks every
/// report gets ([`DeviceReport::problems`](refresh_shared::report::DeviceReport::problems)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportBody {
    pub job_id: Option<ObjectId>,
    pub collected_at: OffsetDateTime,
    pub categories: BTreeMap<Category, CategoryReport>,
}

/// How far ahead of this server's clock a device's `collectedAt` may be: clocks drift, but a
/// report dated next year would never be overwritten by the truth.
pub const MAX_CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// Parses `{"jobId"?, "collectedAt", "categories": {"<category>": {"nodes", "errors"?}}}`.
pub fn report_body(body: &[u8]) -> Result<ReportBody, Vec<FieldProblem>> {
    let mut fields = json_object(body)?;
    let mut problems = unknown_fields(&fields, &["jobId", "collectedAt", "categories"]);
    let job_id = match fields.remove("jobId") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => object_id("jobId", &id)
            .map_err(|problem| problems.push(problem))
            .ok(),
        Some(_) => {
            problems.push(FieldProblem::new("jobId", "must be a 24-hex id"));
            None
        }
    };
    let collected_at = match fields.remove("collectedAt") {
        Some(Value::String(at)) => match OffsetDateTime::parse(&at, &Rfc3339) {
            Ok(at) if at - OffsetDateTime::now_utc() > MAX_CLOCK_SKEW => {
                problems.push(FieldProblem::new(
                    "collectedAt",
                    "is more than 5 minutes ahead of the server's clock",
                ));
                None
            }
            Ok(at) => Some(at),
            Err(_) => {
                problems.push(FieldProblem::new("collectedAt", "must be an RFC 3339 time"));
                None
            }
        },
        None => {
            problems.push(FieldProblem::new("collectedAt", "is required"));
            None
        }
        Some(_) => {
            problems.push(FieldProblem::new("collectedAt", "must be an RFC 3339 time"));
            None
        }
    };
    let categories = match fields.remove("categories") {
        Some(Value::Object(reported)) if !reported.is_empty() => {
            report_categories(reported, &mut problems)
        }
        Some(Value::Object(_)) => {
            problems.push(FieldProblem::new(
                "categories",
                "must name at least one category",
            ));
            None
        }
        None => {
            problems.push(FieldProblem::new("categories", "is required"));
            None
        }
        Some(_) => {
            problems.push(FieldProblem::new(
                "categories",
                "must be an object of categories",
            ));
            None
        }
    };
    match (collected_at, categories) {
        (Some(collected_at), Some(categories)) if problems.is_empty() => Ok(ReportBody {
            job_id,
            collected_at,
            categories,
        }),
        _ => Err(problems),
    }
}

fn report_categories(
    reported: serde_json::Map<String, Value>,
    problems: &mut Vec<FieldProblem>,
) -> Option<BTreeMap<Category, CategoryReport>> {
    let mut categories = BTreeMap::new();
    for (name, value) in reported {
        let field = format!("categories.{name}");
        let category = name
            .parse::<Category>()
            .map_err(|e| problems.push(FieldProblem::new(field.as_str(), e.to_string())));
        let report = serde_json::from_value::<CategoryReport>(value).map_err(|e| {
            problems.push(FieldProblem::new(
                field.as_str(),
                format!("must be {{\"nodes\": {{uri: value}}, \"errors\"?: {{uri: status}}}}: {e}"),
            ));
        });
        if let (Ok(category), Ok(report)) = (category, report) {
            categories.insert(category, report);
        }
    }
    Some(categories)
}

/// Entries in a page (a device's history, an endpoint's deliveries) when `limit` is not
/// given, and at most.
pub const PAGE_LIMIT_DEFAULT: u32 = 20;
pub const PAGE_LIMIT_MAX: u32 = 100;

/// `?limit=N&after=CURSOR` of a paged list: how many entries (1 to
/// [`PAGE_LIMIT_MAX`]), and the cursor an earlier page ended with; every problem at once.
pub fn page(
    limit: Option<&str>,
    after: Option<&str>,
) -> Result<(u32, Option<ObjectId>), Vec<FieldProblem>> {
    let limit = match limit {
        None => Ok(PAGE_LIMIT_DEFAULT),
        Some(raw) => raw
            .parse()
            .ok()
            .filter(|n| (1..=PAGE_LIMIT_MAX).contains(n))
            .ok_or_else(|| {
                FieldProblem::new(
                    "limit",
                    format!("must be a whole number from 1 to {PAGE_LIMIT_MAX}"),
                )
            }),
    };
    let after = after.map(|raw| object_id("after", raw)).transpose();
    match (limit, after) {
        (Ok(limit), Ok(after)) => Ok((limit, after)),
        (limit, after) => Err([limit.err(), after.err()].into_iter().flatten().collect()),
    }
}

/// `?categories=a,b`: category names, comma-separated, duplicates merged; none given is all.
pub fn category_list(raw: Option<&str>) -> Result<Vec<Category>, FieldProblem> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let mut categories = Vec::new();
    for name in raw.split(',') {
        let category: Category =
            name.trim()
                .parse()
                .map_err(|e: refresh_shared::category::UnknownCategory| {
                    FieldProblem::new("categories", e.to_string())
                })?;
        if !categories.contains(&category) {
            categories.push(category);
        }
    }
    Ok(categories)
}

fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, Vec<FieldProblem>> {
    let value: Value = strict_json::from_slice(body)
        .map_err(|e| vec![FieldProblem::new("body", format!("is not valid JSON: {e}"))])?;
    match value {
        Value::Object(fields) => Ok(fields),
        _ => Err(vec![FieldProblem::new("body", "must be a JSON object")]),
    }
}

fn unknown_fields(fields: &serde_json::Map<String, Value>, known: &[&str]) -> Vec<FieldProblem> {
    fields
        .keys()
        .filter(|key| !known.contains(&key.as_str()))
        .map(|key| FieldProblem::new(key.as_str(), "is not a known field"))
        .collect()
}

/// The `info` field: at least one category name, duplicates merged.
fn info(fields: &mut serde_json::Map<String, Value>) -> Result<Vec<Category>, FieldProblem> {
    match fields.remove("info") {
        None => Err(FieldProblem::new("info", "is required")),
        Some(Value::Array(items)) if items.is_empty() => {
            Err(FieldProblem::new("info", "must name at least one category"))
        }
        Some(Value::Array(items)) => categories(&items),
        Some(_) => Err(FieldProblem::new(
            "info",
            "must be an array of category names",
        )),
    }
}

/// A webhook endpoint to add: its URL as given (checked against the URL policy by the route,
/// which knows it) and the events it wants, duplicates merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    pub url: String,
    pub events: Vec<WebhookEvent>,
}

/// The most entries `events` may have (repeats merged).
pub const MAX_EVENTS_LISTED: usize = 4 * WebhookEvent::ALL.len();

pub fn webhook_body(body: &[u8]) -> Result<WebhookRequest, Vec<FieldProblem>> {
    let mut fields = json_object(body)?;
    let mut problems = unknown_fields(&fields, &["url", "events"]);
    let url = match fields.remove("url") {
        Some(Value::String(url)) if !url.is_empty() => Some(url),
        Some(Value::String(_)) | None => {
            problems.push(FieldProblem::new("url", "is required"));
            None
        }
        Some(_) => {
            problems.push(FieldProblem::new("url", "must be a string"));
            None
        }
    };
    let events = webhook_events(fields.remove("events"))
        .map_err(|p| problems.push(p))
        .ok();
    match (url, events) {
        (Some(url), Some(events)) if problems.is_empty() => Ok(WebhookRequest { url, events }),
        _ => Err(problems),
    }
}

fn webhook_events(value: Option<Value>) -> Result<Vec<WebhookEvent>, FieldProblem> {
    let known = || WebhookEvent::ALL.map(WebhookEvent::as_str).join(", ");
    let items = match value {
        None => return Err(FieldProblem::new("events", "is required")),
        Some(Value::Array(items)) if items.is_empty() => {
            return Err(FieldProblem::new(
                "events",
                format!("must name at least one of {}", known()),
            ));
        }
        // A list this long is none a caller means: refused before reading it.
        Some(Value::Array(items)) if items.len() > MAX_EVENTS_LISTED => {
            return Err(FieldProblem::new("events", "names too many events"));
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(FieldProblem::new(
                "events",
                "must be an array of event names",
            ));
        }
    };
    let mut events = Vec::with_capacity(WebhookEvent::ALL.len());
    for (index, item) in items.iter().enumerate() {
        let event = item.as_str().and_then(WebhookEvent::parse).ok_or_else(|| {
            FieldProblem::new(
                format!("events[{index}]"),
                format!("must be one of {}", known()),
            )
        })?;
        if !events.contains(&event) {
            events.push(event);
        }
    }
    Ok(events)
}

fn categories(items: &[Value]) -> Result<Vec<Category>, FieldProblem> {
    let mut categories = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let field = || format!("info[{index}]");
        let Value::String(name) = item else {
            return Err(FieldProblem::new(field(), "must be a string"));
        };
        let category: Category =
            name.parse()
                .map_err(|e: refresh_shared::category::UnknownCategory| {
                    FieldProblem::new(field(), e.to_string())
                })?;
        if !categories.contains(&category) {
            categories.push(category);
        }
    }
    Ok(categories)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_body_names_a_url_and_known_events() {
        let ok = webhook_body(
            br#"{"url":"https://hooks.example.com/x","events":["refresh.job.finished","refresh.job.finished","refresh.category.reported"]}"#,
        );
        assert_eq!(
            ok,
            Ok(WebhookRequest {
                url: "https://hooks.example.com/x".to_owned(),
                events: vec![WebhookEvent::JobFinished, WebhookEvent::CategoryReported],
            })
        );
        let fields = |body: &[u8]| -> Vec<String> {
            webhook_body(body)
                .unwrap_err()
                .into_iter()
                .map(|p| p.field)
                .collect()
        };
        assert_eq!(fields(br#"{}"#), ["url", "events"]);
        assert_eq!(fields(br#"{"url":1,"events":[]}"#), ["url", "events"]);
        assert_eq!(
            fields(br#"{"url":"https://a.example","events":["refresh.job.done"],"x":1}"#),
            ["x", "events[0]"]
        );
        assert_eq!(
            fields(br#"{"url":"https://a.example","events":"refresh.job.finished"}"#),
            ["events"]
        );
    }

    #[test]
    fn organization_ids_and_slugs() {
        let hex = "65a1b2c3d4e5f6a7b8c9d0e1";
        assert!(matches!(organization_ref(hex), Ok(OrganizationRef::Id(_))));
        assert!(matches!(
            organization_ref(&hex.to_uppercase()),
            Ok(OrganizationRef::Id(_))
        ));
        assert_eq!(
            organization_ref("acme-corp"),
            Ok(OrganizationRef::Slug("acme-corp".to_owned()))
        );
        for bad in ["ab", "", "acme corp", "acme_corp", "acmé", "a/b"] {
            assert!(organization_ref(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn device_keys() {
        for good in ["65a1b2c3d4e5f6a7b8c9d0e1", "356938035643809", "SN_123", "x"] {
            assert_eq!(device_key(good), Ok(good));
        }
        for bad in ["", "a-b", "a b", "ü", "a.b"] {
            assert!(device_key(bad).is_err(), "{bad}");
        }
        assert!(device_key(&"a".repeat(128)).is_ok());
        assert!(device_key(&"a".repeat(129)).is_err());
        // One 8.3 MB id in a bulk body is refused, not looked up.
        let body = format!(
            r#"{{"info":["os"],"deviceIds":["{}"]}}"#,
            "7".repeat(8_300_000)
        );
        let problems = bulk_body(body.as_bytes()).expect_err("too long");
        assert_eq!(problems[0].field, "deviceIds[0]");
    }

    #[test]
    fn the_upstream_example_body_parses_and_duplicates_merge() {
        let body = br#"{"info":["hardware","applications","certificates","hardware"]}"#;
        assert_eq!(
            refresh_body(body),
            Ok(RefreshRequest {
                categories: vec![
                    Category::Hardware,
                    Category::Applications,
                    Category::Certificates
                ],
                max_age: None,
            })
        );
    }

    #[test]
    fn every_body_problem_is_named() {
        let problem = |body: &str| {
            refresh_body(body.as_bytes())
                .expect_err("invalid")
                .into_iter()
                .map(|p| format!("{}: {}", p.field, p.problem))
                .collect::<Vec<_>>()
                .join("; ")
        };
        assert!(problem("{").starts_with("body: is not valid JSON"));
        assert_eq!(problem("[]"), "body: must be a JSON object");
        assert_eq!(problem("{}"), "info: is required");
        assert_eq!(
            problem(r#"{"info":"hardware"}"#),
            "info: must be an array of category names"
        );
        assert_eq!(
            problem(r#"{"info":[]}"#),
            "info: must name at least one category"
        );
        assert_eq!(
            problem(r#"{"info":["hardware",3]}"#),
            "info[1]: must be a string"
        );
        assert!(problem(r#"{"info":["bios"]}"#).starts_with("info[0]: unknown category 'bios'"));
        assert_eq!(
            problem(r#"{"info":["os"],"force":true}"#),
            "force: is not a known field"
        );
        let max_age = "maxAgeSecs: must be a whole number of seconds from 0 to 31536000";
        for bad in ["-1", "1.5", "\"60\"", "null", "31536001"] {
            let body = format!(r#"{{"info":["os"],"maxAgeSecs":{bad}}}"#);
            assert_eq!(problem(&body), max_age, "{body}");
        }
        assert_eq!(
            problem(r#"{"info":[],"maxAgeSecs":-1,"force":1}"#),
            format!(
                "info: must name at least one category; {max_age}; force: is not a known field"
            )
        );
    }

    #[test]
    fn max_age_is_taken_in_whole_seconds_up_to_a_year() {
        let max_age = |body: &str| refresh_body(body.as_bytes()).map(|r| r.max_age);
        assert_eq!(max_age(r#"{"info":["os"]}"#), Ok(None));
        assert_eq!(
            max_age(r#"{"info":["os"],"maxAgeSecs":0}"#),
            Ok(Some(Duration::ZERO))
        );
        assert_eq!(
            max_age(r#"{"info":["os"],"maxAgeSecs":31536000}"#),
            Ok(Some(Duration::from_secs(MAX_AGE_SECS_LIMIT)))
        );
        // JSON Schema's integer: a number without a fraction, however written.
        assert_eq!(
            max_age(r#"{"info":["os"],"maxAgeSecs":329.0}"#),
            Ok(Some(Duration::from_secs(329)))
        );
        assert_eq!(
            max_age(r#"{"info":["os"],"maxAgeSecs":3.29e2}"#),
            Ok(Some(Duration::from_secs(329)))
        );
    }

    #[test]
    fn bulk_bodies_name_devices_or_a_filter() {
        let body = br#"{"info":["os"],"deviceIds":["a1","SN_2","a1"]}"#;
        assert_eq!(
            bulk_body(body).map(|r| r.target),
            Ok(BulkTarget::DeviceIds(vec![
                "a1".to_owned(),
                "SN_2".to_owned()
            ]))
        );
        let body = br#"{"info":["os"],"filter":{"state":"ACTIVE","tags":["lab"]}}"#;
        assert_eq!(
            bulk_body(body).map(|r| r.target),
            Ok(BulkTarget::Filter(DeviceFilter {
                state: Some(DeviceState::Active),
                tags: vec!["lab".to_owned()],
            }))
        );
        let fields = |body: &str| {
            bulk_body(body.as_bytes())
                .expect_err("invalid")
                .into_iter()
                .map(|p| p.field)
                .collect::<Vec<_>>()
        };
        assert_eq!(fields(r#"{"info":["os"]}"#), ["body"]);
        assert_eq!(
            fields(r#"{"info":["os"],"deviceIds":[],"filter":{}}"#),
            ["body"]
        );
        assert_eq!(fields(r#"{"info":["os"],"deviceIds":[]}"#), ["deviceIds"]);
        assert_eq!(
            fields(r#"{"info":["os"],"deviceIds":["ok","a b",7]}"#),
            ["deviceIds[1]", "deviceIds[2]"]
        );
        assert_eq!(
            fields(r#"{"info":["os"],"filter":{"state":"ON","tags":[""],"os":1}}"#),
            ["filter.os", "filter.state", "filter.tags[0]"]
        );
        assert_eq!(fields(r#"{"deviceIds":["a"]}"#), ["info"]);
        let too_many = format!(
            r#"{{"info":["os"],"deviceIds":[{}]}}"#,
            vec!["\"x\""; MAX_BATCH_DEVICES + 1].join(",")
        );
        assert_eq!(fields(&too_many), ["deviceIds"]);
        let all_bad = format!(
            r#"{{"info":["os"],"deviceIds":[{}]}}"#,
            vec!["1"; 100].join(",")
        );
        assert_eq!(fields(&all_bad).len(), MAX_LISTED_PROBLEMS + 1);
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        let mut headers = HeaderMap::new();
        assert_eq!(idempotency_key(&headers), Ok(None));
        headers.insert("idempotency-key", "abc-123".parse().expect("valid"));
        assert_eq!(idempotency_key(&headers), Ok(Some("abc-123".to_owned())));
        headers.insert("idempotency-key", "a b".parse().expect("valid"));
        assert!(idempotency_key(&headers).is_err());
        headers.insert("idempotency-key", "x".repeat(256).parse().expect("valid"));
        assert!(idempotency_key(&headers).is_err());
        headers.insert("idempotency-key", "first".parse().expect("valid"));
        headers.append("idempotency-key", "second".parse().expect("valid"));
        assert!(idempotency_key(&headers).is_err(), "two keys are ambiguous");
    }

    #[test]
    fn content_type_must_be_json() {
        let mut headers = HeaderMap::new();
        assert!(json_content_type(&headers).is_err());
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().expect("valid"));
        assert!(json_content_type(&headers).is_err());
        headers.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().expect("valid"),
        );
        assert!(json_content_type(&headers).is_ok());
        for refused in [
            "application/json; charset=utf-16",
            "application/json;charset=\"ISO-8859-1\"",
            "application/json; charset=utf-8; charset=utf-16",
        ] {
            headers.insert(header::CONTENT_TYPE, refused.parse().expect("valid"));
            assert!(json_content_type(&headers).is_err(), "{refused}");
        }
        headers.insert(
            header::CONTENT_TYPE,
            "Application/JSON; Charset=\"UTF-8\""
                .parse()
                .expect("valid"),
        );
        assert!(json_content_type(&headers).is_ok());
        headers.append(header::CONTENT_TYPE, "text/plain".parse().expect("valid"));
        assert!(json_content_type(&headers).is_err(), "two content types");
    }

    #[test]
    fn a_body_naming_a_field_twice_is_refused() {
        let problems =
            refresh_body(br#"{"info":["bios"],"info":["hardware"]}"#).expect_err("ambiguous");
        assert_eq!(problems[0].field, "body");
        assert!(problems[0].problem.contains("repeated"), "{problems:?}");
        assert!(refresh_body(br#"{"info":["hardware"],"info":["bios"]}"#).is_err());
        assert!(bulk_body(br#"{"info":["os"],"filter":{"tags":["a"],"tags":["b"]}}"#).is_err());
    }

    /// Property tests: the validators against the upstream patterns, and the body parsers
    /// against arbitrary input.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Whether `raw` matches `pattern`, one of the patterns the OpenAPI document publishes.
        fn documented(pattern: &str, raw: &str) -> bool {
            regex::Regex::new(pattern)
                .expect("a valid pattern")
                .is_match(raw)
        }

        // Strings at the patterns' edges (allowed characters with at most one a caller might
        // try instead, ids one character short or long, long slugs and device keys), and any
        // text at all.
        const ORGANIZATIONS: &str = concat!(
            "[a-fA-F0-9]{22,26}",
            "|[a-zA-Z0-9-]{0,12}[_./ %é]?[a-zA-Z0-9-]{0,12}",
            "|[a-zA-Z0-9-]{20,80}",
            "|\\PC{0,26}",
        );
        const DEVICES: &str =
            "[a-zA-Z0-9_]{0,12}[-./ %é]?[a-zA-Z0-9_]{0,12}|\\PC{0,26}|[a-zA-Z0-9_]{120,136}";
        const OBJECT_IDS: &str = "[a-fA-F0-9]{22,26}|[a-fA-F0-9]{0,12}[g-zG-Z ]?[a-fA-F0-9]{0,12}";
        const IDEMPOTENCY_KEYS: &str = "[!-~]{0,12}[ \t\u{80}é]?[!-~]{0,12}|[!-~]{250,260}";

        fn category_names() -> impl Strategy<Value = Vec<&'static str>> {
            let names: Vec<&'static str> = Category::ALL.iter().map(|c| c.as_str()).collect();
            proptest::collection::vec(proptest::sample::select(names), 1..12)
        }

        proptest! {
            #[test]
            fn organization_refs_are_exactly_the_upstream_pattern(raw in ORGANIZATIONS) {
                prop_assert_eq!(
                    organization_ref(&raw).is_ok(),
                    documented(ORGANIZATION_PATTERN, &raw)
                );
            }

            #[test]
            fn device_keys_are_exactly_the_upstream_pattern(raw in DEVICES) {
                prop_assert_eq!(device_key(&raw).is_ok(), documented(DEVICE_PATTERN, &raw));
            }

            #[test]
            fn object_ids_are_exactly_their_pattern(raw in OBJECT_IDS) {
                prop_assert_eq!(
                    object_id("jobId", &raw).is_ok(),
                    documented(OBJECT_ID_PATTERN, &raw)
                );
            }

            #[test]
            fn idempotency_keys_are_exactly_their_pattern(raw in IDEMPOTENCY_KEYS) {
                let mut headers = HeaderMap::new();
                let Ok(value) = header::HeaderValue::from_str(&raw) else {
                    // Not sendable as a header at all.
                    return Ok(());
                };
                headers.insert("idempotency-key", value);
                prop_assert_eq!(
                    idempotency_key(&headers).is_ok(),
                    documented(IDEMPOTENCY_KEY_PATTERN, &raw)
                );
            }

            #[test]
            fn any_bytes_get_an_answer_never_a_panic(
                body in proptest::collection::vec(any::<u8>(), 0..512),
            ) {
                let _ = refresh_body(&body);
                let _ = bulk_body(&body);
            }

            #[test]
            fn any_json_gets_an_answer_and_accepted_bodies_name_known_categories_once(
                body in any_json(),
            ) {
                let bytes = body.to_string().into_bytes();
                if let Ok(RefreshRequest { categories, .. }) = refresh_body(&bytes) {
                    let mut unique = categories.clone();
                    unique.sort_by_key(|c| c.as_str());
                    unique.dedup();
                    prop_assert!(!categories.is_empty());
                    prop_assert_eq!(unique.len(), categories.len());
                }
                let _ = bulk_body(&bytes);
            }

            #[test]
            fn known_categories_are_taken_once_each_in_the_order_first_named(
                names in category_names(),
            ) {
                let body = serde_json::json!({ "info": names }).to_string();
                let mut expected: Vec<Category> = Vec::new();
                for name in &names {
                    let category = Category::ALL.iter().copied().find(|c| c.as_str() == *name);
                    if let Some(category) = category.filter(|c| !expected.contains(c)) {
                        expected.push(category);
                    }
                }
                let categories = refresh_body(body.as_bytes()).map(|request| request.categories);
                prop_assert_eq!(categories, Ok(expected));
            }
        }

        /// JSON of any shape, a few levels deep, with the keys the parsers look for among
        /// random ones.
        fn any_json() -> impl Strategy<Value = Value> {
            let key = prop_oneof![
                Just("info".to_owned()),
                Just("deviceIds".to_owned()),
                Just("filter".to_owned()),
                Just("state".to_owned()),
                Just("tags".to_owned()),
                "[a-z]{1,8}",
            ];
            let category = proptest::sample::select(Category::ALL.to_vec());
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                "\\PC{0,12}".prop_map(Value::from),
                category.prop_map(|c| Value::from(c.as_str())),
            ];
            leaf.prop_recursive(3, 48, 8, move |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::from),
                    proptest::collection::btree_map(key.clone(), inner, 0..6)
                        .prop_map(|map| Value::Object(map.into_iter().collect())),
                ]
            })
        }
    }
}
