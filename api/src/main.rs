use anyhow::Context;
use refresh_api::Settings;
use refresh_shared::{settings::Load, shutdown, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::from_env().context("reading settings from the environment")?;
    telemetry::init_tracing(settings.core.log_format);
    let app = refresh_api::App::build(settings).await?;
    app.run_until_stopped(shutdown::signal()).await;
    Ok(())
}
