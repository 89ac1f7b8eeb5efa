//! After a test has killed or cut something mid-stream: waits for the accepted jobs to complete
//! and checks the gateway's records (the sim's) against the jobs' — nothing lost, and nothing
//! pushed again once it was recorded pushed.

use crate::{TestStack, wait_until};
use bson::{Bson, Document, doc};
use futures::TryStreamExt;
use push_gateway_sim::PushRecord;
use refresh_shared::{
    job::{CategoryState, JobState},
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
    /// Pushes of a category the device reported that were never recorded: the worker that
    /// made them was killed before writing them down, and the report came before another
    /// worker found the push abandoned.
    pub unrecorded: usize,
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
        // Per category: when its push was recorded, and whether the device reported it.
        let recorded: HashMap<(String, String), (Option<i64>, bool)> = records
            .iter()
            .flat_map(|job| {
                job.categories.iter().map(|(category, record)| {
                    let at = record.pushed_at.map(|at| at.timestamp_millis());
                    let reported = record.state == CategoryState::Reported;
                    ((job.id.to_hex(), category.to_string()), (at, reported))
                })
            })
            .collect();
        let accepted: Vec<PushRecord> = self
            .pushes()
            .await
            .into_iter()
            .filter(|p| (200..300).contains(&p.status))
            .collect();
        let mut per_category: HashMap<(String, String), Vec<&PushRecord>> = HashMap::new();
        for push in &accepted {
            let key = (push.job_id.clone().unwrap(), push.categories[0].clone());
            per_category.entry(key).or_default().push(push);
        }
        let (mut after_recorded, mut twice_before, mut unrecorded) = (0, 0, 0);
        for (key, pushes) in &per_category {
            let (before, after): (Vec<&PushRecord>, Vec<&PushRecord>) = match recorded.get(key) {
                Some(&(Some(recorded_ms), _)) => pushes.iter().partition(|push| {
                    i64::try_from(push.time().unix_timestamp_nanos() / 1_000_000).unwrap()
                        <= recorded_ms
                }),
                Some(&(None, true)) => {
                    unrecorded += pushes.len();
                    (pushes.clone(), Vec::new())
                }
                // A push of a category that was never recorded pushed nor reported (its job
                // was abandoned, or is unknown) is one too.
                _ => (Vec::new(), pushes.clone()),
            };
            for push in &after {
                // Named, so a failure says which push and which record.
                println!(
                    "pushed after it was recorded: {push:?}, recorded {:?}",
                    recorded.get(key)
                );
            }
            after_recorded += after.len();
            twice_before += before.len().saturating_sub(1);
        }
        PushAudit {
            accepted: accepted.len(),
            after_recorded,
            twice_before,
            unrecorded,
        }
    }
}
