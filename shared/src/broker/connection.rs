use super::BrokerError;
use lapin::{Connection, ConnectionProperties, uri::AMQPUri};
use secrecy::{ExposeSecret, SecretString};
use std::{str::FromStr, time::Duration};

/// Heartbeats let both sides notice a dead peer within ~2 intervals instead of at the next write.
const HEARTBEAT_SECS: u16 = 10;
/// A TCP connect or handshake that takes longer than this counts as an outage.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Opens a connection named `name` (shown in the management UI, so operators can tell the api's
/// publisher from a worker's consumer).
pub async fn connect(url: &SecretString, name: &str) -> Result<Connection, BrokerError> {
    let mut uri = AMQPUri::from_str(url.expose_secret())
        // The parser's message may quote the URL, password included: say only that it is wrong.
        .map_err(|_| BrokerError::InvalidUrl("not an amqp:// or amqps:// URL".to_owned()))?;
    uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, properties))
        .await
        .map_err(|_| BrokerError::ConnectTimeout(CONNECT_TIMEOUT))?
        .map_err(BrokerError::Connect)
}
