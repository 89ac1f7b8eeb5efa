use super::BrokerError;
use lapin::{Connection, ConnectionProperties, uri::AMQPUri};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use std::{str::FromStr, time::Duration};

/// Heartbeats let both sides notice a dead peer within ~2 intervals instead of at the next write.
const HEARTBEAT_SECS: u16 = 10;
/// A TCP connect or handshake that takes longer than this counts as an outage.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The nodes `AMQP_URL` names: one URL, or several comma-separated (a cluster's nodes).
pub fn nodes(urls: &SecretString) -> Result<Vec<AMQPUri>, BrokerError> {
    urls.expose_secret()
        .split(',')
        .map(str::trim)
        .enumerate()
        .map(|(index, url)| {
            AMQPUri::from_str(url).map_err(|_| {
                // The parser's message may quote the URL, password included: say only which
                // one is wrong.
                BrokerError::InvalidUrl(format!(
                    "node {} is not an amqp:// or amqps:// URL",
                    index + 1
                ))
            })
        })
        .collect()
}

/// Opens a connection named `name` (shown in the management UI, so operators can tell the api's
/// publisher from a worker's consumer) to a node of `urls` that answers: each is tried once,
/// from a random one on, so processes spread over a cluster and one that lost its node (its
/// reconnection comes here) moves to another.
pub async fn connect(urls: &SecretString, name: &str) -> Result<Connection, BrokerError> {
    let nodes = nodes(urls)?;
    let first = rand::rng().random_range(0..nodes.len());
    let mut failure = None;
    for mut uri in nodes.iter().cycle().skip(first).take(nodes.len()).cloned() {
        uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, properties))
                .await
                .map_err(|_| BrokerError::ConnectTimeout(CONNECT_TIMEOUT))
                .and_then(|connected| connected.map_err(BrokerError::Connect));
        match connected {
            Ok(connection) => return Ok(connection),
            Err(error) => {
                if nodes.len() > 1 {
                    tracing::warn!(%error, "a broker node did not answer, trying the next");
                }
                failure = Some(error);
            }
        }
    }
    Err(failure.unwrap_or_else(|| BrokerError::InvalidUrl("AMQP_URL names no node".to_owned())))
}
