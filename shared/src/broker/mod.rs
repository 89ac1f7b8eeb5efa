//! RabbitMQ: connection, topology, the confirming publisher, reading the queues, and the
//! announcements every process of a kind hears (cache invalidations, gateway holds).

mod connection;
mod fanout;
pub mod holds;
pub mod invalidations;
mod publisher;
mod queues;
mod topology;

pub use connection::{connect, nodes};

/// The trace context a message carries in its `traceparent` header, if it carries a valid one.
pub fn trace_of(properties: &lapin::BasicProperties) -> Option<crate::trace::TraceParent> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(crate::trace::HEADER)? {
        lapin::types::AMQPValue::LongString(value) => {
            crate::trace::TraceParent::parse(&String::from_utf8_lossy(value.as_bytes()))
        }
        _ => None,
    }
}
pub use holds::GatewayHold;
pub use invalidations::Invalidation;
pub use publisher::Publisher;
pub use queues::{DeadLetter, Queues, Replayed};
pub use topology::{QueueDepth, QueueRole, Topology};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: no answer to the connection within {0:?}")]
    ConnectTimeout(std::time::Duration),
    #[error("broker unavailable: could not connect")]
    Connect(#[source] lapin::Error),
    #[error("broker unavailable: the connection attempt this request waited for failed")]
    Reconnecting,
    #[error("the broker cancelled a consumer")]
    ConsumerCancelled,
    #[error("another channel of the connection was lost")]
    SiblingChannelLost,
    #[error("channel is not in confirm mode")]
    NotConfirmMode,
    #[error("no retry tier for round {0}")]
    NoRetryTier(usize),
    #[error("broker did not confirm the message within {0:?}")]
    ConfirmTimeout(std::time::Duration),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("broker returned the message as unroutable: {0}")]
    Returned(String),
    #[error("broker error: {0}")]
    Protocol(#[from] lapin::Error),
    #[error("invalid AMQP_URL: {0}")]
    InvalidUrl(String),
}

impl BrokerError {
    /// Whether the broker could not take a request now but may soon: it or the connection is
    /// down, failing over, being reconnected to, or did not answer in time; or it nacked the
    /// message, as a quorum queue does while it elects a new leader after a node went away.
    /// Unlike a message no queue takes, worth waiting out.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            BrokerError::ConnectTimeout(_)
                | BrokerError::Connect(_)
                | BrokerError::Reconnecting
                | BrokerError::SiblingChannelLost
                | BrokerError::ConfirmTimeout(_)
                | BrokerError::Nacked
                | BrokerError::Protocol(_)
        )
    }
}
