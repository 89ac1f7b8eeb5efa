//! The domain of device-refresh and its adapters, shared by `refresh-api`, `refresh-worker` and
//! `refreshctl`. Nothing here knows about HTTP routing or the consumer loop.

pub mod batch;
pub mod broker;
pub mod category;
pub mod channel;
pub mod device;
pub mod job;
pub mod retry;
pub mod settings;
pub mod shutdown;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod token;

pub use category::Category;
pub use settings::Settings;
