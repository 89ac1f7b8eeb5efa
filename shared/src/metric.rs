//! The name of every metric the product exports, once: `/metrics` on the api and the worker,
//! documented in docs/operations.md. Call sites name these, never a string.

/// Counter (`lane`): jobs published.
pub const JOBS_ACCEPTED: &str = "refresh_jobs_accepted_total";
/// Counter: single requests answered with an existing job.
pub const REQUESTS_COALESCED: &str = "refresh_requests_coalesced_total";
/// Counter: batches accepted.
pub const BATCHES_ACCEPTED: &str = "refresh_batches_accepted_total";
/// Counter: batch entries turned into jobs or skipped.
pub const BATCH_DEVICES_EXPANDED: &str = "refresh_batch_devices_expanded_total";
/// Counter (`outcome`, `gateway`): categories settled.
pub const CATEGORIES: &str = "refresh_categories_total";
/// Counter: pushes that will be retried.
pub const PUSH_RETRIES: &str = "refresh_push_retries_total";
/// Histogram (`gateway`): one push request to a gateway.
pub const PUSH_DURATION: &str = "refresh_push_duration_seconds";
/// Histogram (`lane`): how long a job waited in its work queue (first deliveries).
pub const JOB_QUEUE_WAIT: &str = "refresh_job_queue_wait_seconds";
/// Gauge (`lane`): the wait of the most recent job taken.
pub const JOB_LAST_QUEUE_WAIT: &str = "refresh_job_last_queue_wait_seconds";
/// Gauge (`queue`): deliveries this worker holds unacknowledged.
pub const WORKER_UNACKED_DELIVERIES: &str = "refresh_worker_unacked_deliveries";
/// Counter: times a delivery was held because the database or the broker was away.
pub const WORKER_DELIVERIES_HELD: &str = "refresh_worker_deliveries_held_total";
/// Counter: deliveries held for `WORKER_HOLD_LIMIT_MS`, then handed back.
pub const WORKER_DELIVERIES_HANDED_BACK: &str = "refresh_worker_deliveries_handed_back_total";
/// Gauge (`queue`, `role`): messages waiting in a queue.
pub const QUEUE_MESSAGES_READY: &str = "refresh_queue_messages_ready";
/// Gauge (`queue`, `role`): consumers attached to a queue.
pub const QUEUE_CONSUMERS: &str = "refresh_queue_consumers";
/// Gauge: 1 when this process is the one of the deployment that reports the queue depths.
pub const QUEUE_DEPTH_REPORTER: &str = "refresh_queue_depth_reporter";
/// Gauge: 1 when the last read of the queue depths succeeded.
pub const QUEUE_DEPTH_READABLE: &str = "refresh_queue_depth_readable";
/// Counter: reads of the queue depths from the broker.
pub const QUEUE_DEPTH_READS: &str = "refresh_queue_depth_reads_total";
/// Counter: connections refused at `MAX_CONNECTIONS` (api).
pub const HTTP_CONNECTIONS_REFUSED: &str = "refresh_http_connections_refused_total";
/// Counter: requests answered 5040 at `REQUEST_TIMEOUT_MS` (api).
pub const HTTP_REQUESTS_TIMED_OUT: &str = "refresh_http_requests_timed_out_total";
/// Counter (`source`): device reports the api accepted and queued.
pub const REPORTS_RECEIVED: &str = "refresh_reports_received_total";
/// Counter (`outcome`: `read`, `continued`, `ended`): OMA-DM messages the api answered, by
/// what the answer did: asked for reads, asked for the rest of the device's package, or ended
/// the session.
pub const OMADM_MESSAGES: &str = "refresh_omadm_messages_total";
/// Counter (`source`): device reports a worker applied.
pub const REPORTS_APPLIED: &str = "refresh_reports_applied_total";
/// Histogram: from a category's push to the device's report of it.
pub const REPORT_LATENCY: &str = "refresh_report_latency_seconds";
/// Counter: categories pushed again because no report came by the deadline.
pub const REPUSHES: &str = "refresh_repushes_total";
/// Counter: categories ended `unreported`.
pub const UNREPORTED: &str = "refresh_unreported_total";
/// Counter (`outcome`: `delivered`, `retried`, `failed`, `disabled`, `dropped`, `deferred`):
/// webhook deliveries by what their attempt (or its absence) came to.
pub const WEBHOOK_DELIVERIES: &str = "refresh_webhook_deliveries_total";
/// Histogram: one webhook attempt, from connecting to the receiver's status.
pub const WEBHOOK_ATTEMPT_DURATION: &str = "refresh_webhook_attempt_duration_seconds";
