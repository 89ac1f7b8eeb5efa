use crate::{
    audit::AuditLog,
    auth_cache::AuthCache,
    omadm::Conversations,
    org_allowance::OrgAllowance,
    rate_limit::RateLimits,
    settings::{ApiSettings, DeviceListenerSettings},
    tls::ClientCa,
};
use axum::http::HeaderName;
use refresh_events::Announcer;
use refresh_shared::{
    broker::{Publisher, Queues},
    channel::ChannelPolicy,
    settings::WebhookSettings,
    store::{DatabaseProbe, Store},
    telemetry::MetricsPage,
};
use std::net::IpAddr;
use std::sync::Arc;

/// What every handler can reach; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub store: Store,
    pub publisher: Arc<Publisher>,
    /// Reads the queues (`/metrics`, `/v1/ops/queues`) on the publisher's connection.
    pub queues: Queues,
    /// Requests per token and per organization, refilled continuously, in this process.
    pub rate_limits: RateLimits,
    /// Requests per organization across every api of the deployment.
    pub org_allowance: OrgAllowance,
    pub refresh_skip_window: std::time::Duration,
    /// `REQUEST_TIMEOUT_MS`: after it (and a margin) an unanswered idempotency key is free.
    pub request_timeout: std::time::Duration,
    pub auth_cache: AuthCache,
    pub audit: AuditLog,
    /// `/readyz`'s view of the database.
    pub database_probe: DatabaseProbe,
    pub metrics_page: MetricsPage,
    /// OMA-DM devices between the messages of their sessions.
    pub conversations: Conversations,
    /// The WNS channels a device may report (`WNS_CHANNEL_HOST_SUFFIXES`).
    pub wns_channels: ChannelPolicy,
    /// What vouches for an OMA-DM client's certificate (`DEVICE_CLIENT_CA`).
    pub client_ca: Option<ClientCa>,
    /// Proxies whose verified client certificate header is believed, and that header.
    pub trusted_proxies: Vec<IpAddr>,
    pub client_cert_header: HeaderName,
    pub webhooks: WebhookSettings,
    /// Tells webhook subscribers of the jobs and batches callers cancel.
    pub announcer: Announcer,
}

impl AppState {
    pub fn new(
        settings: &ApiSettings,
        device: &DeviceListenerSettings,
        store: Store,
        publisher: Arc<Publisher>,
        audit: AuditLog,
        client_ca: Option<ClientCa>,
        webhooks: WebhookSettings,
    ) -> AppState {
        AppState(Arc::new(Inner {
            database_probe: DatabaseProbe::new(store.clone()),
            announcer: Announcer::new(store.clone(), Arc::clone(&publisher)),
            metrics_page: MetricsPage::default(),
            store,
            queues: Queues::new(Arc::clone(&publisher)),
            publisher,
            rate_limits: RateLimits::new(settings, device),
            org_allowance: OrgAllowance::new(
                settings.organization_rate_limit_per_second,
                settings.organization_rate_limit_burst,
            ),
            refresh_skip_window: settings.refresh_skip_window,
            request_timeout: settings.request_timeout,
            auth_cache: AuthCache::new(settings.auth_cache_ttl),
            audit,
            conversations: Conversations::default(),
            wns_channels: device.wns_channels.clone(),
            client_ca,
            trusted_proxies: device.trusted_proxies.clone(),
            client_cert_header: device.client_cert_header.clone(),
            webhooks,
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.0
    }
}
