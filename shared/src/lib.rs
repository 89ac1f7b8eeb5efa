//! The domain of device-refresh and its adapters, shared by `refresh-api`, `refresh-worker` and
//! `refreshctl`. Nothing here knows about HTTP routing or the consumer loop.

pub mod batch;
pub mod broker;
pub mod category;
pub mod channel;
pub mod deadline;
pub mod device;
pub mod job;
pub mod metric;
pub mod report;
pub mod retry;
pub mod settings;
pub mod shutdown;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod trace;
pub mod turns;
pub mod webhook;

pub use category::Category;

/// `error` and each of its sources, joined by ": ": what a log line or a recorded failure says
/// of it (the outer message alone often hides what actually went wrong).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{
        batch::DeviceOutcome,
        broker::QueueRole,
        device::{DeviceState, Gateway},
        job::{CategoryState, JobState, Lane},
        report::ReportSource,
        store::{BatchState, WnsChannelStatus},
        webhook::{DeliveryState, EndpointState, WebhookEvent},
    };
    use crate::Category;
    use serde::Serialize;
    use strum::IntoEnumIterator;

    /// `as_str` feeds MongoDB filters and metric labels, serde writes the documents and the
    /// answers: the two must name every value alike.
    fn agree<T: IntoEnumIterator + Serialize + Copy>(as_str: fn(T) -> &'static str) {
        for value in T::iter() {
            let serialized = serde_json::to_value(value).expect("serializes");
            assert_eq!(serialized, serde_json::json!(as_str(value)));
        }
    }

    #[test]
    fn every_as_str_names_values_as_serde_does() {
        agree(Category::as_str);
        agree(DeviceState::as_str);
        agree(Gateway::as_str);
        agree(CategoryState::as_str);
        agree(JobState::as_str);
        agree(Lane::as_str);
        agree(DeviceOutcome::as_str);
        agree(QueueRole::as_str);
        agree(WnsChannelStatus::as_str);
        agree(BatchState::as_str);
        agree(ReportSource::as_str);
        agree(WebhookEvent::as_str);
        agree(EndpointState::as_str);
        agree(DeliveryState::as_str);
    }
}
