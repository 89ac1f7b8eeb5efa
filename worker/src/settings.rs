//! The worker's settings: the core every binary reads, the worker's own section and the push
//! gateways' (README, Configuration).

use refresh_shared::{
    channel::ChannelPolicy,
    retry::RetryPolicy,
    settings::{self, Core, Env, Load, WebhookSettings},
};
use secrecy::SecretString;
use std::{net::SocketAddr, num::NonZeroU32, str::FromStr, time::Duration};
use url::Url;

/// The longest `WORKER_HOLD_LIMIT_MS` may be.
const MAX_HOLD_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct Settings {
    pub core: Core,
    pub worker: WorkerSettings,
    pub gateways: GatewaySettings,
    /// Signing and the URLs that may be called (shared with the api).
    pub webhooks: WebhookSettings,
    /// How deliveries are made.
    pub delivery: DeliverySettings,
    /// A batch's device whose categories were reported this recently is skipped (coalesced).
    pub refresh_skip_window: Duration,
    /// After SIGTERM/SIGINT, how long jobs in flight may take to finish before the rest is
    /// handed back (redelivered).
    pub shutdown_grace: Duration,
}

impl Load for Settings {
    fn read(env: &mut Env<'_>) -> Settings {
        Settings {
            core: Core::read(env),
            worker: WorkerSettings::read(env),
            gateways: GatewaySettings::read(env),
            webhooks: WebhookSettings::read(env),
            delivery: DeliverySettings::read(env),
            refresh_skip_window: settings::refresh_skip_window(env),
            shutdown_grace: settings::shutdown_grace(env),
        }
    }
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
    /// Device reports applied at once.
    pub report_concurrency: usize,
    /// Further pushes of a category whose device did not report by the deadline, before it
    /// ends `unreported`.
    pub repush_limit: u32,
}

/// How the worker delivers webhooks.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// The longest one attempt may take, from connecting to the receiver's status line.
    pub timeout: Duration,
    /// Deliveries attempted at once by this worker.
    pub concurrency: usize,
    /// Deliveries attempted at once to any one endpoint by this worker: a slow receiver holds
    /// at most these slots; the others stay free for everyone else.
    pub endpoint_concurrency: usize,
}

/// The longest `WEBHOOK_TIMEOUT_MS` may be.
const MAX_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(60);

impl Load for DeliverySettings {
    fn read(env: &mut Env<'_>) -> DeliverySettings {
        let delivery = DeliverySettings {
            timeout: env.millis("WEBHOOK_TIMEOUT_MS", 10_000),
            concurrency: env.parse("WEBHOOK_CONCURRENCY", "32"),
            endpoint_concurrency: env.parse("WEBHOOK_ENDPOINT_CONCURRENCY", "8"),
        };
        if delivery.timeout.is_zero() || delivery.timeout > MAX_WEBHOOK_TIMEOUT {
            env.refuse("WEBHOOK_TIMEOUT_MS: must be between 1 and 60000");
        }
        if !(1..=1024).contains(&delivery.concurrency) {
            env.refuse("WEBHOOK_CONCURRENCY: must be between 1 and 1024");
        }
        if delivery.endpoint_concurrency == 0
            || delivery.endpoint_concurrency > delivery.concurrency
        {
            env.refuse("WEBHOOK_ENDPOINT_CONCURRENCY: must be between 1 and WEBHOOK_CONCURRENCY");
        }
        delivery
    }
}

/// The most `REPUSH_LIMIT` may be: a device that did not answer ten wake-ups will not answer
/// the eleventh.
const MAX_REPUSH_LIMIT: u32 = 10;

/// A queue a worker can consume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkQueue {
    Interactive,
    Bulk,
    Batches,
    Reports,
    Deadlines,
    Webhooks,
}

impl FromStr for WorkQueue {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "interactive" => Ok(WorkQueue::Interactive),
            "bulk" => Ok(WorkQueue::Bulk),
            "batches" => Ok(WorkQueue::Batches),
            "reports" => Ok(WorkQueue::Reports),
            "deadlines" => Ok(WorkQueue::Deadlines),
            "webhooks" => Ok(WorkQueue::Webhooks),
            other => Err(format!(
                "'{other}' is not interactive, bulk, batches, reports, deadlines or webhooks"
            )),
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

impl Load for WorkerSettings {
    fn read(env: &mut Env<'_>) -> WorkerSettings {
        let worker = WorkerSettings {
            addr: env.parse("WORKER_ADDR", "127.0.0.1:8081"),
            prefetch: env.parse("WORKER_PREFETCH", "512"),
            concurrency: env.parse("WORKER_CONCURRENCY", "256"),
            bulk_concurrency: env.parse("WORKER_BULK_CONCURRENCY", "8"),
            batch_chunk_size: env.parse("BATCH_CHUNK_SIZE", "500"),
            queues: env.list(
                "WORKER_QUEUES",
                "interactive,bulk,batches,reports,deadlines,webhooks",
            ),
            push_timeout: env.millis("PUSH_TIMEOUT_MS", 5_000),
            push_retry: RetryPolicy {
                initial: env.millis("PUSH_RETRY_INITIAL_MS", 500),
                max_interval: env.millis("PUSH_RETRY_MAX_INTERVAL_MS", 5_000),
                max_elapsed: env.millis("PUSH_RETRY_MAX_ELAPSED_MS", 30_000),
                max_attempts: env.parse("PUSH_MAX_ATTEMPTS", "5"),
            },
            job_max_age: env.secs("JOB_MAX_AGE_SECS", 3_600),
            hold_limit: env.millis("WORKER_HOLD_LIMIT_MS", 300_000),
            report_concurrency: env.parse("WORKER_REPORT_CONCURRENCY", "64"),
            repush_limit: env.parse("REPUSH_LIMIT", "2"),
        };
        if !(1..=4096).contains(&worker.report_concurrency) {
            env.refuse("WORKER_REPORT_CONCURRENCY: must be between 1 and 4096");
        }
        if worker.repush_limit > MAX_REPUSH_LIMIT {
            env.refuse("REPUSH_LIMIT: must be between 0 and 10");
        }
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

impl Load for GatewaySettings {
    fn read(env: &mut Env<'_>) -> GatewaySettings {
        GatewaySettings {
            agent_url: env.parse("AGENT_GATEWAY_URL", "http://127.0.0.1:8090"),
            agent_rate_limit: env.parse("AGENT_RATE_LIMIT_PER_SECOND", "1000"),
            wns_rate_limit: env.parse("WNS_RATE_LIMIT_PER_SECOND", "1000"),
            wns_token_url: env.parse("WNS_TOKEN_URL", "http://127.0.0.1:8090/wns/token"),
            wns_client_id: env.string("WNS_CLIENT_ID", ""),
            wns_client_secret: env.secret("WNS_CLIENT_SECRET", ""),
            wns_channels: settings::wns_channels(env),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, settings::SettingsError> {
        Settings::from_pairs(vars)
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = settings(&[]).expect("defaults are valid");
        assert_eq!(s.worker.addr.to_string(), "127.0.0.1:8081");
        assert_eq!(s.gateways.agent_url.as_str(), "http://127.0.0.1:8090/");
        assert_eq!(
            s.gateways.wns_token_url.as_str(),
            "http://127.0.0.1:8090/wns/token"
        );
        assert_eq!(s.refresh_skip_window, Duration::from_secs(30));
    }

    #[test]
    fn settings_that_contradict_each_other_are_refused() {
        let err = settings(&[
            ("PUSH_RETRY_INITIAL_MS", "6000"),
            ("WORKER_CONCURRENCY", "600"),
        ])
        .expect_err("contradictory");
        let text = err.to_string();
        for name in ["PUSH_RETRY_INITIAL_MS", "WORKER_CONCURRENCY"] {
            assert!(text.contains(name), "{name}: {text}");
        }
        assert_eq!(err.0.len(), 2);
        assert!(settings(&[("PUSH_RETRY_MAX_ELAPSED_MS", "1000")]).is_err());
    }

    #[test]
    fn the_apis_variables_are_not_the_workers_concern() {
        settings(&[("API_ADDR", "nowhere"), ("BODY_LIMIT_BYTES", "9000000")])
            .expect("the worker reads none of them");
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let s = settings(&[("WNS_CLIENT_SECRET", "hunter2")]).expect("valid");
        let debug = format!("{s:?}");
        assert!(!debug.contains("hunter2"));
        assert!(!debug.contains("guest:guest"));
    }
}
