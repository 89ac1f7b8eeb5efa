//! The one `Settings` every binary reads from the environment (README, Configuration), validated
//! at start.

use crate::{channel::ChannelPolicy, retry::RetryPolicy};
use secrecy::SecretString;
use std::{fmt::Display, net::SocketAddr, num::NonZeroU32, str::FromStr, time::Duration};
use url::Url;

/// The longest `WORKER_HOLD_LIMIT_MS` may be.
const MAX_HOLD_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub mongo: MongoSettings,
    pub api: ApiSettings,
    pub worker: WorkerSettings,
    pub gateways: GatewaySettings,
    pub log_format: LogFormat,
    /// After SIGTERM/SIGINT, how long in-flight requests and jobs may take to finish before
    /// the rest is handed back (jobs are redelivered) and the process exits.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// Holds the broker password, hence secret.
    pub url: SecretString,
    /// Prefix of every exchange and queue name; must start with `refresh`.
    pub prefix: String,
    /// How long a publish may wait for the broker's confirm before the caller gets a 503.
    pub confirm_timeout: Duration,
    /// Delays of the retry queues, in order: a job whose in-process retries are spent waits in
    /// the next tier instead of holding a consumer slot.
    pub retry_tiers: Vec<Duration>,
}

#[derive(Debug, Clone)]
pub struct MongoSettings {
    pub uri: SecretString,
    pub database: String,
    /// How long an operation waits for a reachable server before it counts as an outage.
    pub server_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub addr: SocketAddr,
    pub body_limit_bytes: usize,
    /// Bytes of request headers (names and values) a request may carry.
    pub header_limit_bytes: usize,
    /// Longest wait for the next piece of a request body: a slow client cannot hold a
    /// connection and a request slot by trickling its body.
    pub body_read_timeout: Duration,
    /// Requests served at once; the next is answered 503 at once rather than queued.
    pub max_in_flight_requests: usize,
    /// Longest wait for a request's headers, counted from when the connection is ready for
    /// one (so also how long an idle keep-alive connection is kept): a client trickling its
    /// headers cannot hold a connection.
    pub header_read_timeout: Duration,
    /// Connections open at once; the next is answered 503 and closed.
    pub max_connections: usize,
    /// Longest a caller waits for an answer. Past it the answer is 503 5040, and the request's
    /// work still runs to its end: cutting it between the claim and the publish would strand
    /// the device's categories.
    pub request_timeout: Duration,
    /// Body limit of `POST …/refresh-batches` (up to 100,000 ids).
    pub bulk_body_limit_bytes: usize,
    /// `POST …/refresh-batches` served at once (their bodies are megabytes each); the next is
    /// answered 503 5030.
    pub bulk_max_in_flight: usize,
    /// Requests per token.
    pub rate_limit_per_second: NonZeroU32,
    pub rate_limit_burst: NonZeroU32,
    /// Requests per organization, all its tokens together: one tenant cannot take the api
    /// from the others by spreading its load over many tokens.
    pub organization_rate_limit_per_second: NonZeroU32,
    pub organization_rate_limit_burst: NonZeroU32,
    /// Failed authentications per client address: past them, the address's requests are
    /// refused (429) before any token lookup, so unknown tokens cannot make the database work.
    pub auth_failure_rate_limit_per_second: NonZeroU32,
    pub auth_failure_burst: NonZeroU32,
    /// A category pushed this recently is not pushed again: the request is answered with the
    /// job that pushed it.
    pub refresh_skip_window: Duration,
    /// How long a token or organization read from MongoDB is reused (0: read every time). A
    /// revocation reaches running apis at once through the invalidations exchange; this bounds
    /// how stale a cache can be when that announcement is missed.
    pub auth_cache_ttl: Duration,
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub addr: SocketAddr,
    /// Unacked deliveries the broker may hand this worker at once.
    pub prefetch: u16,
    /// Interactive jobs processed at once; never more than `prefetch`.
    pub concurrency: usize,
    /// Bulk jobs processed at once, on top of the interactive slots: the bulk lane's bounded
    /// share, so a draining batch never takes a single-device request's slot.
    pub bulk_concurrency: usize,
    /// Devices a batch expander looks up, records and publishes per checkpoint.
    pub batch_chunk_size: usize,
    /// The queues this worker consumes: all by default; a deployment can dedicate workers to
    /// the interactive lane, the bulk lane or batch expansion.
    pub queues: Vec<WorkQueue>,
    pub push_timeout: Duration,
    pub push_retry: RetryPolicy,
    /// A category not pushed this long after the request ends `expired`.
    pub job_max_age: Duration,
    /// Longest a delivery is held while the database (or, for an expansion, the broker) is
    /// away before it is handed back to the queue: RabbitMQ closes the channel of a consumer
    /// that holds a delivery past its consumer timeout (30 minutes by default).
    pub hold_limit: Duration,
}

/// A queue a worker can consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkQueue {
    Interactive,
    Bulk,
    Batches,
}

impl FromStr for WorkQueue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "interactive" => Ok(WorkQueue::Interactive),
            "bulk" => Ok(WorkQueue::Bulk),
            "batches" => Ok(WorkQueue::Batches),
            other => Err(format!("'{other}' is not interactive, bulk or batches")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct GatewaySettings {
    pub agent_url: Url,
    /// Pushes per second this worker sends to the agent gateway, at most.
    pub agent_rate_limit: NonZeroU32,
    /// Pushes per second this worker sends to WNS, at most.
    pub wns_rate_limit: NonZeroU32,
    pub wns_token_url: Url,
    pub wns_client_id: String,
    pub wns_client_secret: SecretString,
    /// The WNS channel URIs a device may be given and the worker may push to.
    pub wns_channels: ChannelPolicy,
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

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests can build them without touching the process
    /// environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let mut env = Env {
            lookup: &lookup,
            errors: Vec::new(),
        };
        let settings = Settings {
            amqp: AmqpSettings::read(&mut env),
            mongo: MongoSettings::read(&mut env),
            api: ApiSettings::read(&mut env),
            worker: WorkerSettings::read(&mut env),
            gateways: GatewaySettings::read(&mut env),
            log_format: env.parse("LOG_FORMAT", "pretty"),
            shutdown_grace: env.millis("SHUTDOWN_GRACE_MS", 10_000),
        };
        if env.errors.is_empty() {
            Ok(settings)
        } else {
            Err(SettingsError(env.errors))
        }
    }
}

// Each section reads its own variables and records what is wrong with them, each alone and
// against each other.

impl AmqpSettings {
    fn read(env: &mut Env<'_>) -> AmqpSettings {
        let amqp = AmqpSettings {
            url: env.secret("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            prefix: env.string("AMQP_PREFIX", "refresh"),
            confirm_timeout: env.millis("PUBLISH_CONFIRM_TIMEOUT_MS", 3_000),
            retry_tiers: env.seconds_list("RETRY_TIERS_SECS", "10,60,600"),
        };
        if !amqp.prefix.starts_with("refresh") {
            env.refuse("AMQP_PREFIX: must start with 'refresh'");
        }
        amqp
    }
}

impl MongoSettings {
    fn read(env: &mut Env<'_>) -> MongoSettings {
        MongoSettings {
            uri: env.secret("MONGODB_URI", "mongodb://127.0.0.1:27017"),
            database: env.string("MONGODB_DB", "device_refresh"),
            server_timeout: env.millis("MONGODB_TIMEOUT_MS", 2_000),
        }
    }
}

impl ApiSettings {
    fn read(env: &mut Env<'_>) -> ApiSettings {
        let api = ApiSettings {
            addr: env.parse("API_ADDR", "127.0.0.1:8080"),
            body_limit_bytes: env.parse("BODY_LIMIT_BYTES", "16384"),
            header_limit_bytes: env.parse("HEADER_LIMIT_BYTES", "16384"),
            body_read_timeout: env.millis("BODY_READ_TIMEOUT_MS", 10_000),
            max_in_flight_requests: env.parse("MAX_IN_FLIGHT_REQUESTS", "1024"),
            header_read_timeout: env.millis("HEADER_READ_TIMEOUT_MS", 10_000),
            max_connections: env.parse("MAX_CONNECTIONS", "4096"),
            request_timeout: env.millis("REQUEST_TIMEOUT_MS", 15_000),
            bulk_body_limit_bytes: env.parse("BULK_BODY_LIMIT_BYTES", "8388608"),
            bulk_max_in_flight: env.parse("BULK_MAX_IN_FLIGHT", "4"),
            rate_limit_per_second: env.parse("RATE_LIMIT_PER_SECOND", "50"),
            rate_limit_burst: env.parse("RATE_LIMIT_BURST", "100"),
            organization_rate_limit_per_second: env.parse("ORG_RATE_LIMIT_PER_SECOND", "500"),
            organization_rate_limit_burst: env.parse("ORG_RATE_LIMIT_BURST", "1000"),
            auth_failure_rate_limit_per_second: env
                .parse("AUTH_FAILURE_RATE_LIMIT_PER_SECOND", "10"),
            auth_failure_burst: env.parse("AUTH_FAILURE_BURST", "100"),
            refresh_skip_window: env.secs("REFRESH_SKIP_WINDOW_SECS", 30),
            auth_cache_ttl: env.millis("AUTH_CACHE_TTL_MS", 1_000),
        };
        if api.max_in_flight_requests == 0 {
            env.refuse("MAX_IN_FLIGHT_REQUESTS: must be at least 1");
        }
        if api.bulk_max_in_flight == 0 {
            env.refuse("BULK_MAX_IN_FLIGHT: must be at least 1");
        }
        if api.max_connections == 0 {
            env.refuse("MAX_CONNECTIONS: must be at least 1");
        }
        if api.header_read_timeout.is_zero() || api.request_timeout.is_zero() {
            env.refuse("HEADER_READ_TIMEOUT_MS and REQUEST_TIMEOUT_MS: must be at least 1");
        }
        // The wrong way round, this pair silently does something else than the operator wrote.
        if api.body_limit_bytes > api.bulk_body_limit_bytes {
            env.refuse(
                "BODY_LIMIT_BYTES: must not exceed BULK_BODY_LIMIT_BYTES (the batch route's own limit)",
            );
        }
        api
    }
}

impl WorkerSettings {
    fn read(env: &mut Env<'_>) -> WorkerSettings {
        let worker = WorkerSettings {
            addr: env.parse("WORKER_ADDR", "127.0.0.1:8081"),
            prefetch: env.parse("WORKER_PREFETCH", "512"),
            concurrency: env.parse("WORKER_CONCURRENCY", "256"),
            bulk_concurrency: env.parse("WORKER_BULK_CONCURRENCY", "8"),
            batch_chunk_size: env.parse("BATCH_CHUNK_SIZE", "500"),
            queues: env.list("WORKER_QUEUES", "interactive,bulk,batches"),
            push_timeout: env.millis("PUSH_TIMEOUT_MS", 5_000),
            push_retry: RetryPolicy {
                initial: env.millis("PUSH_RETRY_INITIAL_MS", 500),
                max_interval: env.millis("PUSH_RETRY_MAX_INTERVAL_MS", 5_000),
                max_elapsed: env.millis("PUSH_RETRY_MAX_ELAPSED_MS", 30_000),
                max_attempts: env.parse("PUSH_MAX_ATTEMPTS", "5"),
            },
            job_max_age: env.secs("JOB_MAX_AGE_SECS", 3_600),
            hold_limit: env.millis("WORKER_HOLD_LIMIT_MS", 300_000),
        };
        if worker.prefetch == 0 || worker.concurrency == 0 {
            env.refuse("WORKER_PREFETCH and WORKER_CONCURRENCY: must be at least 1");
        } else if worker.concurrency > usize::from(worker.prefetch) {
            env.refuse("WORKER_CONCURRENCY: must not exceed WORKER_PREFETCH");
        }
        if worker.bulk_concurrency == 0 || worker.bulk_concurrency > usize::from(u16::MAX / 2) {
            env.refuse("WORKER_BULK_CONCURRENCY: must be between 1 and 32767");
        }
        if !(1..=10_000).contains(&worker.batch_chunk_size) {
            env.refuse("BATCH_CHUNK_SIZE: must be between 1 and 10000");
        }
        // Nested holds (a result being written, then the job tried again) can add up to twice
        // the limit; twice the cap stays below RabbitMQ's default 30-minute consumer timeout.
        if worker.hold_limit.is_zero() || worker.hold_limit > MAX_HOLD_LIMIT {
            env.refuse("WORKER_HOLD_LIMIT_MS: must be between 1 and 600000 (10 minutes)");
        }
        let retry = &worker.push_retry;
        if retry.max_attempts == 0 {
            env.refuse("PUSH_MAX_ATTEMPTS: must be at least 1");
        }
        // The wrong way round, a longer first wait, or a wait longer than the whole budget, is
        // silently never taken.
        if retry.initial > retry.max_interval || retry.max_interval > retry.max_elapsed {
            env.refuse(
                "PUSH_RETRY_INITIAL_MS <= PUSH_RETRY_MAX_INTERVAL_MS <= PUSH_RETRY_MAX_ELAPSED_MS: \
                 must hold (a longer first wait, or a wait longer than the whole budget, is never \
                 taken)",
            );
        }
        worker
    }
}

impl GatewaySettings {
    fn read(env: &mut Env<'_>) -> GatewaySettings {
        GatewaySettings {
            agent_url: env.parse("AGENT_GATEWAY_URL", "http://127.0.0.1:8090"),
            agent_rate_limit: env.parse("AGENT_RATE_LIMIT_PER_SECOND", "1000"),
            wns_rate_limit: env.parse("WNS_RATE_LIMIT_PER_SECOND", "1000"),
            wns_token_url: env.parse("WNS_TOKEN_URL", "http://127.0.0.1:8090/wns/token"),
            wns_client_id: env.string("WNS_CLIENT_ID", ""),
            wns_client_secret: env.secret("WNS_CLIENT_SECRET", ""),
            wns_channels: env.parse("WNS_CHANNEL_HOST_SUFFIXES", ".notify.windows.com"),
        }
    }
}

struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<String>,
}

impl Env<'_> {
    /// Records what is wrong with a variable (or a pair of them).
    fn refuse(&mut self, problem: &str) {
        self.errors.push(problem.to_owned());
    }

    fn string(&mut self, name: &str, default: &str) -> String {
        (self.lookup)(name).unwrap_or_else(|| default.to_owned())
    }

    fn secret(&mut self, name: &str, default: &str) -> SecretString {
        SecretString::from(self.string(name, default))
    }

    /// Parses `name`, recording an error (and returning the default) when it does not parse.
    /// The defaults are literals that always parse.
    fn parse<T: FromStr>(&mut self, name: &str, default: &str) -> T
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
    fn list<T: FromStr>(&mut self, name: &str, default: &str) -> Vec<T>
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

    /// A comma-separated list of whole seconds, each at least 1.
    fn seconds_list(&mut self, name: &str, default: &str) -> Vec<Duration> {
        let raw = self.string(name, default);
        let parsed: Result<Vec<u64>, _> = raw.split(',').map(|s| s.trim().parse::<u64>()).collect();
        match parsed {
            Ok(seconds) if !seconds.is_empty() && seconds.iter().all(|&s| s > 0) => {
                seconds.into_iter().map(Duration::from_secs).collect()
            }
            _ => {
                self.errors.push(format!(
                    "{name}: '{raw}' is not a list of seconds like {default}"
                ));
                Vec::new()
            }
        }
    }

    fn millis(&mut self, name: &str, default: u64) -> Duration {
        Duration::from_millis(self.parse(name, &default.to_string()))
    }

    fn secs(&mut self, name: &str, default: u64) -> Duration {
        Duration::from_secs(self.parse(name, &default.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = settings(&[]).expect("defaults are valid");
        assert_eq!(
            s.amqp.url.expose_secret(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(s.mongo.database, "device_refresh");
        assert_eq!(s.api.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.worker.addr.to_string(), "127.0.0.1:8081");
        assert_eq!(s.api.body_limit_bytes, 16 * 1024);
        assert_eq!(s.gateways.agent_url.as_str(), "http://127.0.0.1:8090/");
        assert_eq!(
            s.gateways.wns_token_url.as_str(),
            "http://127.0.0.1:8090/wns/token"
        );
        assert_eq!(s.log_format, LogFormat::Pretty);
        assert_eq!(
            s.amqp.retry_tiers,
            [10, 60, 600].map(Duration::from_secs).to_vec()
        );
    }

    #[test]
    fn settings_that_contradict_each_other_are_refused() {
        let err = settings(&[
            ("PUSH_RETRY_INITIAL_MS", "6000"),
            ("BODY_LIMIT_BYTES", "9000000"),
        ])
        .expect_err("contradictory");
        let text = err.to_string();
        for name in ["PUSH_RETRY_INITIAL_MS", "BODY_LIMIT_BYTES"] {
            assert!(text.contains(name), "{name}: {text}");
        }
        assert_eq!(err.0.len(), 2);
        assert!(settings(&[("PUSH_RETRY_MAX_ELAPSED_MS", "1000")]).is_err());
    }

    #[test]
    fn every_bad_variable_is_reported_at_once_without_echoing_secrets() {
        let err = settings(&[
            ("API_ADDR", "nowhere"),
            ("LOG_FORMAT", "xml"),
            ("AMQP_PREFIX", "jobs"),
            ("RETRY_TIERS_SECS", "10,soon"),
            ("WNS_CLIENT_SECRET", "hunter2"),
        ])
        .expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("API_ADDR"), "{text}");
        assert!(text.contains("LOG_FORMAT"), "{text}");
        assert!(text.contains("AMQP_PREFIX"), "{text}");
        assert!(text.contains("RETRY_TIERS_SECS"), "{text}");
        assert_eq!(err.0.len(), 4);
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let s = settings(&[("WNS_CLIENT_SECRET", "hunter2")]).expect("valid");
        let debug = format!("{s:?}");
        assert!(!debug.contains("hunter2"));
        assert!(!debug.contains("guest:guest"));
    }
}
