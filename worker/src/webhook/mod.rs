//! Delivering webhooks: each message of the webhooks queue is one event for one endpoint,
//! attempted once per delivery. A 2xx ends it `delivered`; 410 Gone disables the endpoint;
//! anything else (another status, no answer within `WEBHOOK_TIMEOUT_MS`, an address the policy
//! refuses) waits in the next retry tier for another attempt, and after the last one the
//! message is dead-lettered and the endpoint reads `failing`. Every attempt is logged in
//! `webhook_deliveries`.

mod client;
mod pacing;

use crate::dispatch::{Dispatcher, Halt};
use client::{Attempted, Signed, WebhookClient};
use pacing::EndpointPacing;
use refresh_shared::{
    broker::Publisher,
    metric,
    settings::WebhookSettings,
    store::DeliveryAttempt,
    webhook::{DeliveryState, EndpointState, WebhookDelivery},
};
use std::{sync::Arc, time::Duration};

/// How long a delivery waits for its endpoint's turn before it goes to wait in the first
/// retry tier instead (not counted as an attempt): a slot is never held long for a busy
/// endpoint.
const TURN_WAIT: Duration = Duration::from_millis(100);

pub struct Deliverer {
    client: WebhookClient,
    settings: WebhookSettings,
    pacing: EndpointPacing,
    publisher: Arc<Publisher>,
}

/// What an attempt's answer means for the delivery.
enum Verdict {
    Delivered,
    Gone,
    TryAgain(String),
}

impl Deliverer {
    pub fn new(
        settings: WebhookSettings,
        timeout: Duration,
        endpoint_concurrency: usize,
        publisher: Arc<Publisher>,
    ) -> reqwest::Result<Deliverer> {
        Ok(Deliverer {
            client: WebhookClient::new(settings.url_policy, timeout)?,
            settings,
            pacing: EndpointPacing::new(endpoint_concurrency),
            publisher,
        })
    }

    /// Makes one attempt of `delivery` and records it; schedules the next when it failed. The
    /// database and the broker are waited out as for any delivery (`dispatcher`).
    pub async fn deliver(
        &self,
        dispatcher: &Dispatcher,
        delivery: &WebhookDelivery,
    ) -> Result<(), Halt> {
        let store = &dispatcher.store;
        let (organization, id) = (delivery.organization_id, delivery.endpoint_id);
        let endpoint = dispatcher
            .durably(|| store.webhook(organization, id))
            .await?
            .filter(|endpoint| endpoint.state != EndpointState::Disabled);
        let Some(endpoint) = endpoint else {
            self.log(dispatcher, delivery, None, DeliveryState::Dropped)
                .await?;
            count("dropped");
            return Ok(());
        };
        let Some(turn) = self.pacing.turn(endpoint.id, TURN_WAIT).await else {
            let publisher = &self.publisher;
            dispatcher
                .publish("a webhook delivery that waits for its endpoint", || {
                    publisher.publish_webhook(delivery, Some(0))
                })
                .await?;
            count("deferred");
            return Ok(());
        };
        let attempted = self.attempt(&endpoint.url, &endpoint.salt, delivery).await;
        drop(turn);
        metrics::histogram!(metric::WEBHOOK_ATTEMPT_DURATION).record(attempted.took.as_secs_f64());
        let verdict = match (attempted.status, &attempted.error) {
            (Some(status), _) if (200..300).contains(&status) => Verdict::Delivered,
            (Some(410), _) => Verdict::Gone,
            (Some(status), _) => Verdict::TryAgain(format!("the receiver answered {status}")),
            (None, Some(error)) => Verdict::TryAgain(error.clone()),
            (None, None) => Verdict::TryAgain("no answer".to_owned()),
        };
        let attempt = DeliveryAttempt {
            at: bson::DateTime::now(),
            status: attempted.status,
            error: attempted.error.clone(),
            duration_ms: u64::try_from(attempted.took.as_millis()).unwrap_or(u64::MAX),
        };
        let attempt = Some(&attempt);
        match verdict {
            Verdict::Delivered => {
                self.log(dispatcher, delivery, attempt, DeliveryState::Delivered)
                    .await?;
                // A receiver that answers again is no longer failing (a write only then).
                if endpoint.state == EndpointState::Failing {
                    let failing = [EndpointState::Failing];
                    self.move_endpoint(dispatcher, delivery, &failing, EndpointState::Active)
                        .await?;
                }
                count("delivered");
                Ok(())
            }
            Verdict::Gone => {
                let open = [EndpointState::Active, EndpointState::Failing];
                self.move_endpoint(dispatcher, delivery, &open, EndpointState::Disabled)
                    .await?;
                self.log(dispatcher, delivery, attempt, DeliveryState::Failed)
                    .await?;
                tracing::warn!(endpoint = %endpoint.id, "the receiver answered 410 Gone: endpoint disabled");
                count("disabled");
                Ok(())
            }
            Verdict::TryAgain(why) => {
                self.retry_or_give_up(dispatcher, delivery, attempt, why)
                    .await
            }
        }
    }

    /// After a failed attempt: waits in the next retry tier, or, after the last, is given up
    /// (dead-lettered, the endpoint `failing`).
    async fn retry_or_give_up(
        &self,
        dispatcher: &Dispatcher,
        delivery: &WebhookDelivery,
        attempt: Option<&DeliveryAttempt>,
        why: String,
    ) -> Result<(), Halt> {
        let round = usize::try_from(delivery.attempts).unwrap_or(usize::MAX);
        if round < self.publisher.topology().webhook_retry_rounds() {
            self.log(dispatcher, delivery, attempt, DeliveryState::Pending)
                .await?;
            let next = WebhookDelivery {
                attempts: delivery.attempts + 1,
                ..delivery.clone()
            };
            let publisher = &self.publisher;
            dispatcher
                .publish("a webhook delivery's next attempt", || {
                    publisher.publish_webhook(&next, Some(round))
                })
                .await?;
            tracing::info!(endpoint = %delivery.endpoint_id, message_id = %delivery.message_id, error = %why, "webhook attempt failed; tried again later");
            count("retried");
            return Ok(());
        }
        // The endpoint first: whoever reads the delivery given up also reads the endpoint
        // `failing` (a redelivery after a crash between the two logs it again).
        self.move_endpoint(
            dispatcher,
            delivery,
            &[EndpointState::Active],
            EndpointState::Failing,
        )
        .await?;
        self.log(dispatcher, delivery, attempt, DeliveryState::Failed)
            .await?;
        count("failed");
        Err(Halt::GaveUp(format!(
            "webhook {} not delivered after {} attempts: {why}",
            delivery.message_id,
            delivery.attempts + 1
        )))
    }

    /// One attempt, signed with the endpoint's secret.
    async fn attempt(&self, url: &str, salt: &str, delivery: &WebhookDelivery) -> Attempted {
        let unsigned = |error: &str| Attempted {
            status: None,
            error: Some(error.to_owned()),
            took: Duration::ZERO,
        };
        let Some(key) = &self.settings.signing_key else {
            return unsigned("not called: WEBHOOK_SIGNING_KEY is not set on this worker");
        };
        let Ok(salt) = hex::decode(salt) else {
            return unsigned("not called: the endpoint's stored salt is not hex");
        };
        let secret = key.endpoint_secret(&salt);
        let message = Signed {
            message_id: &delivery.message_id,
            body: &delivery.body,
            secret: &secret,
        };
        self.client.attempt(url, &message).await
    }

    async fn log(
        &self,
        dispatcher: &Dispatcher,
        delivery: &WebhookDelivery,
        attempt: Option<&DeliveryAttempt>,
        state: DeliveryState,
    ) -> Result<(), Halt> {
        let store = &dispatcher.store;
        dispatcher
            .durably(|| store.record_delivery_attempt(delivery.log_id, attempt, state))
            .await
    }

    async fn move_endpoint(
        &self,
        dispatcher: &Dispatcher,
        delivery: &WebhookDelivery,
        from: &[EndpointState],
        to: EndpointState,
    ) -> Result<(), Halt> {
        let store = &dispatcher.store;
        let (organization, id) = (delivery.organization_id, delivery.endpoint_id);
        dispatcher
            .durably(|| store.set_webhook_state(organization, id, from, to))
            .await?;
        Ok(())
    }
}

fn count(outcome: &'static str) {
    metrics::counter!(metric::WEBHOOK_DELIVERIES, "outcome" => outcome).increment(1);
}
