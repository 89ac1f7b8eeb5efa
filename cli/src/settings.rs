//! What `refreshctl` reads from the environment: the core every binary reads, and the two
//! variables of other binaries it acts on. It reads nothing else, so a bad value meant for the
//! api or the worker does not stop an operator's command.

use refresh_shared::{
    channel::ChannelPolicy,
    settings::{self, Core, Env, Load, WebhookSettings},
};
use std::time::Duration;

#[derive(Debug)]
pub struct Settings {
    pub core: Core,
    /// The WNS channel URIs `device create` accepts, as the worker will push to them.
    pub wns_channels: ChannelPolicy,
    /// How long running apis may still accept a token whose revocation they were not told of.
    pub auth_cache_ttl: Duration,
    /// What `webhook add` derives the secret from, and the URLs it accepts, as the api does.
    pub webhooks: WebhookSettings,
}

impl Load for Settings {
    fn read(env: &mut Env<'_>) -> Settings {
        Settings {
            core: Core::read(env),
            wns_channels: settings::wns_channels(env),
            auth_cache_ttl: settings::auth_cache_ttl(env),
            webhooks: WebhookSettings::read(env),
        }
    }
}
