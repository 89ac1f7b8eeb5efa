//! A refresh job: the message the api publishes, the per-category states the worker records,
//! and the transition rules every write-back is guarded by.

use crate::{Category, device::Gateway, trace::TraceParent};
use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};
use strum::EnumIter;
use time::OffsetDateTime;

/// Version of [`RefreshJob`] on the wire; a consumer rejects versions it does not know.
pub const MESSAGE_VERSION: u16 = 1;

/// The job message on RabbitMQ. Only ids travel: the worker reads the device itself, so a
/// message never carries stale push routes or anything secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshJob {
    pub version: u16,
    #[serde(with = "hex_object_id")]
    pub job_id: ObjectId,
    #[serde(with = "hex_object_id")]
    pub organization_id: ObjectId,
    #[serde(with = "hex_object_id")]
    pub device_id: ObjectId,
    /// Each at most once, never more entries than there are categories: a message naming one
    /// 10,000 times would otherwise cost 10,000 writes.
    #[serde(deserialize_with = "distinct_categories")]
    pub categories: Vec<Category>,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    pub lane: Lane,
    /// How many times this job has been handed to a worker before (0 on first publish).
    pub attempt: u32,
    /// How many times these categories were pushed again because the device did not report
    /// by the deadline (0 for a first push; absent on the wire then).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repush: u32,
    /// Pushes of some of `categories` that a gateway took but the worker that made them could
    /// not record (the database stayed away): their report deadlines are already published,
    /// and whoever takes this message records them instead of pushing again. Absent on the
    /// wire when empty, as it almost always is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pushed: Vec<PushMade>,
    /// A batch's job carries this until it first runs: the claim on the device is made then,
    /// not when the batch is expanded (which then writes nothing per device), for the
    /// categories the device has not reported since this instant (the skip window or the
    /// batch's `maxAgeSecs`, counted from the expansion). Absent on the wire otherwise: the
    /// api claims before it publishes, and a copy of a job that ran has made its claim.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub claim_unless_reported_after: Option<OffsetDateTime>,
    /// The refresh's trace context: it travels in the message's `traceparent` header, not in
    /// the body.
    #[serde(skip)]
    pub trace: Option<TraceParent>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("job message is not valid: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("job message version {0} is not supported (this build reads {MESSAGE_VERSION})")]
    UnsupportedVersion(u16),
    #[error("job message has no categories")]
    NoCategories,
    #[error(
        "job message records a push of {0}, which is not one of its categories or is named twice"
    )]
    StrayPush(Category),
}

/// A push a gateway took, for a category of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PushMade {
    pub category: Category,
    pub gateway: Gateway,
    /// Pushes made for the category by the worker that made this one, this one included.
    pub attempts: u32,
    /// When the gateway took it.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A list of categories from outside: more entries than there are categories is refused before
/// anything is kept; repeats are merged, in the order first named.
fn distinct_categories<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Category>, D::Error> {
    struct Distinct;
    impl<'de> serde::de::Visitor<'de> for Distinct {
        type Value = Vec<Category>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a list of at most {} categories", Category::ALL.len())
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut categories = Vec::with_capacity(Category::ALL.len());
            let mut named = 0;
            while let Some(category) = seq.next_element::<Category>()? {
                named += 1;
                if named > Category::ALL.len() {
                    return Err(serde::de::Error::invalid_length(named, &self));
                }
                if !categories.contains(&category) {
                    categories.push(category);
                }
            }
            Ok(categories)
        }
    }
    deserializer.deserialize_seq(Distinct)
}

impl RefreshJob {
    pub fn encode(&self) -> Vec<u8> {
        // Serialising plain ids, enums and a timestamp cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let job: RefreshJob = serde_json::from_slice(payload)?;
        if job.version != MESSAGE_VERSION {
            return Err(DecodeError::UnsupportedVersion(job.version));
        }
        if job.categories.is_empty() {
            return Err(DecodeError::NoCategories);
        }
        for (i, push) in job.pushed.iter().enumerate() {
            let repeated = job.pushed[..i].iter().any(|p| p.category == push.category);
            if repeated || !job.categories.contains(&push.category) {
                return Err(DecodeError::StrayPush(push.category));
            }
        }
        Ok(job)
    }

    /// The categories this message still has to push: those without a push it carries.
    pub fn to_push(&self) -> impl Iterator<Item = Category> + '_ {
        self.categories
            .iter()
            .copied()
            .filter(|category| self.pushed.iter().all(|p| p.category != *category))
    }
}

/// Which queue a job travels on: single-device requests never wait behind a bulk batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, EnumIter)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    Interactive,
    Bulk,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Interactive, Lane::Bulk];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Interactive => "interactive",
            Lane::Bulk => "bulk",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, EnumIter)]
#[serde(rename_all = "lowercase")]
pub enum CategoryState {
    Queued,
    Pushing,
    /// A gateway took the wake-up; the device has not reported yet.
    Pushed,
    /// The device sent this category's data.
    Reported,
    Retrying,
    Failed,
    Expired,
    /// Pushed, but no report by the deadline even after `REPUSH_LIMIT` further pushes.
    Unreported,
    /// The caller canceled it before it ended: never pushed again.
    Canceled,
}

impl CategoryState {
    pub fn as_str(self) -> &'static str {
        match self {
            CategoryState::Queued => "queued",
            CategoryState::Pushing => "pushing",
            CategoryState::Pushed => "pushed",
            CategoryState::Reported => "reported",
            CategoryState::Retrying => "retrying",
            CategoryState::Failed => "failed",
            CategoryState::Expired => "expired",
            CategoryState::Unreported => "unreported",
            CategoryState::Canceled => "canceled",
        }
    }

    /// Ended: nothing moves the category any more. `Pushed` is not: the device has yet to
    /// report, and the deadline may push it again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            CategoryState::Reported
                | CategoryState::Failed
                | CategoryState::Expired
                | CategoryState::Unreported
                | CategoryState::Canceled
        )
    }

    /// The states a category may move to `self` from. Every write-back filters on this list, so
    /// a redelivered or late message can never move a category backwards.
    pub fn allowed_sources(self) -> &'static [CategoryState] {
        use CategoryState::*;
        match self {
            Queued => &[],
            // `Pushing` again: a push its delivery abandoned (its worker died), taken over. From
            // `Pushed`: pushed again because no report came by the deadline.
            Pushing => &[Queued, Retrying, Pushing, Pushed],
            Pushed | Retrying => &[Pushing],
            // A device may report before its push is recorded, or while a repush waits: the
            // report is what the push was for.
            Reported => &[Pushing, Pushed, Retrying],
            Unreported => &[Pushed],
            // `Queued` → `Failed`: the api could not publish the job. `Pushed` → `Failed`: the
            // device went away while its report was awaited.
            Failed => &[Queued, Pushing, Retrying, Pushed],
            Expired => &[Queued, Pushing, Retrying],
            // Whatever has not ended: a push in progress finishes, but is not recorded, and
            // nothing claims the category again.
            Canceled => &[Queued, Pushing, Retrying, Pushed],
        }
    }

    /// The states a worker may claim a category from (move it to `Pushing`). Never from
    /// `Pushing`: a push in progress belongs to whoever claimed it, even when the broker hands
    /// the message to another worker (the first may have lost only its channel to a broker
    /// node, and still be pushing); such a claim is taken over only once its job has gone
    /// unwritten for a while. Only a repush (the deadline passed without a report) pushes a
    /// `pushed` category again.
    pub fn claimable(repush: bool) -> &'static [CategoryState] {
        use CategoryState::*;
        if repush {
            &[Queued, Retrying, Pushed]
        } else {
            &[Queued, Retrying]
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, EnumIter)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    InProgress,
    Completed,
    Partial,
    Failed,
    /// Ended, and the caller canceled at least one category.
    Canceled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::InProgress => "in_progress",
            JobState::Completed => "completed",
            JobState::Partial => "partial",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    /// Whether every category of the job has ended.
    pub fn is_finished(self) -> bool {
        !matches!(self, JobState::Queued | JobState::InProgress)
    }

    /// A job's state is never stored: it is derived from its categories. It is `completed`
    /// only when the device has reported every one of them.
    pub fn derive(categories: impl IntoIterator<Item = CategoryState>) -> JobState {
        let (mut total, mut queued, mut open, mut reported) = (0, 0, 0, 0);
        let mut canceled = false;
        for state in categories {
            total += 1;
            match state {
                CategoryState::Queued => queued += 1,
                CategoryState::Reported => reported += 1,
                CategoryState::Canceled => canceled = true,
                other if !other.is_terminal() => open += 1,
                _ => {}
            }
        }
        if total == queued {
            JobState::Queued
        } else if queued + open > 0 {
            JobState::InProgress
        } else if canceled {
            JobState::Canceled
        } else if reported == total {
            JobState::Completed
        } else if reported == 0 {
            JobState::Failed
        } else {
            JobState::Partial
        }
    }
}

/// Serde for an [`ObjectId`] as its 24-hex string, the form every public id takes.
pub mod hex_object_id {
    use bson::oid::ObjectId;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(id: &ObjectId, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&id.to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<ObjectId, D::Error> {
        let hex = <&str>::deserialize(deserializer)?;
        ObjectId::parse_str(hex).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CategoryState::*;

    fn job() -> RefreshJob {
        RefreshJob {
            version: MESSAGE_VERSION,
            job_id: ObjectId::new(),
            organization_id: ObjectId::new(),
            device_id: ObjectId::new(),
            categories: vec![Category::Hardware, Category::Os],
            requested_at: OffsetDateTime::UNIX_EPOCH,
            lane: Lane::Interactive,
            attempt: 0,
            repush: 0,
            pushed: Vec::new(),
            claim_unless_reported_after: None,
            trace: None,
        }
    }

    #[test]
    fn the_message_round_trips_and_uses_hex_ids() {
        let job = job();
        let bytes = job.encode();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains(&format!("\"jobId\":\"{}\"", job.job_id.to_hex())));
        assert_eq!(RefreshJob::decode(&bytes).ok(), Some(job));
    }

    #[test]
    fn a_carried_push_must_be_of_one_of_the_jobs_categories_and_only_once() {
        let push = |category| PushMade {
            category,
            gateway: Gateway::Agent,
            attempts: 1,
            at: OffsetDateTime::UNIX_EPOCH,
        };
        let mut carrying = job();
        carrying.pushed = vec![push(Category::Os)];
        assert_eq!(
            RefreshJob::decode(&carrying.encode()).ok().as_ref(),
            Some(&carrying)
        );
        assert_eq!(carrying.to_push().collect::<Vec<_>>(), [Category::Hardware]);
        for stray in [
            vec![push(Category::Network)],
            vec![push(Category::Os), push(Category::Os)],
        ] {
            let message = RefreshJob {
                pushed: stray,
                ..job()
            };
            assert!(matches!(
                RefreshJob::decode(&message.encode()),
                Err(DecodeError::StrayPush(_))
            ));
        }
    }

    #[test]
    fn unknown_versions_and_empty_jobs_are_rejected() {
        let mut future = job();
        future.version = 2;
        assert!(matches!(
            RefreshJob::decode(&future.encode()),
            Err(DecodeError::UnsupportedVersion(2))
        ));
        let mut empty = job();
        empty.categories.clear();
        assert!(matches!(
            RefreshJob::decode(&empty.encode()),
            Err(DecodeError::NoCategories)
        ));
        assert!(matches!(
            RefreshJob::decode(b"{not json"),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn categories_are_taken_once_and_never_more_than_all_of_them() {
        let with = |names: &[&str]| {
            let mut message: serde_json::Value =
                serde_json::from_slice(&job().encode()).expect("json");
            message["categories"] = serde_json::json!(names);
            RefreshJob::decode(message.to_string().as_bytes())
        };
        let merged = with(&["os", "hardware", "os"]).expect("repeats merge");
        assert_eq!(merged.categories, [Category::Os, Category::Hardware]);
        let every = Category::ALL.map(|c| c.as_str());
        assert_eq!(with(&every).expect("all six").categories, Category::ALL);
        let flood = vec!["hardware"; 10_000];
        let refused = with(&flood).expect_err("10,000 names");
        assert!(
            refused.to_string().contains("at most 6 categories"),
            "{refused}"
        );
        assert!(with(&["hardware"; 7]).is_err());
    }

    #[test]
    fn states_never_move_backwards() {
        use strum::IntoEnumIterator;
        for terminal in CategoryState::iter().filter(|s| s.is_terminal()) {
            for target in CategoryState::iter() {
                assert!(!target.allowed_sources().contains(&terminal));
            }
        }
        assert!(Pushing.allowed_sources().contains(&Retrying));
        assert!(!Pushed.is_terminal());
        assert!(Reported.allowed_sources().contains(&Pushing));
        assert!(Pushing.allowed_sources().contains(&Pushed));
        assert!(!CategoryState::claimable(false).contains(&Pushed));
        assert!(CategoryState::claimable(true).contains(&Pushed));
        for repush in [false, true] {
            assert!(!CategoryState::claimable(repush).contains(&Pushing));
            for from in CategoryState::claimable(repush) {
                assert!(Pushing.allowed_sources().contains(from));
            }
        }
        assert!(Failed.allowed_sources().contains(&Queued));
    }

    #[test]
    fn job_state_is_derived_from_categories() {
        assert_eq!(JobState::derive([Queued, Queued]), JobState::Queued);
        assert_eq!(JobState::derive([Queued, Pushed]), JobState::InProgress);
        assert_eq!(JobState::derive([Retrying, Reported]), JobState::InProgress);
        assert_eq!(JobState::derive([Pushed, Pushed]), JobState::InProgress);
        assert_eq!(JobState::derive([Reported, Reported]), JobState::Completed);
        assert_eq!(JobState::derive([Reported, Failed]), JobState::Partial);
        assert_eq!(JobState::derive([Reported, Unreported]), JobState::Partial);
        assert_eq!(JobState::derive([Unreported, Unreported]), JobState::Failed);
        assert_eq!(JobState::derive([Expired, Failed]), JobState::Failed);
        // Canceled once every category has ended, whatever the others ended as.
        assert_eq!(JobState::derive([Canceled, Pushed]), JobState::InProgress);
        assert_eq!(JobState::derive([Canceled, Reported]), JobState::Canceled);
        assert_eq!(JobState::derive([Canceled, Canceled]), JobState::Canceled);
    }

    #[test]
    fn only_what_has_not_ended_can_be_canceled_and_a_canceled_category_is_never_claimed() {
        use strum::IntoEnumIterator;
        for state in CategoryState::iter() {
            assert_eq!(
                Canceled.allowed_sources().contains(&state),
                !state.is_terminal(),
                "{state:?}"
            );
            assert!(!state.allowed_sources().contains(&Canceled) || state == Canceled);
        }
        for repush in [false, true] {
            assert!(!CategoryState::claimable(repush).contains(&Canceled));
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_job() -> impl Strategy<Value = RefreshJob> {
            (
                any::<[[u8; 12]; 3]>(),
                proptest::sample::subsequence(Category::ALL.to_vec(), 1..=Category::ALL.len()),
                0_i64..4_102_444_800,
                any::<bool>(),
                any::<u32>(),
                any::<bool>(),
            )
                .prop_map(
                    |([job, organization, device], categories, at, bulk, attempt, carries)| {
                        let at = OffsetDateTime::from_unix_timestamp(at)
                            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                        let pushed = categories
                            .iter()
                            .take(usize::from(carries))
                            .map(|&category| PushMade {
                                category,
                                gateway: Gateway::Wns,
                                attempts: attempt % 5 + 1,
                                at,
                            })
                            .collect();
                        RefreshJob {
                            version: MESSAGE_VERSION,
                            job_id: ObjectId::from_bytes(job),
                            organization_id: ObjectId::from_bytes(organization),
                            device_id: ObjectId::from_bytes(device),
                            categories,
                            requested_at: at,
                            lane: if bulk { Lane::Bulk } else { Lane::Interactive },
                            attempt,
                            repush: attempt % 3,
                            pushed,
                            claim_unless_reported_after: bulk.then_some(at),
                            trace: None,
                        }
                    },
                )
        }

        proptest! {
            #[test]
            fn every_job_round_trips(job in any_job()) {
                prop_assert_eq!(RefreshJob::decode(&job.encode()).ok(), Some(job));
            }

            #[test]
            fn any_bytes_decode_to_a_job_or_an_error_never_a_panic(
                payload in proptest::collection::vec(any::<u8>(), 0..512),
            ) {
                let _ = RefreshJob::decode(&payload);
                let _ = crate::batch::ExpandBatch::decode(&payload);
            }

            #[test]
            fn a_job_with_a_field_changed_to_any_json_never_panics(
                job in any_job(),
                field in proptest::sample::select(vec!["version", "jobId", "organizationId", "deviceId", "categories", "requestedAt", "lane", "attempt", "pushed"]),
                value in prop_oneof![
                    Just(serde_json::Value::Null),
                    any::<i64>().prop_map(serde_json::Value::from),
                    "\\PC{0,30}".prop_map(serde_json::Value::from),
                    Just(serde_json::json!([])),
                    Just(serde_json::json!({})),
                ],
            ) {
                let mut message: serde_json::Value = serde_json::from_slice(&job.encode()).expect("JSON");
                message[field] = value;
                let _ = RefreshJob::decode(message.to_string().as_bytes());
            }
        }
    }
}
