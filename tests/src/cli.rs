//! `refreshctl` run against the stack, as an operator would.

use crate::{TestStack, processes::binary};
use refresh_shared::settings::AmqpSettings;
use secrecy::ExposeSecret;
use serde_json::Value;

impl TestStack {
    /// Runs `refreshctl --json ARGS` against this stack (its database, broker prefix, api and
    /// token); panics unless it succeeds, and returns the JSON it printed.
    pub async fn refreshctl(&self, args: &[&str]) -> Value {
        let output = self.refreshctl_output(args).await;
        assert!(
            output.status.success(),
            "refreshctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("refreshctl prints JSON with --json")
    }

    /// Runs `refreshctl --json ARGS` against this stack, whatever its outcome.
    pub async fn refreshctl_output(&self, args: &[&str]) -> std::process::Output {
        self.refreshctl_output_with(args, &[]).await
    }

    /// Like [`TestStack::refreshctl_output`], with more variables in its environment.
    pub async fn refreshctl_output_with(
        &self,
        args: &[&str],
        more: &[(&str, &str)],
    ) -> std::process::Output {
        self.refreshctl_command(args)
            .envs(more.iter().copied())
            .output()
            .await
            .expect("run refreshctl")
    }

    /// `refreshctl --json ARGS` against this stack, to be run as the test needs.
    pub fn refreshctl_command(&self, args: &[&str]) -> tokio::process::Command {
        // Not std's Command: `refreshctl bulk` follows a batch this test's runtime is serving.
        let mut command = tokio::process::Command::new(binary("refreshctl"));
        command
            .arg("--json")
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("MONGODB_URI", self.settings.core.mongo.uri.expose_secret())
            .env("MONGODB_DB", &self.settings.core.mongo.database)
            .env("AMQP_URL", self.settings.core.amqp.url.expose_secret())
            .env("AMQP_PREFIX", &self.settings.core.amqp.prefix)
            .env("RETRY_TIERS_SECS", retry_tiers(&self.settings.core.amqp))
            .env("REFRESH_API_URL", &self.api)
            .env("REFRESH_TOKEN", &self.token)
            .env("SIM_ADDR", self.sim.addr.to_string())
            .env("WEBHOOK_SIGNING_KEY", crate::stack::WEBHOOK_SIGNING_KEY)
            .env(
                "WNS_CHANNEL_HOST_SUFFIXES",
                self.settings.gateways.wns_channels.to_string(),
            );
        command
    }
}

/// `RETRY_TIERS_SECS` as `settings` has it: tools must declare the same topology.
fn retry_tiers(settings: &AmqpSettings) -> String {
    let tiers: Vec<String> = settings
        .retry_tiers
        .iter()
        .map(|tier| tier.as_secs().to_string())
        .collect();
    tiers.join(",")
}
