//! Turns path parameters and bodies into typed values, or into the list of what is wrong.

use crate::error::FieldProblem;
use axum::http::{HeaderMap, header};
use bson::oid::ObjectId;
use refresh_shared::Category;
use serde_json::Value;

/// `organizationId`: `^(([a-fA-F0-9]{24})|([a-zA-Z0-9\-]{3,}))$` (upstream page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrganizationRef {
    Id(ObjectId),
    Slug(String),
}

pub fn organization_ref(raw: &str) -> Result<OrganizationRef, FieldProblem> {
    if let Ok(id) = ObjectId::parse_str(raw) {
        return Ok(OrganizationRef::Id(id));
    }
    if raw.len() >= 3 && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        Ok(OrganizationRef::Slug(raw.to_owned()))
    } else {
        Err(FieldProblem::new(
            "organizationId",
            "must be a 24-hex id or a slug of at least 3 letters, digits or '-'",
        ))
    }
}

/// `winDeviceId`: `^(([a-fA-F0-9]{24})|(\w{1,}))$` (upstream page): an id, IMEI or serial.
pub fn device_key(raw: &str) -> Result<&str, FieldProblem> {
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(raw)
    } else {
        Err(FieldProblem::new(
            "winDeviceId",
            "must be a 24-hex id, an IMEI or a serial number (letters, digits, '_')",
        ))
    }
}

pub fn object_id(field: &str, raw: &str) -> Result<ObjectId, FieldProblem> {
    ObjectId::parse_str(raw).map_err(|_| FieldProblem::new(field, "must be a 24-hex id"))
}

/// Checks the request is `application/json` (any parameters, such as a charset, allowed).
pub fn json_content_type(headers: &HeaderMap) -> Result<(), FieldProblem> {
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    match essence {
        Some(essence) if essence.eq_ignore_ascii_case("application/json") => Ok(()),
        _ => Err(FieldProblem::new(
            "Content-Type",
            "must be application/json",
        )),
    }
}

/// Parses `{"info": [...]}` into its categories, duplicates merged, in the order first named.
pub fn refresh_body(body: &[u8]) -> Result<Vec<Category>, Vec<FieldProblem>> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| vec![FieldProblem::new("body", format!("is not valid JSON: {e}"))])?;
    let Value::Object(mut fields) = value else {
        return Err(vec![FieldProblem::new("body", "must be a JSON object")]);
    };
    let mut problems: Vec<FieldProblem> = fields
        .keys()
        .filter(|key| *key != "info")
        .map(|key| FieldProblem::new(key.as_str(), "is not a known field"))
        .collect();
    let categories = match fields.remove("info") {
        None => Err(FieldProblem::new("info", "is required")),
        Some(Value::Array(items)) if items.is_empty() => {
            Err(FieldProblem::new("info", "must name at least one category"))
        }
        Some(Value::Array(items)) => categories(&items),
        Some(_) => Err(FieldProblem::new(
            "info",
            "must be an array of category names",
        )),
    };
    match categories {
        Ok(categories) if problems.is_empty() => Ok(categories),
        Ok(_) => Err(problems),
        Err(problem) => {
            problems.insert(0, problem);
            Err(problems)
        }
    }
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
    }

    #[test]
    fn the_upstream_example_body_parses_and_duplicates_merge() {
        let body = br#"{"info":["hardware","applications","certificates","hardware"]}"#;
        assert_eq!(
            refresh_body(body),
            Ok(vec![
                Category::Hardware,
                Category::Applications,
                Category::Certificates
            ])
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
    }
}
