//! The report deadline: when categories are pushed, a message waits out `REPORT_DEADLINE_SECS`
//! in a TTL queue (no consumer holds it meanwhile), then a worker checks whether the device has
//! reported them, and pushes them again or ends them `unreported`.

use crate::{
    Category,
    job::{Lane, hex_object_id},
    trace::TraceParent,
};
use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};

/// Version of [`ReportDeadline`] on the wire.
pub const DEADLINE_MESSAGE_VERSION: u16 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReportDeadline {
    pub version: u16,
    #[serde(with = "hex_object_id")]
    pub job_id: ObjectId,
    #[serde(with = "hex_object_id")]
    pub organization_id: ObjectId,
    #[serde(with = "hex_object_id")]
    pub device_id: ObjectId,
    pub lane: Lane,
    pub categories: Vec<Category>,
    /// Pushes made after the first, because earlier deadlines passed without a report.
    pub repush: u32,
    /// The refresh's trace context, in the message's `traceparent` header.
    #[serde(skip)]
    pub trace: Option<TraceParent>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadlineDecodeError {
    #[error("deadline message is not valid: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(
        "deadline message version {0} is not supported (this build reads {DEADLINE_MESSAGE_VERSION})"
    )]
    UnsupportedVersion(u16),
    #[error("deadline message names no category, or more than there are")]
    Categories,
}

impl ReportDeadline {
    pub fn encode(&self) -> Vec<u8> {
        // Ids, enums and numbers cannot fail to serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(payload: &[u8]) -> Result<ReportDeadline, DeadlineDecodeError> {
        let deadline: ReportDeadline = serde_json::from_slice(payload)?;
        if deadline.version != DEADLINE_MESSAGE_VERSION {
            return Err(DeadlineDecodeError::UnsupportedVersion(deadline.version));
        }
        if deadline.categories.is_empty() || deadline.categories.len() > Category::ALL.len() {
            return Err(DeadlineDecodeError::Categories);
        }
        Ok(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_round_trips_and_bad_ones_are_refused() {
        let deadline = ReportDeadline {
            version: DEADLINE_MESSAGE_VERSION,
            job_id: ObjectId::new(),
            organization_id: ObjectId::new(),
            device_id: ObjectId::new(),
            lane: Lane::Bulk,
            categories: vec![Category::Os],
            repush: 1,
            trace: None,
        };
        assert_eq!(
            ReportDeadline::decode(&deadline.encode()).ok(),
            Some(deadline.clone())
        );
        let none = ReportDeadline {
            categories: Vec::new(),
            ..deadline.clone()
        };
        assert!(ReportDeadline::decode(&none.encode()).is_err());
        let flood = ReportDeadline {
            categories: vec![Category::Os; 7],
            ..deadline
        };
        assert!(ReportDeadline::decode(&flood.encode()).is_err());
    }
}
