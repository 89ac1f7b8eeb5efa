//! The environment of one run: the caller's, with a database and queue prefix of its own and
//! push-gateway-sim as both gateways.

use bson::oid::ObjectId;
use std::collections::HashMap;

/// `base` with a fresh `MONGODB_DB` (`<run>_<id>`) and `AMQP_PREFIX` (`refresh.<run>.<id>`), the
/// sim at `sim_url` as the agent gateway, the WNS token endpoint and an admitted WNS channel
/// host, test credentials; then `overrides`.
pub fn isolated(
    base: &HashMap<String, String>,
    run: &str,
    sim_url: &str,
    overrides: &[(&str, String)],
) -> HashMap<String, String> {
    let unique = ObjectId::new().to_hex();
    let mut vars = base.clone();
    for (name, value) in [
        ("MONGODB_DB", format!("{run}_{unique}")),
        ("AMQP_PREFIX", format!("refresh.{run}.{unique}")),
        ("AGENT_GATEWAY_URL", sim_url.to_owned()),
        ("WNS_TOKEN_URL", format!("{sim_url}/wns/token")),
        ("WNS_CLIENT_ID", format!("device-refresh-{run}")),
        ("WNS_CLIENT_SECRET", "not-a-real-secret".to_owned()),
        // The sim serves WNS channels over plain http on loopback.
        (
            "WNS_CHANNEL_HOST_SUFFIXES",
            format!(".notify.windows.com,{sim_url}"),
        ),
    ] {
        vars.insert(name.to_owned(), value);
    }
    for (name, value) in overrides {
        vars.insert((*name).to_owned(), value.clone());
    }
    vars
}
