//! A report deadline that passed: each category the device has still not reported is pushed
//! again, up to `REPUSH_LIMIT` times, then ends `unreported`.

use crate::dispatch::{Dispatcher, Halt, release};
use refresh_shared::{
    Category,
    deadline::ReportDeadline,
    job::{CategoryState, MESSAGE_VERSION, RefreshJob},
    metric,
    store::CategoryUpdate,
};
use time::OffsetDateTime;

impl Dispatcher {
    pub async fn check_deadline(&self, deadline: &ReportDeadline) -> Result<(), Halt> {
        let store = &self.store;
        let Some(job) = self.durably(|| store.job_by_id(deadline.job_id)).await? else {
            return Ok(());
        };
        let (mut waiting, mut unanswered) = (Vec::new(), Vec::new());
        for category in &deadline.categories {
            match job.categories.get(category).map(|c| c.state) {
                Some(CategoryState::Pushed) => unanswered.push(*category),
                // Pushed, but not recorded yet (or its worker died and the job's redelivery
                // will push it again): look again after another deadline.
                Some(CategoryState::Pushing) => waiting.push(*category),
                _ => {}
            }
        }
        if !waiting.is_empty() {
            let again = ReportDeadline {
                categories: waiting,
                ..deadline.clone()
            };
            let publisher = &self.retry_publisher;
            self.publish("a report deadline", || publisher.publish_deadline(&again))
                .await?;
        }
        if unanswered.is_empty() {
            return Ok(());
        }
        if deadline.repush < self.repush_limit {
            self.repush(deadline, unanswered).await
        } else {
            self.end_unreported(deadline, &unanswered).await?;
            self.announce_job(deadline.organization_id, deadline.job_id)
                .await
        }
    }

    /// Pushes the categories again: a job message of their own, which may take them over from
    /// `pushed` (a report arriving first settles them, and the repush then skips them).
    async fn repush(
        &self,
        deadline: &ReportDeadline,
        categories: Vec<Category>,
    ) -> Result<(), Halt> {
        let count = categories.len() as u64;
        let job = RefreshJob {
            version: MESSAGE_VERSION,
            job_id: deadline.job_id,
            organization_id: deadline.organization_id,
            device_id: deadline.device_id,
            categories,
            // The job's age counts from here: a repush is a fresh request to the device.
            requested_at: OffsetDateTime::now_utc(),
            lane: deadline.lane,
            attempt: 0,
            repush: deadline.repush + 1,
            pushed: Vec::new(),
            claim_unless_reported_after: None,
            trace: deadline.trace,
        };
        let publisher = &self.retry_publisher;
        self.publish("a repush", || publisher.publish(&job)).await?;
        metrics::counter!(metric::REPUSHES).increment(count);
        tracing::info!(job_id = %job.job_id, repush = job.repush, "no report by the deadline: pushed again");
        Ok(())
    }

    async fn end_unreported(
        &self,
        deadline: &ReportDeadline,
        categories: &[Category],
    ) -> Result<(), Halt> {
        let store = &self.store;
        let (organization, device, job) = (
            deadline.organization_id,
            deadline.device_id,
            deadline.job_id,
        );
        release(self, organization, device, categories, job, None).await?;
        let reason = format!(
            "the device did not report within {} s of any of its {} pushes",
            self.report_deadline.as_secs(),
            deadline.repush + 1
        );
        let update = CategoryUpdate {
            last_error: Some(reason),
            ..CategoryUpdate::to(CategoryState::Unreported)
        };
        for category in categories {
            let single = std::slice::from_ref(category);
            if self
                .durably(|| self.transition(job, single, &update))
                .await?
            {
                metrics::counter!(metric::UNREPORTED).increment(1);
                metrics::counter!(metric::CATEGORIES, "outcome" => "unreported", "gateway" => "none")
                    .increment(1);
                tracing::warn!(job_id = %job, %category, "category unreported");
            }
        }
        if deadline.lane == refresh_shared::job::Lane::Bulk {
            self.durably(|| store.record_outcome(job)).await?;
        }
        Ok(())
    }
}
