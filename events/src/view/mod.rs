//! Jobs and batches as the outside world sees them: the api's answers and the webhooks' bodies
//! are the same JSON.

mod batch;
mod event;
mod job;

pub use batch::{BatchCounts, BatchView, Skipped};
pub use event::{CategoryReported, EventBody};
pub use job::{CategoryView, JobView};

use bson::DateTime;

/// A timestamp as the answers and the webhooks show it.
pub fn rfc3339(at: DateTime) -> String {
    at.try_to_rfc3339_string()
        .unwrap_or_else(|_| at.timestamp_millis().to_string())
}
