//! Bulk refresh batches: what a batch asks for, the message that has a worker expand it, and how
//! one device's job counts in the batch's totals.

use crate::{
    device::DeviceState,
    job::{CategoryState, hex_object_id},
    trace::TraceParent,
};
use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use strum::EnumIter;

/// Most devices one batch may name (`deviceIds`).
pub const MAX_BATCH_DEVICES: usize = 100_000;

/// Version of [`ExpandBatch`] on the wire.
pub const EXPAND_MESSAGE_VERSION: u16 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<DeviceState>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// The message on the batches queue: "expand this batch into jobs". Whoever holds it expands
/// from the batch's last checkpoint; if it dies, the broker hands the message to the next worker,
/// which resumes there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExpandBatch {
    pub version: u16,
    #[serde(with = "hex_object_id")]
    pub batch_id: ObjectId,
    /// The batch request's trace context, in the message's `traceparent` header: the batch's
    /// jobs carry it on.
    #[serde(skip)]
    pub trace: Option<TraceParent>,
}

impl ExpandBatch {
    pub fn new(batch_id: ObjectId, trace: Option<TraceParent>) -> ExpandBatch {
        ExpandBatch {
            version: EXPAND_MESSAGE_VERSION,
            batch_id,
            trace,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // A number and an id cannot fail to serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(payload: &[u8]) -> Result<ExpandBatch, ExpandDecodeError> {
        let message: ExpandBatch = serde_json::from_slice(payload)?;
        if message.version == EXPAND_MESSAGE_VERSION {
            Ok(message)
        } else {
            Err(ExpandDecodeError::UnsupportedVersion(message.version))
        }
    }
}

/// Why an expansion request could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExpandDecodeError {
    #[error("expansion request is not valid: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(
        "expansion request version {0} is not supported (this build reads {EXPAND_MESSAGE_VERSION})"
    )]
    UnsupportedVersion(u16),
}

/// How one device of a batch ended, once every category of its job is settled.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, EnumIter,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceOutcome {
    /// Every category reported by the device. (Outcomes stored before the report-back loop
    /// existed read `pushed`: they count here.)
    #[serde(alias = "pushed")]
    Reported,
    /// Some categories reported, some not.
    Partial,
    /// Nothing reported, and at least one category failed.
    Failed,
    /// Nothing reported, every category expired.
    Expired,
    /// Every category pushed, none reported by its deadline.
    Unreported,
    /// The job was canceled before every category ended.
    Canceled,
    /// Every category was another job's, or reported recently, when the job first ran (its
    /// claim on the device is made then): the device counts as skipped, `coalesced`. The job
    /// is kept, with no categories, for the batch's counts and never shown.
    Coalesced,
}

impl DeviceOutcome {
    pub const ALL: [DeviceOutcome; 7] = [
        DeviceOutcome::Reported,
        DeviceOutcome::Partial,
        DeviceOutcome::Failed,
        DeviceOutcome::Expired,
        DeviceOutcome::Unreported,
        DeviceOutcome::Canceled,
        DeviceOutcome::Coalesced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviceOutcome::Reported => "reported",
            DeviceOutcome::Partial => "partial",
            DeviceOutcome::Failed => "failed",
            DeviceOutcome::Expired => "expired",
            DeviceOutcome::Unreported => "unreported",
            DeviceOutcome::Canceled => "canceled",
            DeviceOutcome::Coalesced => "coalesced",
        }
    }

    /// The outcome of a job whose categories are in `states`; `None` while any is unsettled.
    pub fn of(states: impl IntoIterator<Item = CategoryState>) -> Option<DeviceOutcome> {
        let (mut total, mut reported, mut expired, mut unreported) = (0, 0, 0, 0);
        let mut canceled = false;
        for state in states {
            match state {
                CategoryState::Reported => reported += 1,
                CategoryState::Expired => expired += 1,
                CategoryState::Unreported => unreported += 1,
                CategoryState::Canceled => canceled = true,
                CategoryState::Failed => {}
                CategoryState::Queued
                | CategoryState::Pushing
                | CategoryState::Pushed
                | CategoryState::Retrying => {
                    return None;
                }
            }
            total += 1;
        }
        Some(match () {
            () if total == 0 => return None,
            () if canceled => DeviceOutcome::Canceled,
            () if reported == total => DeviceOutcome::Reported,
            () if reported > 0 => DeviceOutcome::Partial,
            () if expired == total => DeviceOutcome::Expired,
            () if unreported == total => DeviceOutcome::Unreported,
            () => DeviceOutcome::Failed,
        })
    }
}

/// Why a device named by a batch got no job of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// No device of the organization has that id, IMEI or serial (or it is deleted).
    NotFound,
    /// PROVISIONING or UNKNOWN: it takes no commands.
    NotActive,
    /// The device was named before in the batch (in the same chunk, or with a job an
    /// interrupted expansion made under another name). A device whose categories another job
    /// holds is found so when its own job runs: [`DeviceOutcome::Coalesced`].
    Coalesced,
}

#[cfg(test)]
mod tests {
    use super::*;
    use CategoryState::*;

    #[test]
    fn a_device_outcome_exists_only_once_every_category_is_settled() {
        assert_eq!(
            DeviceOutcome::of([Reported, Reported]),
            Some(DeviceOutcome::Reported)
        );
        assert_eq!(
            DeviceOutcome::of([Reported, Failed]),
            Some(DeviceOutcome::Partial)
        );
        assert_eq!(
            DeviceOutcome::of([Unreported, Unreported]),
            Some(DeviceOutcome::Unreported)
        );
        assert_eq!(
            DeviceOutcome::of([Unreported, Expired]),
            Some(DeviceOutcome::Failed)
        );
        assert_eq!(DeviceOutcome::of([Reported, Pushed]), None);
        assert_eq!(
            DeviceOutcome::of([Expired, Failed]),
            Some(DeviceOutcome::Failed)
        );
        assert_eq!(
            DeviceOutcome::of([Expired, Expired]),
            Some(DeviceOutcome::Expired)
        );
        assert_eq!(DeviceOutcome::of([Reported, Retrying]), None);
        assert_eq!(DeviceOutcome::of([Queued]), None);
        assert_eq!(DeviceOutcome::of([]), None);
        assert_eq!(
            DeviceOutcome::of([Reported, Canceled]),
            Some(DeviceOutcome::Canceled)
        );
        assert_eq!(DeviceOutcome::of([Canceled, Pushed]), None);
    }

    #[test]
    fn the_expand_message_round_trips() {
        let message = ExpandBatch::new(ObjectId::new(), None);
        assert_eq!(ExpandBatch::decode(&message.encode()).ok(), Some(message));
        assert!(
            ExpandBatch::decode(br#"{"version":2,"batchId":"65a1b2c3d4e5f6a7b8c9d0e1"}"#).is_err()
        );
    }
}
