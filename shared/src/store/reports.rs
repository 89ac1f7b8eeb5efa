//! Applying device reports, many at once: each step of every report in one command (the
//! inventory upserts, the devices' claims freed, the jobs' categories recorded `reported`),
//! then the jobs read back in one query. Every statement is guarded as a single report's
//! would be, so a group applies exactly what its reports one by one would, and applying a
//! group again (a redelivery, a retry after an outage) changes nothing.

use super::{DEVICES, DUPLICATE_KEY, INVENTORY, JOBS, JobRecord, Store, StoreError, tenant};
use crate::{
    Category, job::CategoryState, report::DeviceReport, store::inventory::InventoryRecord,
};
use bson::{DateTime, Document, doc, oid::ObjectId};
use futures::TryStreamExt;
use mongodb::error::IndexedWriteError;
use std::{
    collections::HashSet,
    sync::atomic::{AtomicI64, Ordering},
};

/// The time a group stamps its writes with: now, and later than any earlier group of this
/// process stamped, so that a category carrying it was recorded by this group.
fn group_time() -> DateTime {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = DateTime::now().timestamp_millis();
    let previous = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .unwrap_or(now);
    DateTime::from_millis(now.max(previous + 1))
}

/// What applying one report did.
#[derive(Debug, Clone, Default)]
pub struct ReportApplied {
    /// The report's job as it is after the report, when it names one that exists.
    pub job: Option<JobRecord>,
    /// The job's categories this application recorded `reported` (not those a redelivery of
    /// the report, or another report, had).
    pub reported: Vec<Category>,
}

/// Statements of one command, and which report each came from.
#[derive(Default)]
struct Statements {
    statements: Vec<Document>,
    reports: Vec<usize>,
}

impl Statements {
    fn push(&mut self, report: usize, statement: Document) {
        self.statements.push(statement);
        self.reports.push(report);
    }
}

impl Store {
    /// Applies `reports` together; answers each one's outcome, in order. The outer error is
    /// the group's (the database away): nothing is known of any report then, and applying
    /// them again is safe.
    pub async fn apply_reports(
        &self,
        reports: &[DeviceReport],
    ) -> Result<Vec<Result<ReportApplied, StoreError>>, StoreError> {
        let now = group_time();
        let mut outcomes: Vec<Result<ReportApplied, StoreError>> =
            vec![Ok(ReportApplied::default()); reports.len()];
        // The inventory first, then the device (the skip window counts from now), then the
        // job: whoever sees the job reported also sees the device and its inventory so.
        let inventory = inventory_statements(reports, now)?;
        self.update_group(INVENTORY, inventory, &mut outcomes, true)
            .await?;
        let (claims, reported) = job_statements(reports, &outcomes, now);
        self.update_group(DEVICES, claims, &mut outcomes, false)
            .await?;
        self.update_group(JOBS, reported, &mut outcomes, false)
            .await?;
        let jobs = self.reported_jobs(reports).await?;
        // Recorded by this group: stamped with its time and the report's source, by the first
        // of its reports that names the category (statements apply in order).
        let mut attributed = HashSet::new();
        for ((report, outcome), job) in reports.iter().zip(&mut outcomes).zip(jobs) {
            let (Ok(applied), Some(job)) = (outcome, job) else {
                continue;
            };
            applied.reported = report
                .categories
                .keys()
                .copied()
                .filter(|&category| {
                    job.categories.get(&category).is_some_and(|record| {
                        record.state == CategoryState::Reported
                            && record.reported_at == Some(now)
                            && record.report_source == Some(report.source)
                    }) && attributed.insert((job.id, category))
                })
                .collect();
            applied.job = Some(job);
        }
        Ok(outcomes)
    }

    /// Runs `statements` in one command; a refused statement fails its report (a duplicate
    /// key is no failure where `duplicates_expected`: an upsert that found a newer document).
    async fn update_group(
        &self,
        collection: &str,
        statements: Statements,
        outcomes: &mut [Result<ReportApplied, StoreError>],
        duplicates_expected: bool,
    ) -> Result<(), StoreError> {
        let refused = self.update_each(collection, statements.statements).await?;
        for IndexedWriteError {
            index,
            code,
            message,
            ..
        } in refused
        {
            if duplicates_expected && code == DUPLICATE_KEY {
                continue;
            }
            let Some(&report) = statements.reports.get(index) else {
                continue;
            };
            outcomes[report] = Err(StoreError::Refused { code, message });
        }
        Ok(())
    }

    /// Each report's job, read in one query (within the reports' organizations, each job
    /// matched to its report's organization and device); `None` for a report without a job.
    async fn reported_jobs(
        &self,
        reports: &[DeviceReport],
    ) -> Result<Vec<Option<JobRecord>>, StoreError> {
        let ids: Vec<ObjectId> = reports.iter().filter_map(|report| report.job_id).collect();
        if ids.is_empty() {
            return Ok(vec![None; reports.len()]);
        }
        let mut organizations: Vec<ObjectId> = reports
            .iter()
            .map(|report| report.organization_id)
            .collect();
        organizations.sort_unstable();
        organizations.dedup();
        let filter = doc! {
            "_id": { "$in": ids },
            "organization": { "$in": organizations },
        };
        let found: Vec<JobRecord> = self.jobs.find(filter).await?.try_collect().await?;
        Ok(reports
            .iter()
            .map(|report| {
                found
                    .iter()
                    .find(|job| {
                        Some(job.id) == report.job_id
                            && job.organization == report.organization_id
                            && job.device == report.device_id
                    })
                    .cloned()
            })
            .collect())
    }
}

/// One upsert per category of every report, storing it unless a report collected at the same
/// time or later is stored: the filter matches only an older stored report, and when a newer
/// (or the same) one is stored the upsert's insert hits the unique (device, category) index.
fn inventory_statements(reports: &[DeviceReport], now: DateTime) -> Result<Statements, StoreError> {
    let mut statements = Statements::default();
    for (index, report) in reports.iter().enumerate() {
        let collected_at = DateTime::from_millis(
            i64::try_from(report.collected_at.unix_timestamp_nanos() / 1_000_000)
                .unwrap_or(i64::MAX),
        );
        for (&category, values) in &report.categories {
            let record = InventoryRecord::of(report, category, values, collected_at, now);
            let record = bson::to_document(&record)
                .map_err(|error| StoreError::Other(mongodb::error::Error::custom(error)))?;
            let filter = tenant(
                report.organization_id,
                doc! {
                    "device": report.device_id,
                    "category": category.as_str(),
                    "collectedAt": { "$lt": collected_at },
                },
            );
            statements.push(index, doc! { "q": filter, "u": record, "upsert": true });
        }
    }
    Ok(statements)
}

/// For every report of a job not failed so far, one statement per category freeing the
/// device's claim (only where the job holds it, so a report of an old job frees nothing a
/// newer job holds), and one per category recording it `reported` (only from the states it
/// may be reached from). One statement per category, not one per report: a category ended
/// already (or reported by a redelivery) leaves the report's others to apply.
fn job_statements(
    reports: &[DeviceReport],
    outcomes: &[Result<ReportApplied, StoreError>],
    now: DateTime,
) -> (Statements, Statements) {
    let sources: Vec<&str> = CategoryState::Reported
        .allowed_sources()
        .iter()
        .map(|state| state.as_str())
        .collect();
    let (mut claims, mut reported) = (Statements::default(), Statements::default());
    for (index, report) in reports.iter().enumerate() {
        let (Some(job), true) = (report.job_id, outcomes[index].is_ok()) else {
            continue;
        };
        for category in report.categories.keys() {
            let claim = tenant(
                report.organization_id,
                doc! { "_id": report.device_id, format!("lastRefreshJob.{category}"): job },
            );
            let release = doc! {
                "$pull": { "refreshInfoNeeded": category.as_str() },
                "$set": { format!("infoRefreshedAt.{category}"): now },
            };
            claims.push(index, doc! { "q": claim, "u": release });
            let field = |name: &str| format!("categories.{category}.{name}");
            let unreported = tenant(
                report.organization_id,
                doc! {
                    "_id": job,
                    "device": report.device_id,
                    field("state"): { "$in": sources.clone() },
                },
            );
            let record = doc! { "$set": {
                "updatedAt": now,
                field("state"): CategoryState::Reported.as_str(),
                field("reportedAt"): now,
                field("reportSource"): report.source.as_str(),
            } };
            reported.push(index, doc! { "q": unreported, "u": record });
        }
    }
    (claims, reported)
}
