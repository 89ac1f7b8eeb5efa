//! Applying a device's report: its inventory stored (never over a newer one), the job's
//! categories `reported`, the device's claims on them freed. Every write is guarded, so a
//! redelivered report applies once in effect.

use crate::dispatch::{Dispatcher, Halt, release};
use bson::{DateTime, oid::ObjectId};
use refresh_shared::{Category, job::Lane, metric, report::DeviceReport, store::JobRecord};

impl Dispatcher {
    pub async fn apply_report(&self, report: &DeviceReport) -> Result<(), Halt> {
        let store = &self.store;
        self.durably(|| store.record_inventory(report)).await?;
        if let Some(job) = report.job_id {
            self.report_job(report, job).await?;
            self.announce_job(report.organization_id, job).await?;
        }
        metrics::counter!(metric::REPORTS_APPLIED, "source" => report.source.as_str()).increment(1);
        Ok(())
    }

    /// Ends the job's categories the report carries as `reported`.
    async fn report_job(&self, report: &DeviceReport, job: ObjectId) -> Result<(), Halt> {
        let store = &self.store;
        let (organization, device) = (report.organization_id, report.device_id);
        let categories: Vec<Category> = report.categories.keys().copied().collect();
        if categories.is_empty() {
            return Ok(());
        }
        // The device first (as when any category ends): the skip window counts from now. The
        // write is guarded by the job's claim, so a report of an old job frees nothing a newer
        // job holds.
        let now = Some(DateTime::now());
        release(self, organization, device, &categories, job, now).await?;
        // One write for them all, the usual case; one at a time when some had ended already
        // (or this is a redelivery).
        let (mut reported, mut record) = (Vec::new(), None);
        if let Some(after) = self
            .durably(|| store.record_reported(report, job, &categories))
            .await?
        {
            reported = categories.clone();
            record = Some(after);
        } else if categories.len() > 1 {
            for &category in &categories {
                let single = std::slice::from_ref(&category);
                if let Some(after) = self
                    .durably(|| store.record_reported(report, job, single))
                    .await?
                {
                    reported.push(category);
                    record = Some(after);
                }
            }
        }
        let Some(record) = record else {
            return Ok(());
        };
        observe_latency(&record, &reported);
        if record.lane == Lane::Bulk {
            self.durably(|| store.record_outcome(job)).await?;
        }
        Ok(())
    }
}

/// Records how long after its push each newly reported category was reported (a category
/// reported before its push was recorded is observed when the push is, in `dispatch`).
fn observe_latency(job: &JobRecord, reported: &[Category]) {
    for category in reported {
        let Some(record) = job.categories.get(category) else {
            continue;
        };
        if let (Some(pushed), Some(reported)) = (record.pushed_at, record.reported_at) {
            observe_report_latency(pushed, reported);
        }
    }
}

/// One category's time from push to report.
pub(crate) fn observe_report_latency(pushed: DateTime, reported: DateTime) {
    let millis = reported.timestamp_millis() - pushed.timestamp_millis();
    metrics::histogram!(metric::REPORT_LATENCY).record(millis.max(0) as f64 / 1000.0);
}
