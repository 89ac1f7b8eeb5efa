//! After a test has killed or cut something mid-stream: waits for the accepted jobs to complete
//! and checks the gateway's records (the sim's) against the jobs' — nothing lost, and nothing
//! pushed again once it was recorded pushed.

use crate::{TestStack, wait_until};
use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use push_gateway_sim::PushRecord;
use refresh_shared::{
    job::JobState,
    store::{self, JobRecord},
};
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

/// What the gateway received, against the jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushAudit {
    /// Pushes the gateway accepted.
    pub accepted: usize,
    /// Pushes made again after the category was recorded pushed: the product promises none.
    pub after_recorded: usize,
    /// Pushes of a category made twice before it was recorded (a push a killed process sent
    /// whose answer it never saw).
    pub twice_before: usize,
}

impl TestStack {
    /// Every job in the stack's database.
    pub async fn all_jobs(&self) -> Vec<JobRecord> {
        self.collection::<JobRecord>(store::JOBS)
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }

    /// Waits until each of `jobs` (ids) has every one of `categories` reported, then audits
    /// the sim's pushes against the recorded `pushedAt`s. A push is made when it reaches the
    /// gateway: one a killed worker sent is answered later, but was made before.
    pub async fn settle_and_audit(
        &self,
        jobs: &[String],
        categories: &[&str],
        deadline: Duration,
    ) -> PushAudit {
        let completed: Document = categories
            .iter()
            .map(|c| (format!("categories.{c}.state"), Bson::from("reported")))
            .collect();
        let records = wait_until("every job to complete", deadline, || async {
            // Counting, not reading every job, until enough are done: the polling must not
            // load the database (nor filter by thousands of ids, which it cannot index).
            tokio::time::sleep(Duration::from_millis(250)).await;
            let done = self
                .collection::<JobRecord>(store::JOBS)
                .count_documents(completed.clone())
                .await
                .unwrap();
            if usize::try_from(done).unwrap() < jobs.len() {
                return None;
            }
            let records = self.all_jobs().await;
            let done: HashSet<String> = records
                .iter()
                .filter(|job| job.state() == JobState::Completed)
                .map(|job| job.id.to_hex())
                .collect();
            jobs.iter().all(|id| done.contains(id)).then_some(records)
        })
        .await;
        let pushed_at: HashMap<(String, String), i64> = records
            .iter()
            .flat_map(|job| {
                job.categories.iter().filter_map(|(category, record)| {
                    let at = record.pushed_at?;
                    Some((
                        (job.id.to_hex(), category.to_string()),
                        at.timestamp_millis(),
                    ))
                })
            })
            .collect();
        let accepted: Vec<PushRecord> = self
            .pushes()
            .await
            .into_iter()
            .filter(|p| (200..300).contains(&p.status))
            .collect();
        let mut after_recorded = 0;
        let mut per_category: HashMap<(String, String), usize> = HashMap::new();
        for push in &accepted {
            let key = (push.job_id.clone().unwrap(), push.categories[0].clone());
            *per_category.entry(key.clone()).or_default() += 1;
            let at_ms = i64::try_from(push.time().unix_timestamp_nanos() / 1_000_000).unwrap();
            // A push of a category never recorded pushed (its job was abandoned) is one too.
            let recorded = pushed_at.get(&key).copied().unwrap_or(i64::MIN);
            if at_ms > recorded {
                // Named, so a failure says which push and which record.
                println!("pushed after it was recorded: {push:?}, recorded pushedAt {recorded} ms");
                after_recorded += 1;
            }
        }
        let twice_before = per_category.values().map(|n| n - 1).sum::<usize>() - after_recorded;
        PushAudit {
            accepted: accepted.len(),
            after_recorded,
            twice_before,
        }
    }
}
