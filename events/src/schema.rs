//! The schemas of `refresh_shared`'s enums, which know nothing of OpenAPI: each is a string,
//! one of the values its `as_str` gives (a test in `refresh_shared` holds those equal to the
//! serde names the answers carry). A view's field of such an enum says
//! `#[schema(value_type = schema::Category)]`; each type here is named as its enum.

use refresh_shared as shared;
use strum::IntoEnumIterator;
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{ObjectBuilder, RefOr, Schema, Type},
};

macro_rules! enums {
    ($($(#[doc = $doc:literal])+ $name:ident = $shared:ty;)*) => {$(
        $(#[doc = $doc])+
        pub struct $name;

        impl ToSchema for $name {}

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some([$($doc),+].map(str::trim).join(" ")))
                    .enum_values(Some(<$shared>::iter().map(<$shared>::as_str)))
                    .into()
            }
        }
    )*};
}

enums! {
    /// An inventory category a device can be asked to re-report.
    Category = shared::Category;
    /// A device's lifecycle state; only `ACTIVE` devices are refreshed.
    DeviceState = shared::device::DeviceState;
    /// The push gateway a category was (or is to be) delivered through.
    Gateway = shared::device::Gateway;
    /// Where one category of a job is.
    CategoryState = shared::job::CategoryState;
    /// Where a job is, derived from its categories.
    JobState = shared::job::JobState;
    /// Where a batch is.
    BatchState = shared::store::BatchState;
    /// What a queue is for, as `/metrics` and `refreshctl queues` label it.
    QueueRole = shared::broker::QueueRole;
    /// Who sent a report: the device agent, or the device's OMA-DM client.
    ReportSource = shared::report::ReportSource;
    /// An event a webhook endpoint can subscribe to.
    WebhookEvent = shared::webhook::WebhookEvent;
    /// Whether a webhook endpoint is delivered to: `failing` after a delivery went through
    /// every retry without success (deliveries go on), `disabled` after it answered 410.
    WebhookState = shared::webhook::EndpointState;
    /// Where one event's delivery to one endpoint is: `pending` until an attempt is answered
    /// with a 2xx (`delivered`), `failed` after the last retry or a 410, `dropped` when the
    /// endpoint was disabled or removed first.
    DeliveryState = shared::webhook::DeliveryState;
}
