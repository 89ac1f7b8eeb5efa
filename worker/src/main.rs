use anyhow::Context;
use refresh_shared::{Settings, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env().context("reading settings from the environment")?;
    telemetry::init_tracing(settings.log_format);
    let worker = refresh_worker::Worker::build(settings).await?;
    worker.run_until_stopped(shutdown::signal()).await
}
