//! The api's settings: the core every binary reads, and the api's own section (README,
//! Configuration).

use axum::http::HeaderName;
use refresh_shared::{
    channel::ChannelPolicy,
    settings::{self, Core, Env, Load, WebhookSettings},
};
use std::{
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    path::PathBuf,
    time::Duration,
};

#[derive(Debug, Clone)]
pub struct Settings {
    pub core: Core,
    pub api: ApiSettings,
    pub device: DeviceListenerSettings,
    pub webhooks: WebhookSettings,
    /// After SIGTERM/SIGINT, how long requests in flight may take to finish.
    pub shutdown_grace: Duration,
}

impl Load for Settings {
    fn read(env: &mut Env<'_>) -> Settings {
        Settings {
            core: Core::read(env),
            api: ApiSettings::read(env),
            device: DeviceListenerSettings::read(env),
            webhooks: WebhookSettings::read(env),
            shutdown_grace: settings::shutdown_grace(env),
        }
    }
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
    /// A category reported this recently is not pushed again: the request is answered with the
    /// job that pushed it.
    pub refresh_skip_window: Duration,
    /// How long a token or organization read from MongoDB is reused (0: read every time). A
    /// revocation reaches running apis at once through the invalidations exchange; this bounds
    /// how stale a cache can be when that announcement is missed.
    pub auth_cache_ttl: Duration,
}

impl Load for ApiSettings {
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
            refresh_skip_window: settings::refresh_skip_window(env),
            auth_cache_ttl: settings::auth_cache_ttl(env),
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

/// The listener devices report to (`DEVICE_ADDR`): the main listener's connection, header
/// and timeout limits, with its own body limit, TLS and rate limit per device.
#[derive(Debug, Clone)]
pub struct DeviceListenerSettings {
    pub addr: SocketAddr,
    /// Certificate chain and private key (PEM) to serve TLS with; plain HTTP without them
    /// (behind a terminating proxy, or on a laptop).
    pub tls: Option<TlsFiles>,
    /// Body limit of a report.
    pub report_body_limit_bytes: usize,
    /// Reports (and OMA-DM messages) per device.
    pub rate_limit_per_second: NonZeroU32,
    pub rate_limit_burst: NonZeroU32,
    /// The largest SyncML message a device may send (`MDM_MAX_MSG_BYTES`); larger is 413.
    pub mdm_max_msg_bytes: usize,
    /// The WNS channels a device may report in a session (`WNS_CHANNEL_HOST_SUFFIXES`).
    pub wns_channels: ChannelPolicy,
    /// The CA (PEM, one or more certificates) OMA-DM clients' certificates are verified
    /// against; without it the OMA-DM route admits no device.
    pub client_ca: Option<PathBuf>,
    /// TLS-terminating proxies trusted to pass on the client certificate they verified
    /// (`DEVICE_TRUSTED_PROXIES`): opt-in, and only from these addresses.
    pub trusted_proxies: Vec<IpAddr>,
    /// The header such a proxy puts the certificate in, URL-encoded PEM
    /// (`DEVICE_CLIENT_CERT_HEADER`, as nginx's `$ssl_client_escaped_cert`).
    pub client_cert_header: HeaderName,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `DEVICE_TRUSTED_PROXIES`: IP addresses, comma-separated; empty (the default) trusts none.
fn trusted_proxies(env: &mut Env<'_>) -> Vec<IpAddr> {
    let raw = env.string("DEVICE_TRUSTED_PROXIES", "");
    let parsed: Result<Vec<IpAddr>, _> = raw
        .split(',')
        .map(str::trim)
        .filter(|address| !address.is_empty())
        .map(str::parse)
        .collect();
    parsed.unwrap_or_else(|error| {
        env.refuse(&format!(
            "DEVICE_TRUSTED_PROXIES: {error} (IP addresses, comma-separated)"
        ));
        Vec::new()
    })
}

/// The largest `REPORT_BODY_LIMIT_BYTES` and `MDM_MAX_MSG_BYTES`: a report or a SyncML
/// message is read whole before it is checked.
const MAX_REPORT_BODY_LIMIT: usize = 16 * 1024 * 1024;

impl Load for DeviceListenerSettings {
    fn read(env: &mut Env<'_>) -> DeviceListenerSettings {
        let cert: String = env.string("DEVICE_TLS_CERT", "");
        let key: String = env.string("DEVICE_TLS_KEY", "");
        let tls = match (cert.is_empty(), key.is_empty()) {
            (true, true) => None,
            (false, false) => Some(TlsFiles {
                cert: cert.into(),
                key: key.into(),
            }),
            _ => {
                env.refuse("DEVICE_TLS_CERT and DEVICE_TLS_KEY: set both, or neither");
                None
            }
        };
        let device = DeviceListenerSettings {
            addr: env.parse("DEVICE_ADDR", "127.0.0.1:8443"),
            tls,
            report_body_limit_bytes: env.parse("REPORT_BODY_LIMIT_BYTES", "1048576"),
            rate_limit_per_second: env.parse("DEVICE_RATE_LIMIT_PER_SECOND", "2"),
            rate_limit_burst: env.parse("DEVICE_RATE_LIMIT_BURST", "20"),
            mdm_max_msg_bytes: env.parse("MDM_MAX_MSG_BYTES", "1048576"),
            wns_channels: settings::wns_channels(env),
            client_ca: Some(env.string("DEVICE_CLIENT_CA", ""))
                .filter(|path| !path.is_empty())
                .map(PathBuf::from),
            trusted_proxies: trusted_proxies(env),
            client_cert_header: env.parse("DEVICE_CLIENT_CERT_HEADER", "x-client-cert"),
        };
        // A client certificate reaches the api through its own TLS, or from a trusted proxy.
        if device.client_ca.is_some() && device.tls.is_none() && device.trusted_proxies.is_empty() {
            env.refuse(
                "DEVICE_CLIENT_CA: needs DEVICE_TLS_CERT and DEVICE_TLS_KEY, or DEVICE_TRUSTED_PROXIES (client certificates come with TLS)",
            );
        }
        if !device.trusted_proxies.is_empty() && device.client_ca.is_none() {
            env.refuse(
                "DEVICE_TRUSTED_PROXIES: needs DEVICE_CLIENT_CA to verify what the proxies pass on",
            );
        }
        if !(1..=MAX_REPORT_BODY_LIMIT).contains(&device.report_body_limit_bytes) {
            env.refuse("REPORT_BODY_LIMIT_BYTES: must be 1 to 16777216");
        }
        if !(1..=MAX_REPORT_BODY_LIMIT).contains(&device.mdm_max_msg_bytes) {
            env.refuse("MDM_MAX_MSG_BYTES: must be 1 to 16777216");
        }
        device
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
        assert_eq!(s.api.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(s.api.body_limit_bytes, 16 * 1024);
        assert_eq!(s.api.refresh_skip_window, Duration::from_secs(30));
        assert_eq!(s.shutdown_grace, Duration::from_secs(10));
        assert_eq!(s.device.addr.to_string(), "127.0.0.1:8443");
        assert_eq!(s.device.report_body_limit_bytes, 1024 * 1024);
        assert!(s.device.tls.is_none());
    }

    #[test]
    fn device_tls_needs_both_files_and_reports_stay_bounded() {
        let err = settings(&[
            ("DEVICE_TLS_CERT", "/etc/cert.pem"),
            ("REPORT_BODY_LIMIT_BYTES", "999999999"),
        ])
        .expect_err("invalid");
        let text = err.to_string();
        assert!(text.contains("DEVICE_TLS_KEY"), "{text}");
        assert!(text.contains("REPORT_BODY_LIMIT_BYTES"), "{text}");
    }

    #[test]
    fn client_certificates_come_with_tls_or_from_a_trusted_proxy_and_are_always_verified() {
        let text = settings(&[("DEVICE_CLIENT_CA", "/etc/ca.pem")])
            .expect_err("a CA without TLS")
            .to_string();
        assert!(text.contains("DEVICE_CLIENT_CA"), "{text}");
        let text = settings(&[("DEVICE_TRUSTED_PROXIES", "10.0.0.1")])
            .expect_err("a proxy without a CA")
            .to_string();
        assert!(text.contains("needs DEVICE_CLIENT_CA"), "{text}");
        let text = settings(&[
            ("DEVICE_TRUSTED_PROXIES", "10.0.0.1, proxy.local"),
            ("DEVICE_CLIENT_CA", "/etc/ca.pem"),
        ])
        .expect_err("a host name")
        .to_string();
        assert!(text.contains("DEVICE_TRUSTED_PROXIES"), "{text}");
        let s = settings(&[
            ("DEVICE_TRUSTED_PROXIES", "10.0.0.1, ::1"),
            ("DEVICE_CLIENT_CA", "/etc/ca.pem"),
            ("DEVICE_CLIENT_CERT_HEADER", "X-SSL-Client-Cert"),
        ])
        .expect("a proxy with a CA");
        assert_eq!(s.device.trusted_proxies.len(), 2);
        assert_eq!(s.device.client_cert_header.as_str(), "x-ssl-client-cert");
    }

    #[test]
    fn a_webhook_signing_key_must_be_long_enough_and_is_optional() {
        let s = settings(&[]).expect("defaults are valid");
        assert!(s.webhooks.signing_key.is_none());
        assert!(!s.webhooks.url_policy.allow_insecure);
        for (key, problem) in [
            ("c2hvcnQ=", "at least 32"),
            ("not base64!", "is not base64"),
        ] {
            let text = settings(&[("WEBHOOK_SIGNING_KEY", key), ("API_ADDR", "nowhere")])
                .expect_err("a bad key")
                .to_string();
            assert!(
                text.contains("WEBHOOK_SIGNING_KEY") && text.contains(problem),
                "{text}"
            );
            assert!(
                text.contains("API_ADDR"),
                "reported with the others: {text}"
            );
            assert!(!text.contains(key), "the key is not echoed: {text}");
        }
        let s = settings(&[
            (
                "WEBHOOK_SIGNING_KEY",
                "ZGV2aWNlLXJlZnJlc2ggdGVzdCBzaWduaW5nIGtleSE=",
            ),
            ("WEBHOOK_ALLOW_INSECURE", "true"),
        ])
        .expect("a 32-byte key");
        assert!(s.webhooks.signing_key.is_some() && s.webhooks.url_policy.allow_insecure);
        // Nothing of the key in the settings' debug form.
        assert!(
            !format!("{:?}", s.webhooks).contains("ZGV2"),
            "{:?}",
            s.webhooks
        );
    }

    #[test]
    fn every_bad_variable_of_every_section_is_reported_at_once() {
        let err = settings(&[
            ("API_ADDR", "nowhere"),
            ("LOG_FORMAT", "xml"),
            ("AMQP_PREFIX", "jobs"),
            ("BODY_LIMIT_BYTES", "9000000"),
        ])
        .expect_err("invalid");
        let text = err.to_string();
        for name in ["API_ADDR", "LOG_FORMAT", "AMQP_PREFIX", "BODY_LIMIT_BYTES"] {
            assert!(text.contains(name), "{name}: {text}");
        }
        assert_eq!(err.0.len(), 4);
    }

    #[test]
    fn the_workers_variables_are_not_the_apis_concern() {
        settings(&[
            ("WORKER_PREFETCH", "banana"),
            ("PUSH_RETRY_INITIAL_MS", "-1"),
        ])
        .expect("the api reads none of them");
    }
}
