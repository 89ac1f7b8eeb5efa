use anyhow::Context;
use refresh_shared::{settings::Load, shutdown, telemetry};
use refresh_worker::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env().context("reading settings from the environment")?;
    telemetry::init_tracing(settings.core.log_format);
    let worker = refresh_worker::Worker::build(settings).await?;
    worker.run_until_stopped(shutdown::signal()).await
}
