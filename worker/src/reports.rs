//! Applying a device's report: its inventory stored (never over a newer one), the job's
//! categories `reported`, the device's claims on them freed. Reports are applied in groups
//! (group commit: [`Store::apply_reports`] makes each step of a whole group one command), each
//! answered only after its group's writes are acknowledged. Every write is guarded, so a
//! redelivered report applies once in effect.

use crate::{
    dispatch::{Dispatcher, Halt},
    group::{GroupCommit, Limits},
};
use bson::DateTime;
use futures::FutureExt;
use refresh_shared::{
    Category,
    job::Lane,
    metric,
    report::DeviceReport,
    store::{JobRecord, ReportApplied, Store, StoreError},
};

/// Reports being applied together.
pub type ReportGroups = GroupCommit<DeviceReport, Result<ReportApplied, StoreError>>;

/// Most bytes of report values written in one group: a command stays far below the 16 MiB a
/// server takes (a larger report goes alone; the api bounds one to 8 MiB).
const GROUP_BYTES: usize = 4 * 1024 * 1024;
/// Groups written at once: enough to keep the database busy while a group's answer travels
/// back, few enough that groups grow under load.
const GROUP_FLUSHES: usize = 4;

/// Starts applying reports in groups of up to `max_reports`.
pub fn report_groups(store: Store, max_reports: usize) -> ReportGroups {
    let limits = Limits {
        max_items: max_reports,
        max_weight: GROUP_BYTES,
        flushes: GROUP_FLUSHES,
    };
    GroupCommit::of_store(limits, store, |store, reports| {
        async move { store.apply_reports(&reports).await }.boxed()
    })
}

impl Dispatcher {
    pub async fn apply_report(&self, report: &DeviceReport) -> Result<(), Halt> {
        let applied = self
            .durably(|| async {
                self.reports
                    .submit(report.clone(), report.size())
                    .await
                    .unwrap_or_else(|stopped| Err(stopped.into()))
            })
            .await?;
        if let Some(job) = &applied.job {
            observe_latency(job, &applied.reported);
            // Guarded, and a no-op until every category is settled: made whenever the job is
            // in a batch, so a report redelivered after a crash still counts the job.
            if job.lane == Lane::Bulk {
                let store = &self.store;
                self.durably(|| store.record_outcome_of(job)).await?;
            }
            self.announce_job(job.organization, job.id).await?;
        }
        metrics::counter!(metric::REPORTS_APPLIED, "source" => report.source.as_str()).increment(1);
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
