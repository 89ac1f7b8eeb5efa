//! What device-refresh tells the outside world, whoever tells it: a job and a batch as the api
//! answers them and as the webhooks carry them (one JSON for both, so a webhook's body matches
//! the GET), and the announcing of webhook events to the endpoints that subscribed to them,
//! done by the worker where a job, a category or a batch ends and by the api where a caller
//! cancels one. Knows no HTTP; the OpenAPI schemas of its views come with the `openapi`
//! feature, which only the api turns on.

pub mod announce;
#[cfg(feature = "openapi")]
pub mod schema;
pub mod view;

pub use announce::Announcer;
