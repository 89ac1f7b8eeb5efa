//! The message a webhook delivery travels in: one event for one endpoint, with the exact body
//! to send, through the webhooks queue and its retry tiers until an attempt is answered 2xx.

use super::WebhookEvent;
use crate::job::hex_object_id;
use bson::oid::ObjectId;
use serde::{Deserialize, Serialize};

/// Version of [`WebhookDelivery`] on the wire.
pub const DELIVERY_MESSAGE_VERSION: u16 = 1;

/// The largest body a delivery may carry: a job or batch as its GET shows it is a few KiB.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookDelivery {
    pub version: u16,
    #[serde(with = "hex_object_id")]
    pub organization_id: ObjectId,
    #[serde(with = "hex_object_id")]
    pub endpoint_id: ObjectId,
    /// The deliveries log entry its attempts are recorded in.
    #[serde(with = "hex_object_id")]
    pub log_id: ObjectId,
    pub event: WebhookEvent,
    /// `webhook-id`: the same for every attempt, and for every announcement of the same event,
    /// so a receiver that got it once can tell a repeat.
    pub message_id: String,
    /// The JSON sent, as it is signed.
    pub body: String,
    /// Attempts made before this delivery of the message.
    pub attempts: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryDecodeError {
    #[error("webhook delivery message is not valid: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error(
        "webhook delivery message version {0} is not supported (this build reads {DELIVERY_MESSAGE_VERSION})"
    )]
    UnsupportedVersion(u16),
    #[error("webhook delivery body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("webhook delivery message id is empty or longer than 128 characters")]
    MessageId,
}

impl WebhookDelivery {
    pub fn encode(&self) -> Vec<u8> {
        // Ids, strings and numbers cannot fail to serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(payload: &[u8]) -> Result<WebhookDelivery, DeliveryDecodeError> {
        let delivery: WebhookDelivery = serde_json::from_slice(payload)?;
        if delivery.version != DELIVERY_MESSAGE_VERSION {
            return Err(DeliveryDecodeError::UnsupportedVersion(delivery.version));
        }
        if delivery.body.len() > MAX_BODY_BYTES {
            return Err(DeliveryDecodeError::TooLarge);
        }
        if delivery.message_id.is_empty() || delivery.message_id.len() > 128 {
            return Err(DeliveryDecodeError::MessageId);
        }
        Ok(delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_round_trips_and_bad_ones_are_refused() {
        let delivery = WebhookDelivery {
            version: DELIVERY_MESSAGE_VERSION,
            organization_id: ObjectId::new(),
            endpoint_id: ObjectId::new(),
            log_id: ObjectId::new(),
            event: WebhookEvent::JobFinished,
            message_id: "msg_1".into(),
            body: r#"{"type":"refresh.job.finished"}"#.into(),
            attempts: 2,
        };
        let decoded = WebhookDelivery::decode(&delivery.encode()).expect("decodes");
        assert_eq!(decoded, delivery);
        let old = WebhookDelivery {
            version: 9,
            ..delivery.clone()
        };
        assert!(matches!(
            WebhookDelivery::decode(&old.encode()),
            Err(DeliveryDecodeError::UnsupportedVersion(9))
        ));
        let huge = WebhookDelivery {
            body: "x".repeat(MAX_BODY_BYTES + 1),
            ..delivery.clone()
        };
        assert!(matches!(
            WebhookDelivery::decode(&huge.encode()),
            Err(DeliveryDecodeError::TooLarge)
        ));
        assert!(WebhookDelivery::decode(b"{}").is_err());
    }
}
