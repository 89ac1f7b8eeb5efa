//! A device's report: what it read for each category, as the api publishes it to
//! `refresh.reports` and the worker applies it (CONTRACT §5).

use crate::{Category, job::hex_object_id};
use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use strum::EnumIter;
use time::OffsetDateTime;

/// Version of [`DeviceReport`] on the wire; a consumer dead-letters versions it does not know.
pub const REPORT_MESSAGE_VERSION: u16 = 1;
/// Longest OMA-URI a report may name.
pub const MAX_URI_CHARS: usize = 512;
/// Largest value a report may carry for one node.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// Who sent a report: the device agent, or the device's OMA-DM client in a management session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, EnumIter)]
#[serde(rename_all = "lowercase")]
pub enum ReportSource {
    Agent,
    Omadm,
}

impl ReportSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportSource::Agent => "agent",
            ReportSource::Omadm => "omadm",
        }
    }
}

/// What the device read for one category: node values, and the nodes it could not read with
/// the status it got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoryReport {
    pub nodes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, String>,
}

/// The message on `refresh.reports`. It carries the device's own data, checked by the api
/// before it was published, and checked again by the worker: the queue is not trusted more
/// than the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceReport {
    pub version: u16,
    #[serde(with = "hex_object_id")]
    pub organization_id: ObjectId,
    #[serde(with = "hex_object_id")]
    pub device_id: ObjectId,
    /// The refresh job this answers; none for a report the device sent on its own.
    #[serde(default, with = "optional_hex_object_id")]
    pub job_id: Option<ObjectId>,
    /// When the device read the values: an older report never overwrites a newer one.
    #[serde(with = "time::serde::rfc3339")]
    pub collected_at: OffsetDateTime,
    /// When the api took it.
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub source: ReportSource,
    pub categories: BTreeMap<Category, CategoryReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportDecodeError {
    #[error("report message is not valid: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(
        "report message version {0} is not supported (this build reads {REPORT_MESSAGE_VERSION})"
    )]
    UnsupportedVersion(u16),
    #[error("report message is not acceptable: {0}")]
    Refused(String),
}

impl DeviceReport {
    pub fn encode(&self) -> Vec<u8> {
        // Ids, timestamps and string maps cannot fail to serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(payload: &[u8]) -> Result<DeviceReport, ReportDecodeError> {
        let report: DeviceReport = serde_json::from_slice(payload)?;
        if report.version != REPORT_MESSAGE_VERSION {
            return Err(ReportDecodeError::UnsupportedVersion(report.version));
        }
        if let Some((field, problem)) = report.problems().into_iter().next() {
            return Err(ReportDecodeError::Refused(format!("{field}: {problem}")));
        }
        Ok(report)
    }

    /// About how many bytes the report's values take: its weight in a group of writes.
    pub fn size(&self) -> usize {
        self.categories
            .values()
            .flat_map(|report| report.nodes.iter().chain(&report.errors))
            .map(|(uri, value)| uri.len() + value.len())
            .sum()
    }

    /// Everything wrong with the report's content, as (field, problem): the one set of rules
    /// the api answers 400 by and the worker dead-letters by.
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.categories.is_empty() {
            problems.push((
                "categories".to_owned(),
                "must name at least one category".to_owned(),
            ));
        }
        for (category, report) in &self.categories {
            let field = |part: &str| format!("categories.{category}.{part}");
            for (uri, value) in &report.nodes {
                if let Some(problem) = uri_problem(uri) {
                    problems.push((field("nodes"), problem));
                }
                if value.len() > MAX_VALUE_BYTES {
                    problems.push((
                        field("nodes"),
                        format!("the value of {uri} is over {MAX_VALUE_BYTES} bytes"),
                    ));
                }
            }
            for (uri, status) in &report.errors {
                if let Some(problem) = uri_problem(uri) {
                    problems.push((field("errors"), problem));
                }
                if status.len() > 16 {
                    problems.push((
                        field("errors"),
                        format!("the status of {uri} is not a status"),
                    ));
                }
            }
        }
        problems
    }
}

/// What is wrong with `uri` as an OMA-URI a report may name, if anything.
fn uri_problem(uri: &str) -> Option<String> {
    if !uri.starts_with("./") {
        Some(format!("{} must start with './'", shorten(uri)))
    } else if uri.chars().count() > MAX_URI_CHARS {
        Some(format!(
            "{} is over {MAX_URI_CHARS} characters",
            shorten(uri)
        ))
    } else {
        None
    }
}

/// At most the first 40 characters of something a device sent, for an error message.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((end, _)) => format!("'{}…'", &text[..end]),
        None => format!("'{text}'"),
    }
}

/// Serde for an optional [`ObjectId`] as its 24-hex string.
mod optional_hex_object_id {
    use bson::oid::ObjectId;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(
        id: &Option<ObjectId>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => serializer.serialize_some(&id.to_hex()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<ObjectId>, D::Error> {
        Option::<&str>::deserialize(deserializer)?
            .map(|hex| ObjectId::parse_str(hex).map_err(D::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> DeviceReport {
        let nodes = Category::Os
            .nodes()
            .map(|uri| (uri.to_owned(), "x".to_owned()))
            .collect();
        DeviceReport {
            version: REPORT_MESSAGE_VERSION,
            organization_id: ObjectId::new(),
            device_id: ObjectId::new(),
            job_id: Some(ObjectId::new()),
            collected_at: OffsetDateTime::UNIX_EPOCH,
            received_at: OffsetDateTime::UNIX_EPOCH,
            source: ReportSource::Agent,
            categories: BTreeMap::from([(
                Category::Os,
                CategoryReport {
                    nodes,
                    errors: BTreeMap::new(),
                },
            )]),
        }
    }

    #[test]
    fn a_report_round_trips_with_or_without_a_job() {
        let with = report();
        assert_eq!(
            DeviceReport::decode(&with.encode()).ok(),
            Some(with.clone())
        );
        let without = DeviceReport {
            job_id: None,
            ..with
        };
        assert_eq!(DeviceReport::decode(&without.encode()).ok(), Some(without));
    }

    #[test]
    fn bad_uris_values_and_versions_are_refused() {
        let mut bad = report();
        let os = bad.categories.get_mut(&Category::Os).expect("os");
        os.nodes.insert("DevDetail/SwV".into(), "1".into());
        os.nodes
            .insert(format!("./{}", "a".repeat(MAX_URI_CHARS)), "1".into());
        os.nodes
            .insert("./big".into(), "v".repeat(MAX_VALUE_BYTES + 1));
        assert_eq!(bad.problems().len(), 3, "{:?}", bad.problems());
        assert!(matches!(
            DeviceReport::decode(&bad.encode()),
            Err(ReportDecodeError::Refused(_))
        ));
        let future = DeviceReport {
            version: 9,
            ..report()
        };
        assert!(matches!(
            DeviceReport::decode(&future.encode()),
            Err(ReportDecodeError::UnsupportedVersion(9))
        ));
        let empty = DeviceReport {
            categories: BTreeMap::new(),
            ..report()
        };
        assert!(DeviceReport::decode(&empty.encode()).is_err());
        assert!(DeviceReport::decode(b"[1,2]").is_err());
    }
}
