//! The consumer: a supervisor loop that (re)connects, and per connection one stream per queue —
//! the interactive lane, the bulk lane, the batches to expand, the device reports and the passed
//! report deadlines — each with its own prefetch and
//! its own bounded pool of deliveries in flight, each delivery answered with exactly one ack,
//! reject or nack. Separate pools are what keeps a single-device refresh from ever waiting
//! behind a batch: the bulk lane can only use its own slots.

use crate::{
    dispatch::{Dispatcher, Halt},
    expander::Expander,
    settings::{WorkQueue, WorkerSettings},
    webhook::Deliverer,
};
use futures::{FutureExt, StreamExt, future::join_all};
use lapin::{
    Connection,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
};
use refresh_shared::{
    batch::ExpandBatch,
    broker::{BrokerError, Topology, connect, trace_of},
    deadline::ReportDeadline,
    job::{Lane, RefreshJob},
    metric,
    report::DeviceReport,
    retry::{RetryPolicy, WaitEnd},
    settings::AmqpSettings,
    trace::TraceParent,
    webhook::WebhookDelivery,
};
use std::{
    any::Any,
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use time::OffsetDateTime;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long closing the broker connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Consumer {
    pub amqp: AmqpSettings,
    pub worker: WorkerSettings,
    pub shutdown_grace: Duration,
    pub dispatcher: Arc<Dispatcher>,
    pub expander: Arc<Expander>,
    pub deliverer: Arc<Deliverer>,
    /// Webhook deliveries attempted at once.
    pub webhook_concurrency: usize,
    /// True while a consumer is attached to the work queues.
    pub connected: Arc<AtomicBool>,
}

/// What a stream's deliveries are.
#[derive(Clone, Copy)]
enum Work {
    Jobs(Lane),
    Batches,
    Reports,
    Deadlines,
    Webhooks,
}

impl Work {
    fn queue(self) -> WorkQueue {
        match self {
            Work::Jobs(Lane::Interactive) => WorkQueue::Interactive,
            Work::Jobs(Lane::Bulk) => WorkQueue::Bulk,
            Work::Batches => WorkQueue::Batches,
            Work::Reports => WorkQueue::Reports,
            Work::Deadlines => WorkQueue::Deadlines,
            Work::Webhooks => WorkQueue::Webhooks,
        }
    }
}

/// One queue consumed on its own channel.
struct Stream {
    queue: String,
    work: Work,
    /// Unacked deliveries the broker may push to this channel.
    prefetch: u16,
    /// Deliveries worked on at once.
    slots: usize,
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
                tracing::warn!(%error, "broker connection lost, reconnecting");
                // RECONNECT is never spent: this ends early only on shutdown.
                let _ = schedule.wait(None, &shutdown).await;
            }
        }
    }

    /// The streams of the queues this worker is configured to consume.
    fn streams(&self, topology: &Topology) -> Vec<Stream> {
        let bulk = self.worker.bulk_concurrency;
        let all = [
            Stream {
                queue: topology.jobs_queue(Lane::Interactive),
                work: Work::Jobs(Lane::Interactive),
                prefetch: self.worker.prefetch,
                slots: self.worker.concurrency,
            },
            Stream {
                queue: topology.jobs_queue(Lane::Bulk),
                work: Work::Jobs(Lane::Bulk),
                // Twice the slots, so the next bulk job is at hand when one finishes; the
                // settings cap the slots so this cannot overflow.
                prefetch: u16::try_from(bulk * 2).unwrap_or(u16::MAX),
                slots: bulk,
            },
            Stream {
                queue: topology.batches_queue(),
                work: Work::Batches,
                // One expansion at a time per worker: an expansion is already a stream of
                // thousands of publishes, and another worker can take the next batch.
                prefetch: 1,
                slots: 1,
            },
            Stream {
                queue: topology.reports_queue(),
                work: Work::Reports,
                // A fleet reporting at once waits here, not in the database: a bounded number
                // applied at once, the next ones at hand.
                prefetch: u16::try_from(self.worker.report_concurrency * 2).unwrap_or(u16::MAX),
                slots: self.worker.report_concurrency,
            },
            Stream {
                queue: topology.deadlines_due_queue(),
                work: Work::Deadlines,
                // A deadline check is a read and, rarely, a publish or a write.
                prefetch: 64,
                slots: 32,
            },
            Stream {
                queue: topology.webhooks_queue(),
                work: Work::Webhooks,
                // An attempt waits on a receiver (at most WEBHOOK_TIMEOUT_MS): the next ones at
                // hand, each endpoint's share bounded by its pacing.
                prefetch: u16::try_from(self.webhook_concurrency * 2).unwrap_or(u16::MAX),
                slots: self.webhook_concurrency,
            },
        ];
        all.into_iter()
            .filter(|stream| self.worker.queues.contains(&stream.work.queue()))
            .collect()
    }

    /// One connection's life: returns `Ok` on shutdown, `Err` when the connection is lost.
    async fn consume_once(&self) -> Result<(), BrokerError> {
        let connection = connect(&self.amqp.url, "refresh-worker").await?;
        let topology = Topology::new(&self.amqp);
        topology.declare(&connection).await?;
        // Any stream that loses its channel stops the others: the supervisor reconnects all.
        let lost = CancellationToken::new();
        let streams = self.streams(&topology);
        let results = join_all(
            streams
                .into_iter()
                .map(|stream| self.consume_stream(&connection, stream, lost.clone())),
        )
        .await;
        // Bounded: a close the broker never answers must not hold the worker (what is unacked
        // is redelivered when the socket goes).
        let closing = connection.close(200, "bye".into());
        if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
            tracing::warn!(timeout = ?CLOSE_TIMEOUT, "the broker did not answer the connection close");
        }
        results.into_iter().collect()
    }

    /// Consumes one queue until shutdown (`Ok`) or until the channel, or a sibling's, is lost.
    async fn consume_stream(
        &self,
        connection: &Connection,
        stream: Stream,
        lost: CancellationToken,
    ) -> Result<(), BrokerError> {
        let result = self
            .consume_stream_until_lost(connection, &stream, &lost)
            .await;
        if result.is_err() {
            lost.cancel();
        }
        result
    }

    async fn consume_stream_until_lost(
        &self,
        connection: &Connection,
        stream: &Stream,
        lost: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let (channel, mut deliveries) = subscribe(connection, stream).await?;
        self.connected.store(true, Ordering::Relaxed);
        tracing::info!(queue = %stream.queue, slots = stream.slots, "consuming");

        let shutdown = self.dispatcher.shutdown.clone();
        let slots = Arc::new(Semaphore::new(stream.slots));
        let unacked =
            metrics::gauge!(metric::WORKER_UNACKED_DELIVERIES, "queue" => stream.queue.clone());
        let mut in_flight = JoinSet::new();
        let ended = loop {
            while in_flight.try_join_next().is_some() {}
            let slot = tokio::select! {
                slot = Arc::clone(&slots).acquire_owned() => slot,
                () = shutdown.cancelled() => break None,
                () = lost.cancelled() => break Some(BrokerError::SiblingChannelLost),
            };
            let Ok(slot) = slot else { break None };
            let delivery = tokio::select! {
                delivery = deliveries.next() => delivery,
                () = shutdown.cancelled() => break None,
                () = lost.cancelled() => break Some(BrokerError::SiblingChannelLost),
            };
            match delivery {
                Some(Ok(delivery)) => {
                    unacked.increment(1.0);
                    let handled = self.handle(stream.work, delivery);
                    let unacked = unacked.clone();
                    in_flight.spawn(async move {
                        handled.await;
                        unacked.decrement(1.0);
                        drop(slot);
                    });
                }
                Some(Err(error)) => break Some(BrokerError::from(error)),
                None => break Some(BrokerError::ConsumerCancelled),
            }
        };
        match ended {
            Some(error) => {
                // Their acks can no longer reach the broker, but their pushes and write-backs
                // still count. A redelivered copy waits for its job's first delivery to finish
                // (`Turns` here, the job's heartbeat elsewhere), then finds them settled.
                in_flight.detach_all();
                Err(error)
            }
            None => {
                // Shutting down: take no more deliveries; those in flight finish or hand back.
                let _ = channel
                    .basic_cancel(deliveries.tag(), BasicCancelOptions::default())
                    .await;
                self.drain(stream, in_flight).await;
                Ok(())
            }
        }
    }

    /// Processes one delivery of `work` and answers it.
    fn handle(&self, work: Work, delivery: Delivery) -> impl Future<Output = ()> + Send + 'static {
        let dispatcher = Arc::clone(&self.dispatcher);
        let expander = Arc::clone(&self.expander);
        let deliverer = Arc::clone(&self.deliverer);
        async move {
            match work {
                Work::Webhooks => handle_webhook(&dispatcher, &deliverer, delivery).await,
                Work::Jobs(lane) => handle_job(&dispatcher, lane, delivery).await,
                Work::Batches => handle_batch(&dispatcher, &expander, delivery).await,
                Work::Reports => handle_report(&dispatcher, delivery).await,
                Work::Deadlines => handle_deadline(&dispatcher, delivery).await,
            }
        }
    }

    /// Lets the deliveries in flight finish within the shutdown grace; what still runs then is
    /// dropped unanswered, and goes back to the queue when the connection closes.
    async fn drain(&self, stream: &Stream, mut in_flight: JoinSet<()>) {
        let drained = async { while in_flight.join_next().await.is_some() {} };
        if tokio::time::timeout(self.shutdown_grace, drained)
            .await
            .is_err()
        {
            tracing::warn!(queue = %stream.queue, grace = ?self.shutdown_grace, "work still running at the deadline is handed back");
            in_flight.abort_all();
        }
    }
}

/// A channel of its own consuming `stream`'s queue. Prefetch bounds the unacked deliveries the
/// broker pushes to it; the stream's semaphore bounds how many are worked on at once.
async fn subscribe(
    connection: &Connection,
    stream: &Stream,
) -> Result<(lapin::Channel, lapin::Consumer), BrokerError> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(stream.prefetch, BasicQosOptions::default())
        .await?;
    let deliveries = channel
        .basic_consume(
            stream.queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, deliveries))
}

/// Processes one job delivery and answers it exactly once.
async fn handle_job(dispatcher: &Dispatcher, lane: Lane, delivery: Delivery) {
    let decoded = RefreshJob::decode(&delivery.data);
    let Some(mut job) = decoded_or_dead(&delivery, "job", decoded).await else {
        return;
    };
    job.trace = trace_of(&delivery.properties);
    if job.attempt == 0 && job.pushed.is_empty() {
        // How long it queued: a first delivery's age is its wait in the work queue (a copy
        // handed on with pushes to record is not a first delivery).
        let waited = (OffsetDateTime::now_utc() - job.requested_at)
            .as_seconds_f64()
            .max(0.0);
        metrics::histogram!(metric::JOB_QUEUE_WAIT, "lane" => lane.as_str()).record(waited);
        metrics::gauge!(metric::JOB_LAST_QUEUE_WAIT, "lane" => lane.as_str()).set(waited);
    }
    let span = tracing::info_span!("job", job_id = %job.job_id, lane = lane.as_str(), trace_id = trace_id(job.trace));
    let verdict = async {
        let processed = until_answered(dispatcher, || dispatcher.process(&job));
        match AssertUnwindSafe(processed).catch_unwind().await {
            Ok(verdict) => verdict,
            Err(panic) => {
                // A bug, not the message's fault, but the same message would hit it again: end
                // its categories (releasing the device's claims), dead-letter it, and go on.
                let reason = format!("the worker failed on this job: {}", panic_text(&*panic));
                tracing::error!(%reason, "job processing panicked; dead-lettered");
                let failed = AssertUnwindSafe(dispatcher.fail_all(&job, &reason)).catch_unwind();
                if !matches!(failed.await, Ok(Ok(()))) {
                    tracing::error!("the categories of the panicked job could not be ended");
                }
                Answer::DeadLetter
            }
        }
    }
    .instrument(span)
    .await;
    answer(&delivery, verdict).await;
}

/// The message `decoded` from `delivery`; or, when it does not decode, `None` once the delivery
/// is dead-lettered: the same bytes would fail every consumer.
async fn decoded_or_dead<T, E: std::fmt::Display>(
    delivery: &Delivery,
    what: &str,
    decoded: Result<T, E>,
) -> Option<T> {
    match decoded {
        Ok(message) => Some(message),
        Err(error) => {
            tracing::error!(%error, what, "undecodable message dead-lettered");
            answer(delivery, Answer::DeadLetter).await;
            None
        }
    }
}

/// What a panic said, when it said it with a string.
fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// Expands one batch and answers its delivery exactly once.
async fn handle_batch(dispatcher: &Dispatcher, expander: &Expander, delivery: Delivery) {
    let decoded = ExpandBatch::decode(&delivery.data);
    let Some(message) = decoded_or_dead(&delivery, "expansion request", decoded).await else {
        return;
    };
    let trace = trace_of(&delivery.properties);
    let span =
        tracing::info_span!("batch", batch_id = %message.batch_id, trace_id = trace_id(trace));
    // Its jobs may all have ended before the expansion did: then the batch ends with it.
    let expanded = || async {
        expander.expand(message.batch_id, trace).await?;
        dispatcher.announce_batch(message.batch_id).await
    };
    let verdict = until_answered(dispatcher, expanded).instrument(span).await;
    answer(&delivery, verdict).await;
}

/// Applies one device report and answers its delivery exactly once.
async fn handle_report(dispatcher: &Dispatcher, delivery: Delivery) {
    let decoded = DeviceReport::decode(&delivery.data);
    let Some(report) = decoded_or_dead(&delivery, "report", decoded).await else {
        return;
    };
    let span = tracing::info_span!("report", device_id = %report.device_id);
    let verdict = until_answered(dispatcher, || dispatcher.apply_report(&report))
        .instrument(span)
        .await;
    answer(&delivery, verdict).await;
}

/// Checks one passed report deadline and answers its delivery exactly once.
async fn handle_deadline(dispatcher: &Dispatcher, delivery: Delivery) {
    let decoded = ReportDeadline::decode(&delivery.data);
    let Some(mut deadline) = decoded_or_dead(&delivery, "report deadline", decoded).await else {
        return;
    };
    deadline.trace = trace_of(&delivery.properties);
    let span = tracing::info_span!("deadline", job_id = %deadline.job_id, trace_id = trace_id(deadline.trace));
    let verdict = until_answered(dispatcher, || dispatcher.check_deadline(&deadline))
        .instrument(span)
        .await;
    answer(&delivery, verdict).await;
}

/// Makes one attempt of a webhook delivery and answers it exactly once.
async fn handle_webhook(dispatcher: &Dispatcher, deliverer: &Deliverer, delivery: Delivery) {
    let decoded = WebhookDelivery::decode(&delivery.data);
    let Some(message) = decoded_or_dead(&delivery, "webhook delivery", decoded).await else {
        return;
    };
    let span = tracing::info_span!("webhook", endpoint = %message.endpoint_id, message_id = %message.message_id);
    let verdict = until_answered(dispatcher, || deliverer.deliver(dispatcher, &message))
        .instrument(span)
        .await;
    answer(&delivery, verdict).await;
}

/// The trace id a span logs: empty for a message that came without a trace context.
fn trace_id(trace: Option<TraceParent>) -> String {
    trace.map(|trace| trace.trace_id()).unwrap_or_default()
}

/// Runs `work` to an answer, holding on (and trying again from the last recorded point) while
/// the database is away, for up to `WORKER_HOLD_LIMIT_MS` from the first failure; then the
/// delivery is handed back. A broker failure is held on too (an expansion resumes from its
/// checkpoint); a job that could not be parked in a retry queue, or whose report deadline or
/// repush the broker did not take within the same limit, is handed back at once. A job that
/// halts after pushes it could not record is handed on: a copy carrying them replaces it.
async fn until_answered<F, Fut>(dispatcher: &Dispatcher, work: F) -> Answer
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), Halt>>,
{
    let mut schedule = None;
    loop {
        let why = match work().await {
            Ok(()) => return Answer::Ack,
            Err(Halt::Shutdown) => return Answer::Requeue,
            Err(held @ Halt::HeldTooLong(_)) => return handed_back(&held),
            Err(Halt::GaveUp(reason)) => {
                tracing::warn!(%reason, "given up: dead-lettered");
                return Answer::DeadLetter;
            }
            // A copy carrying the pushes made took its place.
            Err(Halt::HandedOn(halt)) => {
                tracing::warn!(error = %halt, "handed on: a copy of the job records the pushes made");
                metrics::counter!(metric::WORKER_DELIVERIES_HANDED_BACK).increment(1);
                return Answer::Ack;
            }
            // Handed back, not tried again here: the broker stayed away as long as a delivery
            // may be held; a push made but not recorded stays `pushing` until whoever takes
            // the job over finds it abandoned (and pushes it again).
            Err(unpublished @ (Halt::Park(_) | Halt::Publish { .. })) => {
                tracing::warn!(error = %unpublished, "handed back");
                return Answer::Requeue;
            }
            Err(Halt::Store(error)) if !error.is_unavailable() => {
                tracing::error!(%error, "cannot be processed, dead-lettered");
                return Answer::DeadLetter;
            }
            // Keep the delivery while a dependency is away: requeueing would only spin it
            // through the queue (and towards the delivery limit) until it is back.
            Err(halt) => halt.to_string(),
        };
        tracing::warn!(error = %why, "dependency unavailable, holding the delivery");
        metrics::counter!(metric::WORKER_DELIVERIES_HELD).increment(1);
        let schedule =
            schedule.get_or_insert_with(|| RetryPolicy::hold(dispatcher.hold_limit).schedule());
        match schedule.wait(None, &dispatcher.shutdown).await {
            Ok(_) => {}
            Err(WaitEnd::Spent) => return handed_back(&why),
            Err(WaitEnd::Cancelled) => return Answer::Requeue,
        }
    }
}

/// A delivery held as long as it may be goes back to its queue (towards the queue's delivery
/// limit), before the broker's consumer timeout would close the channel.
fn handed_back(why: &dyn std::fmt::Display) -> Answer {
    tracing::warn!(error = %why, "held for WORKER_HOLD_LIMIT_MS; handed back to the queue");
    metrics::counter!(metric::WORKER_DELIVERIES_HANDED_BACK).increment(1);
    Answer::Requeue
}

enum Answer {
    Ack,
    /// Reject without requeue: the queue's dead-letter exchange takes it.
    DeadLetter,
    /// Hand it back for another worker (shutdown, or held as long as a delivery may be).
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
