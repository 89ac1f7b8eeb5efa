//! How every binary reads its settings from the environment (README, Configuration): the core
//! every one of them reads (RabbitMQ, MongoDB, logging), the variables more than one reads, and
//! [`Load`], through which each binary reads its own sections and is refused, with every bad
//! variable named at once, before it starts. A binary reads only what it uses: `refreshctl`
//! does not refuse a bad `WORKER_*` value.

use crate::{
    channel::ChannelPolicy,
    webhook::{SigningKey, UrlPolicy},
};
use secrecy::{ExposeSecret, SecretString};
use std::{fmt::Display, str::FromStr, sync::Arc, time::Duration};

/// What every binary reads.
#[derive(Debug, Clone)]
pub struct Core {
    pub amqp: AmqpSettings,
    pub mongo: MongoSettings,
    pub log_format: LogFormat,
}

#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// One broker URL, or the nodes of a cluster comma-separated; holds the broker password,
    /// hence secret.
    pub url: SecretString,
    /// How many nodes a quorum queue is replicated on when it is created (`AMQP_QUORUM_SIZE`,
    /// default the nodes `AMQP_URL` lists, at most 3).
    pub quorum_size: u32,
    /// Prefix of every exchange and queue name; must start with `refresh`.
    pub prefix: String,
    /// How long a publish may wait for the broker's confirm before the caller gets a 503.
    pub confirm_timeout: Duration,
    /// Delays of the retry queues, in order: a job whose in-process retries are spent waits in
    /// the next tier instead of holding a consumer slot.
    pub retry_tiers: Vec<Duration>,
    /// Delays of the webhook retry queues, in order: a delivery not answered with a 2xx waits
    /// in the next tier before its next attempt; after the last, it is dead-lettered.
    pub webhook_retry_tiers: Vec<Duration>,
    /// How long a pushed category waits for the device's report before it is pushed again (or
    /// ends `unreported`): the TTL of the deadline queue.
    pub report_deadline: Duration,
}

/// The largest quorum a queue may be created with: more members only slow every write down.
pub const MAX_QUORUM_SIZE: u32 = 7;

/// The most retry tiers a list may name: each is a queue.
pub const MAX_TIERS: usize = 20;
/// The longest a tier may delay: a week (RabbitMQ's message TTLs end at about 49 days).
pub const MAX_TIER_SECS: u64 = 604_800;

/// The longest report deadline: a day. A pushed category holds its device's claim until then.
pub const MAX_REPORT_DEADLINE: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone)]
pub struct MongoSettings {
    pub uri: SecretString,
    pub database: String,
    /// How long an operation waits for a reachable server before it counts as an outage.
    pub server_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(LogFormat::Json),
            "pretty" => Ok(LogFormat::Pretty),
            other => Err(format!("'{other}' is not json or pretty")),
        }
    }
}

/// Every variable that failed, so an operator fixes them all in one go.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct SettingsError(pub Vec<String>);

/// A binary's settings: its sections, each read by [`Load::read`] from an [`Env`] that gathers
/// what is wrong with any variable.
pub trait Load: Sized {
    fn read(env: &mut Env<'_>) -> Self;

    fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings from these variables alone (tests).
    fn from_pairs(vars: &[(&str, &str)]) -> Result<Self, SettingsError> {
        Self::from_lookup(|name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    /// Reads the settings through `lookup`, so tests can build them without touching the
    /// process environment.
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let mut env = Env {
            lookup: &lookup,
            errors: Vec::new(),
        };
        let settings = Self::read(&mut env);
        if env.errors.is_empty() {
            Ok(settings)
        } else {
            Err(SettingsError(env.errors))
        }
    }
}

impl Load for Core {
    fn read(env: &mut Env<'_>) -> Core {
        Core {
            amqp: AmqpSettings::read(env),
            mongo: MongoSettings::read(env),
            log_format: env.parse("LOG_FORMAT", "pretty"),
        }
    }
}

// The variables more than one binary reads: each named, with its default, once.

/// `SHUTDOWN_GRACE_MS` (api, worker): after SIGTERM/SIGINT, how long in-flight requests and
/// jobs may take to finish before the rest is handed back (jobs are redelivered) and the
/// process exits.
pub fn shutdown_grace(env: &mut Env<'_>) -> Duration {
    env.millis("SHUTDOWN_GRACE_MS", 10_000)
}

/// `REFRESH_SKIP_WINDOW_SECS` (api, and the worker expanding batches): a category pushed this
/// recently is not pushed again.
pub fn refresh_skip_window(env: &mut Env<'_>) -> Duration {
    env.secs("REFRESH_SKIP_WINDOW_SECS", 30)
}

/// `AUTH_CACHE_TTL_MS` (api; `refreshctl` names it when it could not tell running apis of a
/// revocation): how long a token or organization read from MongoDB is reused (0: read every
/// time).
pub fn auth_cache_ttl(env: &mut Env<'_>) -> Duration {
    env.millis("AUTH_CACHE_TTL_MS", 1_000)
}

/// `WNS_CHANNEL_HOST_SUFFIXES` (worker; `refreshctl` and the api recording a device's channel): the
/// WNS channel URIs a device may be given and the worker may push to.
pub fn wns_channels(env: &mut Env<'_>) -> ChannelPolicy {
    env.parse("WNS_CHANNEL_HOST_SUFFIXES", ".notify.windows.com")
}

/// Webhooks (api, worker): what endpoint secrets are derived from, and which URLs may be
/// called.
#[derive(Clone)]
pub struct WebhookSettings {
    /// `WEBHOOK_SIGNING_KEY` (base64, at least 32 bytes); without it, no endpoint can be added
    /// and nothing is delivered. Changing it changes every endpoint's secret.
    pub signing_key: Option<Arc<SigningKey>>,
    /// `WEBHOOK_ALLOW_INSECURE=true` admits `http` and private addresses: tests and the local
    /// stack only.
    pub url_policy: UrlPolicy,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("signing_key", &self.signing_key.as_ref().map(|_| "[set]"))
            .field("url_policy", &self.url_policy)
            .finish()
    }
}

// Each section reads its own variables and records what is wrong with them, each alone and
// against each other.

impl Load for WebhookSettings {
    fn read(env: &mut Env<'_>) -> WebhookSettings {
        let key = env.secret("WEBHOOK_SIGNING_KEY", "");
        let signing_key = match key.expose_secret() {
            "" => None,
            text => SigningKey::from_base64(text)
                .map(Arc::new)
                .map_err(|error| env.refuse(&format!("WEBHOOK_SIGNING_KEY: {error}")))
                .ok(),
        };
        WebhookSettings {
            signing_key,
            url_policy: UrlPolicy {
                allow_insecure: env.parse("WEBHOOK_ALLOW_INSECURE", "false"),
            },
        }
    }
}

impl Load for AmqpSettings {
    fn read(env: &mut Env<'_>) -> AmqpSettings {
        let url = env.secret("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        let nodes = crate::broker::nodes(&url);
        let listed = nodes.as_ref().map_or(1, Vec::len);
        let default_quorum = listed.clamp(1, 3).to_string();
        let amqp = AmqpSettings {
            quorum_size: env.parse("AMQP_QUORUM_SIZE", &default_quorum),
            url,
            prefix: env.string("AMQP_PREFIX", "refresh"),
            confirm_timeout: env.millis("PUBLISH_CONFIRM_TIMEOUT_MS", 3_000),
            retry_tiers: env.seconds_list("RETRY_TIERS_SECS", "10,60,600"),
            // The schedule the Standard Webhooks specification suggests: 5 s, 5 min, 30 min,
            // 2 h, 5 h, 10 h (the first attempt is immediate).
            webhook_retry_tiers: env
                .seconds_list("WEBHOOK_RETRY_TIERS_SECS", "5,300,1800,7200,18000,36000"),
            report_deadline: env.secs("REPORT_DEADLINE_SECS", 900),
        };
        if let Err(error) = nodes {
            env.refuse(&error.to_string());
        }
        if amqp.quorum_size == 0 || amqp.quorum_size > MAX_QUORUM_SIZE {
            env.refuse(&format!("AMQP_QUORUM_SIZE: must be 1 to {MAX_QUORUM_SIZE}"));
        }
        if !amqp.prefix.starts_with("refresh") {
            env.refuse("AMQP_PREFIX: must start with 'refresh'");
        }
        if amqp.report_deadline.is_zero() || amqp.report_deadline > MAX_REPORT_DEADLINE {
            env.refuse("REPORT_DEADLINE_SECS: must be 1 to 86400");
        }
        amqp
    }
}

impl Load for MongoSettings {
    fn read(env: &mut Env<'_>) -> MongoSettings {
        MongoSettings {
            uri: env.secret("MONGODB_URI", "mongodb://127.0.0.1:27017"),
            database: env.string("MONGODB_DB", "device_refresh"),
            server_timeout: env.millis("MONGODB_TIMEOUT_MS", 2_000),
        }
    }
}

/// The environment as a binary reads it: every problem is recorded, and reported together.
pub struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<String>,
}

impl Env<'_> {
    /// Records what is wrong with a variable (or a pair of them).
    pub fn refuse(&mut self, problem: &str) {
        self.errors.push(problem.to_owned());
    }

    pub fn string(&mut self, name: &str, default: &str) -> String {
        (self.lookup)(name).unwrap_or_else(|| default.to_owned())
    }

    pub fn secret(&mut self, name: &str, default: &str) -> SecretString {
        SecretString::from(self.string(name, default))
    }

    /// Parses `name`, recording an error (and returning the default) when it does not parse.
    /// The defaults are literals that always parse.
    pub fn parse<T: FromStr>(&mut self, name: &str, default: &str) -> T
    where
        T::Err: Display,
    {
        let raw = self.string(name, default);
        match raw.parse() {
            Ok(value) => value,
            Err(error) => {
                self.errors.push(format!("{name}: {error}"));
                match default.parse() {
                    Ok(value) => value,
                    Err(_) => unreachable!("default of {name} does not parse"),
                }
            }
        }
    }

    /// A non-empty comma-separated list.
    pub fn list<T: FromStr>(&mut self, name: &str, default: &str) -> Vec<T>
    where
        T::Err: Display,
    {
        let raw = self.string(name, default);
        let parsed: Result<Vec<T>, _> = raw.split(',').map(str::parse).collect();
        match parsed {
            Ok(items) if !items.is_empty() => items,
            Ok(_) => {
                self.errors.push(format!("{name}: must not be empty"));
                Vec::new()
            }
            Err(error) => {
                self.errors.push(format!("{name}: {error}"));
                Vec::new()
            }
        }
    }

    /// A comma-separated list of at most [`MAX_TIERS`] whole seconds, each 1 to
    /// [`MAX_TIER_SECS`].
    pub fn seconds_list(&mut self, name: &str, default: &str) -> Vec<Duration> {
        let raw = self.string(name, default);
        let parsed: Result<Vec<u64>, _> = raw.split(',').map(|s| s.trim().parse::<u64>()).collect();
        match parsed {
            Ok(seconds)
                if (1..=MAX_TIERS).contains(&seconds.len())
                    && seconds.iter().all(|s| (1..=MAX_TIER_SECS).contains(s)) =>
            {
                seconds.into_iter().map(Duration::from_secs).collect()
            }
            _ => {
                self.errors.push(format!(
                    "{name}: '{raw}' is not a list of 1 to {MAX_TIERS} seconds, each 1 to \
                     {MAX_TIER_SECS}, like {default}"
                ));
                Vec::new()
            }
        }
    }

    pub fn millis(&mut self, name: &str, default: u64) -> Duration {
        Duration::from_millis(self.parse(name, &default.to_string()))
    }

    pub fn secs(&mut self, name: &str, default: u64) -> Duration {
        Duration::from_secs(self.parse(name, &default.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn core(vars: &[(&str, &str)]) -> Result<Core, SettingsError> {
        Core::from_pairs(vars)
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = core(&[]).expect("defaults are valid");
        assert_eq!(
            s.amqp.url.expose_secret(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(s.mongo.database, "device_refresh");
        assert_eq!(s.log_format, LogFormat::Pretty);
        assert_eq!(
            s.amqp.retry_tiers,
            [10, 60, 600].map(Duration::from_secs).to_vec()
        );
        assert_eq!(s.amqp.quorum_size, 1, "one node listed");
    }

    #[test]
    fn quorum_size_defaults_to_the_listed_nodes_up_to_three_and_is_bounded() {
        let nodes = |n: usize| {
            (1..=n)
                .map(|k| format!("amqp://u:p@rabbit-{k}:5672/%2f"))
                .collect::<Vec<_>>()
                .join(",")
        };
        for (listed, quorum) in [(2, 2), (3, 3), (5, 3)] {
            let s = core(&[("AMQP_URL", &nodes(listed))]).expect("a cluster");
            assert_eq!(s.amqp.quorum_size, quorum, "{listed} nodes");
        }
        let s = core(&[("AMQP_URL", &nodes(5)), ("AMQP_QUORUM_SIZE", "5")]).expect("five");
        assert_eq!(s.amqp.quorum_size, 5);
        for bad in ["0", "8", "three"] {
            let text = core(&[("AMQP_QUORUM_SIZE", bad)])
                .expect_err(bad)
                .to_string();
            assert!(text.contains("AMQP_QUORUM_SIZE"), "{text}");
        }
    }

    #[test]
    fn amqp_url_names_one_node_or_several_and_a_bad_one_is_refused_without_its_password() {
        let cluster = "amqp://u:p@rabbit-1:5672/%2f, amqp://u:p@rabbit-2:5672/%2f";
        let s = core(&[("AMQP_URL", cluster)]).expect("a cluster");
        assert_eq!(crate::broker::nodes(&s.amqp.url).expect("nodes").len(), 2);
        let text = core(&[(
            "AMQP_URL",
            "amqp://u:hunter2@rabbit-1/%2f,http://u:hunter2@x",
        )])
        .expect_err("a node that is not AMQP")
        .to_string();
        assert!(
            text.contains("AMQP_URL") && text.contains("node 2"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn every_bad_variable_is_reported_at_once() {
        let err = core(&[
            ("LOG_FORMAT", "xml"),
            ("AMQP_PREFIX", "jobs"),
            ("RETRY_TIERS_SECS", "10,soon"),
            ("MONGODB_TIMEOUT_MS", "hunter2"),
        ])
        .expect_err("invalid");
        let text = err.to_string();
        for name in [
            "LOG_FORMAT",
            "AMQP_PREFIX",
            "RETRY_TIERS_SECS",
            "MONGODB_TIMEOUT_MS",
        ] {
            assert!(text.contains(name), "{name}: {text}");
        }
        assert_eq!(err.0.len(), 4);
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let s = core(&[("MONGODB_URI", "mongodb://root:hunter2@db")]).expect("valid");
        let debug = format!("{s:?}");
        assert!(!debug.contains("hunter2"));
        assert!(!debug.contains("guest:guest"));
    }
}
