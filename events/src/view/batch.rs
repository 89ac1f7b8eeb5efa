//! A batch as `GET …/refresh-batches/{batchId}` shows it and `refresh.batch.finished` carries it.

use super::rfc3339;
use refresh_shared::{
    Category,
    batch::DeviceOutcome,
    store::{self, BatchRecord, BatchState},
};
use serde::{Deserialize, Serialize};

/// A batch as `GET …/refresh-batches/{batchId}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BatchView {
    pub id: String,
    pub organization_id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::schema::BatchState))]
    pub state: BatchState,
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<crate::schema::Category>))]
    pub categories: Vec<Category>,
    /// As submitted: a category reported this recently is not refreshed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    pub total: u64,
    /// Share of `total` settled or skipped, 0 to 1.
    pub progress: f64,
    pub counts: BatchCounts,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// When it was canceled (`DELETE …/refresh-batches/{batchId}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canceled_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where each of a batch's devices is; the numbers add up to `total`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BatchCounts {
    /// Not yet expanded into a job.
    pub pending: u64,
    /// Has a job that is not finished.
    pub queued: u64,
    /// Every category reported by the device.
    pub reported: u64,
    pub partial: u64,
    pub failed: u64,
    pub expired: u64,
    /// Pushed, and nothing reported by the deadline.
    pub unreported: u64,
    /// Canceled before every category ended; for a canceled batch, also the devices it had
    /// not reached.
    #[serde(default)]
    pub canceled: u64,
    pub skipped: Skipped,
}

impl BatchCounts {
    pub fn sum(&self) -> u64 {
        let Skipped {
            not_found,
            not_active,
            coalesced,
        } = self.skipped;
        self.pending
            + self.queued
            + self.reported
            + self.partial
            + self.failed
            + self.expired
            + self.unreported
            + self.canceled
            + not_found
            + not_active
            + coalesced
    }
}

/// Devices the batch did not refresh, by reason.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Skipped {
    pub not_found: u64,
    pub not_active: u64,
    /// Every category asked for was another job's, or reported within the skip window or
    /// `maxAgeSecs`, when the device's job ran (or the device was named twice).
    pub coalesced: u64,
}

impl From<&BatchRecord> for BatchView {
    fn from(batch: &BatchRecord) -> BatchView {
        let outcome = |o| batch.outcomes.get(&o).copied().unwrap_or(0);
        let settled: u64 = batch.outcomes.values().sum();
        // A chunk's jobs may settle before the chunk's checkpoint counts them accepted: a
        // settled device was accepted, whatever the checkpoint says yet.
        let accepted = batch.accepted.max(settled);
        let store::Skipped {
            not_found,
            not_active,
            coalesced,
        } = batch.skipped;
        let unreached = batch.total.saturating_sub(accepted + batch.skipped.total());
        // A canceled batch reaches no more devices: those it had not are canceled with it.
        let (pending, never) = match batch.canceled_at {
            Some(_) => (0, unreached),
            None => (unreached, 0),
        };
        // A job that found every category another job's when it ran counts as skipped.
        let coalesced_when_run = outcome(DeviceOutcome::Coalesced);
        let counts = BatchCounts {
            pending,
            queued: accepted - settled,
            reported: outcome(DeviceOutcome::Reported),
            partial: outcome(DeviceOutcome::Partial),
            failed: outcome(DeviceOutcome::Failed),
            expired: outcome(DeviceOutcome::Expired),
            unreported: outcome(DeviceOutcome::Unreported),
            canceled: outcome(DeviceOutcome::Canceled) + never,
            skipped: Skipped {
                not_found,
                not_active,
                coalesced: coalesced + coalesced_when_run,
            },
        };
        let done = settled + batch.skipped.total() + never;
        BatchView {
            id: batch.id.to_hex(),
            organization_id: batch.organization.to_hex(),
            state: batch.state(),
            categories: batch.categories.clone(),
            max_age_secs: batch.max_age_secs,
            total: batch.total,
            progress: if batch.total == 0 {
                1.0
            } else {
                done as f64 / batch.total as f64
            },
            counts,
            created_at: rfc3339(batch.created_at),
            started_at: batch.started_at.map(rfc3339),
            finished_at: batch.finished_at.map(rfc3339),
            canceled_at: batch.canceled_at.map(rfc3339),
            error: batch.failure.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;

    #[test]
    fn a_job_coalesced_when_it_ran_counts_as_skipped_and_the_counts_add_up_to_the_total() {
        let mut batch = BatchRecord::new(
            ObjectId::new(),
            ObjectId::new(),
            vec![Category::Hardware],
            None,
            None,
            10,
        );
        batch.accepted = 6;
        batch.skipped.not_found = 1;
        batch.skipped.coalesced = 1;
        batch.outcomes.insert(DeviceOutcome::Reported, 3);
        batch.outcomes.insert(DeviceOutcome::Coalesced, 2);

        let counts = BatchView::from(&batch).counts;
        let expected = BatchCounts {
            pending: 2,
            queued: 1,
            reported: 3,
            skipped: Skipped {
                not_found: 1,
                not_active: 0,
                coalesced: 3,
            },
            ..BatchCounts::default()
        };
        assert_eq!(counts, expected);
        assert_eq!(counts.sum(), batch.total);
    }
}
