//! The consumer: a supervisor loop that (re)connects, and per connection a bounded pool of
//! deliveries in flight, each answered with exactly one ack, reject or nack.

use crate::dispatch::{Dispatcher, Halt};
use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
};
use refresh_shared::{
    broker::{BrokerError, Topology, connect},
    job::RefreshJob,
    retry::RetryPolicy,
    settings::{AmqpSettings, WorkerSettings},
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::{sync::Semaphore, task::JoinSet};
use tracing::Instrument;

pub struct Consumer {
    pub amqp: AmqpSettings,
    pub worker: WorkerSettings,
    pub shutdown_grace: Duration,
    pub dispatcher: Arc<Dispatcher>,
    /// True while a consumer is attached to the work queue.
    pub connected: Arc<AtomicBool>,
}

impl Consumer {
    /// Consumes until shutdown, reconnecting with backoff whenever the broker goes away.
    pub async fn run(&self) {
        let shutdown = self.dispatcher.shutdown.clone();
        let mut schedule = RetryPolicy::RECONNECT.schedule();
        while !shutdown.is_cancelled() {
            let result = self.consume_once().await;
            if self.connected.swap(false, Ordering::Relaxed) {
                // It was connected: the next outage starts its backoff afresh.
                schedule = RetryPolicy::RECONNECT.schedule();
            }
            if let Err(error) = result {
                let delay = schedule.next_delay(None).unwrap_or(Duration::from_secs(5));
                tracing::warn!(%error, retry_in = ?delay, "broker connection lost");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => {}
                }
            }
        }
    }

    /// One connection's life: returns `Ok` on shutdown, `Err` when the connection is lost.
    async fn consume_once(&self) -> Result<(), BrokerError> {
        let connection = connect(&self.amqp.url, "refresh-worker").await?;
        let channel = connection.create_channel().await?;
        let topology = Topology::new(&self.amqp);
        topology.declare(&channel).await?;
        // Prefetch bounds the unacked deliveries the broker pushes to us; the semaphore below
        // bounds how many of them are worked on at once.
        channel
            .basic_qos(self.worker.prefetch, BasicQosOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                topology.jobs_queue().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        self.connected.store(true, Ordering::Relaxed);
        tracing::info!(queue = %topology.jobs_queue(), "consuming");

        let shutdown = self.dispatcher.shutdown.clone();
        let slots = Arc::new(Semaphore::new(self.worker.concurrency));
        let mut in_flight = JoinSet::new();
        let lost = loop {
            while in_flight.try_join_next().is_some() {}
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => slot,
                () = shutdown.cancelled() => break None,
            };
            let Ok(slot) = slot else { break None };
            let delivery = tokio::select! {
                delivery = deliveries.next() => delivery,
                () = shutdown.cancelled() => break None,
            };
            match delivery {
                Some(Ok(delivery)) => {
                    let dispatcher = Arc::clone(&self.dispatcher);
                    in_flight.spawn(async move {
                        handle(&dispatcher, delivery).await;
                        drop(slot);
                    });
                }
                Some(Err(error)) => break Some(BrokerError::from(error)),
                None => {
                    break Some(BrokerError::Unavailable(
                        "consumer was cancelled".to_owned(),
                    ));
                }
            }
        };
        if lost.is_none() {
            // Shutting down: take no more deliveries; those in flight finish or hand back.
            let _ = channel
                .basic_cancel(deliveries.tag(), BasicCancelOptions::default())
                .await;
        }
        if lost.is_some() {
            // Their acks can no longer reach the broker, but their pushes and write-backs still
            // count: the redelivered copies will find those categories settled.
            in_flight.detach_all();
        } else {
            let drained = async { while in_flight.join_next().await.is_some() {} };
            if tokio::time::timeout(self.shutdown_grace, drained)
                .await
                .is_err()
            {
                // Unanswered deliveries go back to the queue when the connection closes.
                tracing::warn!(grace = ?self.shutdown_grace, "jobs still running at the deadline are handed back");
                in_flight.abort_all();
            }
        }
        let _ = connection.close(200, "bye".into()).await;
        match lost {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Processes one delivery and answers it exactly once.
async fn handle(dispatcher: &Dispatcher, delivery: Delivery) {
    let job = match RefreshJob::decode(&delivery.data) {
        Ok(job) => job,
        Err(error) => {
            tracing::error!(%error, "undecodable message dead-lettered");
            return answer(&delivery, Answer::DeadLetter).await;
        }
    };
    let span = tracing::info_span!("job", job_id = %job.job_id);
    let verdict = process_until_answered(dispatcher, &job)
        .instrument(span)
        .await;
    answer(&delivery, verdict).await;
}

/// What to answer for a decoded job: processes it, holding on while the database is away.
async fn process_until_answered(dispatcher: &Dispatcher, job: &RefreshJob) -> Answer {
    let mut schedule = RetryPolicy::RECONNECT.schedule();
    loop {
        match dispatcher.process(job).await {
            Ok(()) => return Answer::Ack,
            Err(Halt::Shutdown) => return Answer::Requeue,
            Err(Halt::Broker(error)) => {
                // Not parked in a retry queue: hand it back rather than lose it.
                tracing::warn!(%error, "job handed back");
                return Answer::Requeue;
            }
            Err(Halt::Store(error)) if error.is_unavailable() => {
                // Keep the delivery while the database is away: requeueing would only spin it
                // through the queue (and towards the delivery limit) until it is back.
                let delay = schedule.next_delay(None).unwrap_or(Duration::from_secs(5));
                tracing::warn!(%error, retry_in = ?delay, "database unavailable, holding the job");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = dispatcher.shutdown.cancelled() => return Answer::Requeue,
                }
            }
            Err(Halt::Store(error)) => {
                tracing::error!(%error, "job cannot be processed, dead-lettered");
                return Answer::DeadLetter;
            }
        }
    }
}

enum Answer {
    Ack,
    /// Reject without requeue: the queue's dead-letter exchange takes it.
    DeadLetter,
    /// Hand it back for another worker (shutdown).
    Requeue,
}

async fn answer(delivery: &Delivery, answer: Answer) {
    let result = match answer {
        Answer::Ack => delivery.ack(BasicAckOptions::default()).await,
        Answer::DeadLetter => delivery.reject(BasicRejectOptions { requeue: false }).await,
        Answer::Requeue => {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await
        }
    };
    if let Err(error) = result {
        // The channel is gone: the broker redelivers the message to the next consumer.
        tracing::warn!(%error, "could not answer a delivery; it will be redelivered");
    }
}
