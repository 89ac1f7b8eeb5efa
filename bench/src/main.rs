//! `refresh-bench`: measures device-refresh against the bare cost of its own design — RabbitMQ,
//! axum and the database with nothing of ours around them — in one run, and prints the ratios.
//! Only ratios measured in the same run mean anything on shared, noisy machines.

mod allowance;
mod bare;
mod load;
mod report;
mod stack;

use anyhow::{Context, bail};
use bson::oid::ObjectId;
use clap::{Parser, Subcommand, ValueEnum};
use refresh_shared::{
    Category,
    job::Lane,
    settings::Load,
    store::{Device, JobRecord},
};
use refresh_worker::settings::WorkerSettings;
use report::{Bulk, Ceilings, Endpoint, Interference, Memory, Report, Reports, WorkerRun};
use serde_json::{Value, json};
use stack::{Process, Stack};
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

/// Callers and connections of the endpoint measurement.
const CONNECTIONS: usize = 64;
/// What every refresh asks for: three categories, so one job makes three pushes.
const CATEGORIES: [Category; 3] = [
    Category::Hardware,
    Category::Applications,
    Category::Certificates,
];
/// How long any one wait of the run may take before the run fails.
const DEADLINE: Duration = Duration::from_secs(900);

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every measurement, prints the table and writes it as JSON.
    Run(RunArgs),
    /// The endpoint row under several organization limits: what the deployment-wide
    /// allowance costs (docs/performance.md).
    Allowance(AllowanceArgs),
    /// Ceiling 1's server; `run` starts it in a process of its own.
    #[command(hide = true)]
    BareServer {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        queue: String,
        /// The database of ceiling 0' (at `MONGODB_URI`), its devices seeded.
        #[arg(long)]
        database: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// `smoke` checks the harness in seconds; `full` is the measurement.
    #[arg(long, value_enum, default_value_t = Size::Full)]
    size: Size,
    /// Where the JSON goes.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Devices in the batch (and messages in ceilings 2 and 3), instead of the size's.
    #[arg(long)]
    devices: Option<usize>,
}

#[derive(clap::Args)]
struct AllowanceArgs {
    /// `smoke` checks the harness in seconds; `full` is the measurement.
    #[arg(long, value_enum, default_value_t = Size::Full)]
    size: Size,
    /// Where the JSON goes.
    #[arg(long, default_value = "target/bench/allowance.json")]
    out: PathBuf,
    /// Devices of each row (a row ends after the endpoint's time or one request per device).
    #[arg(long, default_value_t = 30_000)]
    devices: usize,
    /// How many times each limit is measured (in turn).
    #[arg(long, default_value_t = 2)]
    rounds: u32,
}

#[derive(Clone, Copy, ValueEnum)]
enum Size {
    Smoke,
    Full,
}

/// How much each measurement does.
struct Plan {
    endpoint: Duration,
    devices: usize,
    /// Devices whose reports are queued all at once for the reports row.
    reporters: usize,
    /// Devices the single caller of the interference rows refreshes in turn.
    solo: usize,
    slow_jobs: u64,
    waiting: usize,
    /// Documents each way of ceiling 4, per group size.
    bulk_pace: usize,
    quiet: Duration,
    watch: Duration,
}

impl Size {
    fn plan(self) -> Plan {
        match self {
            Size::Smoke => Plan {
                endpoint: Duration::from_secs(2),
                devices: 300,
                reporters: 50,
                solo: 100,
                slow_jobs: 100,
                waiting: 10_000,
                bulk_pace: 2_000,
                quiet: Duration::from_secs(1),
                watch: Duration::from_secs(2),
            },
            Size::Full => Plan {
                endpoint: Duration::from_secs(15),
                devices: 100_000,
                reporters: 10_000,
                solo: 1_000,
                slow_jobs: 10_000,
                waiting: 1_000_000,
                bulk_pace: 100_000,
                quiet: Duration::from_secs(5),
                watch: Duration::from_secs(10),
            },
        }
    }

    fn name(self) -> &'static str {
        match self {
            Size::Smoke => "smoke",
            Size::Full => "full",
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Allowance(args) => run_allowance(args).await,
        Command::BareServer {
            addr,
            queue,
            database,
        } => {
            let connection = amqp_connect("refresh-bench bare route").await?;
            let client = mongodb::Client::with_uri_str(mongodb_uri()?).await?;
            let database = client.database(&database);
            bare::serve_bare_route(addr, connection, queue, sample_message(), database).await
        }
    }
}

fn mongodb_uri() -> anyhow::Result<String> {
    std::env::var("MONGODB_URI").context("MONGODB_URI names the database to measure")
}

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn amqp_connect(name: &str) -> anyhow::Result<lapin::Connection> {
    Ok(refresh_shared::broker::connect(&amqp_url().into(), name).await?)
}

/// A job message of the product's own size.
fn sample_message() -> Vec<u8> {
    JobRecord::new(
        ObjectId::new(),
        ObjectId::new(),
        &CATEGORIES,
        Lane::Interactive,
    )
    .message(CATEGORIES.to_vec(), None)
    .encode()
}

fn refresh_body() -> Value {
    json!({ "info": CATEGORIES.iter().map(|c| c.as_str()).collect::<Vec<_>>() })
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut plan = args.size.plan();
    plan.devices = args.devices.unwrap_or(plan.devices);
    let started_at = time_now();
    let logs = logs_beside(&args.out)?;
    let connection = amqp_connect("refresh-bench").await?;
    let ceilings = ceilings(&plan, &logs, &connection).await?;

    let base: HashMap<String, String> = std::env::vars().collect();
    let mut stack = Stack::start(&base, &bench_overrides(), &logs).await?;
    // Torn down whatever happened, so a failed run leaves no processes, queues or database.
    let measured = measure(&mut stack, &plan, &ceilings, &connection).await;
    let api_peak_kib = stack.teardown(&connection).await?;
    let Measured {
        endpoint,
        worker,
        bulk,
        reports,
        interference,
        worker_peak_kib,
        waiting_peak_kib,
    } = measured?;

    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut report = Report {
        size: args.size.name().to_owned(),
        started_at,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        ceilings,
        endpoint,
        worker,
        bulk,
        reports,
        interference,
        memory: Memory {
            api_peak_mib: mib(api_peak_kib),
            worker_peak_mib: mib(worker_peak_kib),
            waiting_messages: plan.waiting as u64,
            worker_with_waiting_mib: mib(waiting_peak_kib),
            watched_seconds: plan.watch.as_secs_f64(),
        },
        targets: Vec::new(),
    };
    report.targets();
    report.print();
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("\nwritten to {}", args.out.display());
    Ok(())
}

async fn run_allowance(args: AllowanceArgs) -> anyhow::Result<()> {
    let mut plan = args.size.plan();
    plan.devices = args.devices;
    let logs = logs_beside(&args.out)?;
    let connection = amqp_connect("refresh-bench").await?;
    let report =
        allowance::measure(&plan, args.size.name(), args.rounds, &logs, &connection).await?;
    report.print();
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("\nwritten to {}", args.out.display());
    Ok(())
}

/// The folder for the services' logs, next to the JSON report.
fn logs_beside(out: &Path) -> anyhow::Result<PathBuf> {
    let logs = out
        .parent()
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
        .join("logs");
    std::fs::create_dir_all(&logs)?;
    Ok(logs)
}

/// The api's and worker's settings for every measurement, on top of the environment's.
fn bench_overrides() -> Vec<(&'static str, String)> {
    vec![
        // One bench organization calls far above a tenant's default limit: measure the
        // service, not the limiter.
        ("RATE_LIMIT_PER_SECOND", "1000000".to_owned()),
        ("RATE_LIMIT_BURST", "1000000".to_owned()),
        ("ORG_RATE_LIMIT_PER_SECOND", "1000000".to_owned()),
        ("ORG_RATE_LIMIT_BURST", "1000000".to_owned()),
        // Every request does the whole work (claim, job, publish) instead of being answered
        // with an earlier job of the same device.
        ("REFRESH_SKIP_WINDOW_SECS", "0".to_owned()),
        // The sim is the only gateway: no pacing in front of it.
        ("AGENT_RATE_LIMIT_PER_SECOND", "1000000".to_owned()),
    ]
}

/// What the product's measurements found.
struct Measured {
    endpoint: Endpoint,
    worker: Vec<WorkerRun>,
    bulk: Bulk,
    reports: Reports,
    interference: Interference,
    worker_peak_kib: u64,
    waiting_peak_kib: u64,
}

/// Measurements 2 to 6, on the running stack.
async fn measure(
    stack: &mut Stack,
    plan: &Plan,
    ceilings: &Ceilings,
    connection: &lapin::Connection,
) -> anyhow::Result<Measured> {
    let (bare_consume_per_second, bare_publish_per_second) = (
        ceilings.bare_consume_per_second,
        ceilings.bare_publish_per_second,
    );
    let (organization, tokens) = stack.organization(CONNECTIONS).await?;
    eprintln!("seeding {} devices…", plan.devices);
    let fleet = stack
        .devices(organization.id, plan.devices, "fleet")
        .await?;
    let solo = stack.devices(organization.id, plan.solo, "solo").await?;
    stack
        .devices(organization.id, plan.reporters, "reporters")
        .await?;
    let org = organization.id.to_hex();
    let urls = |devices: &[Device]| -> Vec<String> {
        devices
            .iter()
            .map(|d| refresh_url(&stack.api_url, organization.id, d.id))
            .collect()
    };
    let (fleet_urls, solo_urls) = (urls(&fleet), urls(&solo));

    // The endpoint, with the worker stopped: its jobs wait in the queue for the worker run.
    eprintln!("endpoint…");
    let endpoint = refreshes(
        &fleet_urls,
        &tokens,
        CONNECTIONS,
        load::Until {
            elapsed: Some(plan.endpoint),
            requests: Some(fleet_urls.len() as u64),
            stop: None,
        },
    )
    .await;
    let endpoint_jobs = endpoint.requests - endpoint.not_ok.values().sum::<u64>();
    let endpoint = Endpoint::against(endpoint, ceilings);

    let worker = worker_runs(
        stack,
        plan,
        &fleet_urls,
        &tokens,
        endpoint_jobs,
        bare_consume_per_second,
    )
    .await?;

    eprintln!("batch of {} devices…", plan.devices);
    let quiet = refreshes(
        &solo_urls,
        &tokens,
        1,
        load::Until {
            elapsed: Some(plan.quiet),
            ..load::Until::default()
        },
    )
    .await;
    let (bulk, draining) =
        batch(stack, &org, &tokens[0], &solo_urls, &tokens, plan.devices).await?;
    let bulk = Bulk {
        ratio: bulk.queued_per_second / bare_publish_per_second,
        ..bulk
    };

    let reports = reports(stack, &org, &tokens[0], plan.reporters, connection).await?;
    let reports = Reports {
        database_ratio: reports.per_second / ceilings.database_pairs_per_second,
        ..reports
    };

    let waiting_peak_kib = waiting_memory(stack, plan, connection).await?;
    Ok(Measured {
        endpoint,
        worker,
        bulk,
        reports,
        interference: Interference { quiet, draining },
        worker_peak_kib: stack.worker_peak_kib,
        waiting_peak_kib,
    })
}

/// Ceiling 1: the bare route in a process of its own, loaded like the endpoint.
/// Ceilings 0 to 3, measured in this run: the database's lookup+insert pairs, a bare route
/// publishing one message, bare consume and bare pipelined publish.
async fn ceilings(
    plan: &Plan,
    logs: &Path,
    connection: &lapin::Connection,
) -> anyhow::Result<Ceilings> {
    let unique = ObjectId::new().to_hex();
    // Ceiling 2 consumes at the prefetch the worker will run with (its default, or the
    // environment's WORKER_PREFETCH).
    let prefetch = WorkerSettings::from_env()
        .map_err(|e| anyhow::anyhow!("settings: {e}"))?
        .prefetch;

    eprintln!("ceilings…");
    let (bare_route, bare_refresh) = bare_route_ceiling(plan, logs, &unique).await?;
    let bare_queue = format!("refresh.bench.{unique}.bare");
    let channel = bare::confirm_channel(connection, Some(&bare_queue)).await?;
    let bare_publish_per_second =
        bare::pipelined_publish(&channel, &bare_queue, &sample_message(), plan.devices).await?;
    let bare_consume_per_second =
        bare::consume(connection, &bare_queue, prefetch, plan.devices).await?;
    bare::delete_queue(connection, &bare_queue).await?;
    let database_pairs_per_second = bare::lookup_insert_pairs(
        &mongodb_uri()?,
        &format!("bench_bare_{unique}"),
        CONNECTIONS,
        plan.endpoint,
    )
    .await?;
    let mut bulk_pace = Vec::new();
    for group in [100, 1_000] {
        let database = format!("bench_bulk_{unique}");
        bulk_pace.push(bare::bulk_pace(&mongodb_uri()?, &database, group, plan.bulk_pace).await?);
    }
    Ok(Ceilings {
        database_pairs_per_second,
        bare_refresh,
        bulk_pace,
        bare_route,
        bare_consume_per_second,
        prefetch,
        bare_publish_per_second,
    })
}

/// Measurement 3: the worker draining the endpoint's jobs with a zero-latency sim, then
/// `plan.slow_jobs` more with 100 ms latency.
async fn worker_runs(
    stack: &mut Stack,
    plan: &Plan,
    fleet_urls: &[String],
    tokens: &[String],
    endpoint_jobs: u64,
    bare_consume_per_second: f64,
) -> anyhow::Result<Vec<WorkerRun>> {
    eprintln!("worker, 0 ms sim…");
    let mut runs = vec![drain(stack, 0, endpoint_jobs, bare_consume_per_second).await?];
    stack.stop_worker().await?;
    eprintln!("worker, 100 ms sim…");
    let slow = refreshes(
        fleet_urls,
        tokens,
        CONNECTIONS,
        load::Until {
            requests: Some(plan.slow_jobs.min(fleet_urls.len() as u64)),
            ..load::Until::default()
        },
    )
    .await;
    let slow_jobs = slow.requests - slow.not_ok.values().sum::<u64>();
    stack
        .sim_plan(json!({"mode": "fault", "latencyMs": 100}))
        .await?;
    runs.push(drain(stack, 100, slow_jobs, bare_consume_per_second).await?);
    stack.sim_plan(json!({"mode": "ok"})).await?;
    Ok(runs)
}

/// Measurement 6: the worker's resident memory while `plan.waiting` messages wait for it.
async fn waiting_memory(
    stack: &mut Stack,
    plan: &Plan,
    connection: &lapin::Connection,
) -> anyhow::Result<u64> {
    eprintln!("memory with {} messages waiting…", plan.waiting);
    stack.stop_worker().await?;
    let jobs_queue = stack.topology().jobs_queue(Lane::Interactive);
    // The product declared its queue: publish to it as it is.
    let channel = bare::confirm_channel(connection, None).await?;
    bare::pipelined_publish(&channel, &jobs_queue, &sample_message(), plan.waiting).await?;
    stack.start_worker().await?;
    let watch_started = Instant::now();
    let mut peak_kib = 0;
    while watch_started.elapsed() < plan.watch {
        if let Some(worker) = &stack.worker {
            peak_kib = peak_kib.max(worker.rss().current_kib);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(peak_kib)
}

/// Ceilings 1 and 0': the bare routes in a process of its own, each loaded like the endpoint.
async fn bare_route_ceiling(
    plan: &Plan,
    logs: &std::path::Path,
    unique: &str,
) -> anyhow::Result<(load::LoadFigures, load::LoadFigures)> {
    let addr = refresh_testkit::process::free_addr()?;
    let queue = format!("refresh.bench.{unique}.route");
    let database_name = format!("bench_route_{unique}");
    let client = mongodb::Client::with_uri_str(mongodb_uri()?).await?;
    let database = client.database(&database_name);
    bare::seed_bare_devices(&database).await?;
    let mut env: HashMap<String, String> = std::env::vars().collect();
    env.insert("AMQP_URL".into(), amqp_url());
    let server = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "bare-server",
            "--addr",
            &addr.to_string(),
            "--queue",
            &queue,
            "--database",
            &database_name,
        ])
        .stdout(std::fs::File::create(logs.join("bare-server.log"))?)
        .stderr(std::fs::File::create(logs.join("bare-server.err"))?)
        .kill_on_drop(true)
        .spawn()?;
    let mut server = Process::adopt("bare-server", server);
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let started = Instant::now();
    while http
        .post(format!("{base}/publish"))
        .send()
        .await
        .map_or(true, |r| !r.status().is_success())
    {
        if started.elapsed() > Duration::from_secs(30) {
            bail!(
                "the bare route did not answer within 30 s: see {}",
                logs.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let for_the_endpoints_time = || load::Until {
        elapsed: Some(plan.endpoint),
        ..load::Until::default()
    };
    let publish = format!("{base}/publish");
    let bare_route = load::run(CONNECTIONS, for_the_endpoints_time(), move |client, _| {
        client.post(&publish).body(refresh_body().to_string())
    })
    .await;
    let bare_refresh = load::run(CONNECTIONS, for_the_endpoints_time(), move |client, n| {
        client
            .post(format!("{base}/refresh/{n}"))
            .body(refresh_body().to_string())
    })
    .await;
    server.stop().await?;
    database.drop().await?;
    let connection = amqp_connect("refresh-bench cleanup").await?;
    bare::delete_queue(&connection, &queue).await?;
    Ok((bare_route, bare_refresh))
}

/// The refresh route of one device.
fn refresh_url(api_url: &str, organization: ObjectId, device: ObjectId) -> String {
    format!(
        "{api_url}/v1/organizations/{}/mdm/windows/enterprise/devices/{}/info",
        organization.to_hex(),
        device.to_hex()
    )
}

/// Refresh requests over `urls` in turn, each connection with its own token.
fn refreshes(
    urls: &[String],
    tokens: &[String],
    connections: usize,
    until: load::Until,
) -> impl Future<Output = load::LoadFigures> + Send + 'static {
    let (urls, tokens) = (urls.to_vec(), tokens.to_vec());
    let body = refresh_body().to_string();
    load::run(connections, until, move |client, n| {
        let n = usize::try_from(n).unwrap_or(0);
        client
            .post(&urls[n % urls.len()])
            .bearer_auth(&tokens[n % tokens.len()])
            .header("content-type", "application/json")
            .body(body.clone())
    })
}

/// Starts the worker on `jobs` waiting jobs and times it until all their categories are
/// recorded pushed; then waits (untimed) for the devices' reports of them.
async fn drain(
    stack: &mut Stack,
    sim_latency_ms: u64,
    jobs: u64,
    bare_consume_per_second: f64,
) -> anyhow::Result<WorkerRun> {
    let categories = jobs * CATEGORIES.len() as u64;
    stack.start_worker().await?;
    let started = Instant::now();
    let pushed = || stack.categories_pushed();
    until_counted(
        "categories the worker recorded pushed",
        categories,
        started,
        FAST_POLL,
        pushed,
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    // Not timed: the devices' reports of what was pushed, so that the next row finds every
    // device's categories ended (a category still awaiting its report would coalesce the
    // next row's requests into this row's jobs).
    let applied = || stack.reports_applied();
    until_counted(
        "reports the worker applied",
        categories,
        started,
        FAST_POLL,
        applied,
    )
    .await?;
    let categories_per_second = categories as f64 / seconds;
    Ok(WorkerRun {
        sim_latency_ms,
        jobs,
        categories,
        seconds,
        categories_per_second,
        ratio: categories_per_second / bare_consume_per_second,
    })
}

/// Submits a batch of every fleet device and times it to queued and to completed, while one
/// caller refreshes solo devices one after another.
async fn batch(
    stack: &Stack,
    organization: &str,
    token: &str,
    solo_urls: &[String],
    tokens: &[String],
    devices: usize,
) -> anyhow::Result<(Bulk, load::LoadFigures)> {
    let batches = format!(
        "{}/v1/organizations/{organization}/mdm/windows/enterprise/refresh-batches",
        stack.api_url
    );
    let mut body = refresh_body();
    body["filter"] = json!({ "state": "ACTIVE", "tags": ["fleet"] });
    let stop = CancellationToken::new();
    let single = tokio::spawn(refreshes(
        solo_urls,
        tokens,
        1,
        load::Until {
            stop: Some(stop.clone()),
            ..load::Until::default()
        },
    ));
    let started = Instant::now();
    let answer: Value = stack
        .http
        .post(&batches)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = answer["data"]["batchId"]
        .as_str()
        .context("no batchId in the answer")?
        .to_owned();
    let mut queued_seconds = None;
    let view = loop {
        let view: Value = stack
            .http
            .get(format!("{batches}/{id}"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        let data = &view["data"];
        if queued_seconds.is_none()
            && data["counts"]["pending"] == 0
            && data["state"] != "expanding"
        {
            queued_seconds = Some(started.elapsed().as_secs_f64());
        }
        if data["state"] == "completed" || data["state"] == "failed" {
            break data.clone();
        }
        if started.elapsed() > DEADLINE {
            bail!("the batch did not finish within {DEADLINE:?}: {data}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let finished_seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    let draining = single.await?;
    if view["state"] != "completed" {
        bail!("the batch failed: {view}");
    }
    let queued_seconds = queued_seconds.unwrap_or(finished_seconds);
    Ok((
        Bulk {
            devices: devices as u64,
            queued_seconds,
            queued_per_second: devices as f64 / queued_seconds,
            ratio: 0.0,
            finished_seconds,
            reported: view["counts"]["reported"].as_u64().unwrap_or(0),
        },
        draining,
    ))
}

/// How often a timed row looks at its counter: often, so the time measured is close.
const FAST_POLL: Duration = Duration::from_millis(20);
/// How often an untimed wait looks at the broker.
const SLOW_POLL: Duration = Duration::from_millis(100);

/// Reads `count` every `every` until it reaches `target`; fails, saying how far it got, once
/// `DEADLINE` has passed since `started`.
async fn until_counted<F, Fut>(
    what: &str,
    target: u64,
    started: Instant,
    every: Duration,
    count: F,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<u64>>,
{
    loop {
        let counted = count().await?;
        if counted >= target {
            return Ok(());
        }
        if started.elapsed() > DEADLINE {
            bail!("{what}: {counted} of {target} in {DEADLINE:?}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Measurement 5: device reports applied per second. A batch of `devices` is pushed by a
/// worker that does not apply reports, so the devices' reports all wait in their queue; then
/// a worker is started and timed until it has applied them all.
async fn reports(
    stack: &mut Stack,
    organization: &str,
    token: &str,
    devices: usize,
    connection: &lapin::Connection,
) -> anyhow::Result<Reports> {
    eprintln!("reports of {devices} devices at once…");
    stack.stop_worker().await?;
    stack
        .start_worker_with(&[("WORKER_QUEUES", "interactive,bulk,batches,deadlines")])
        .await?;
    let batches = format!(
        "{}/v1/organizations/{organization}/mdm/windows/enterprise/refresh-batches",
        stack.api_url
    );
    let mut body = refresh_body();
    body["filter"] = json!({ "state": "ACTIVE", "tags": ["reporters"] });
    stack
        .http
        .post(&batches)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
    let reports = (devices * CATEGORIES.len()) as u64;
    let queue = stack.topology().reports_queue();
    let started = Instant::now();
    let waiting = || async { Ok(u64::from(bare::ready(connection, &queue).await?)) };
    until_counted("reports queued", reports, started, SLOW_POLL, waiting).await?;
    stack.stop_worker().await?;
    let started = Instant::now();
    stack.start_worker().await?;
    let applied = || stack.reports_applied();
    until_counted(
        "reports the worker applied",
        reports,
        started,
        FAST_POLL,
        applied,
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Reports {
        devices: devices as u64,
        reports,
        seconds,
        per_second: reports as f64 / seconds,
        database_ratio: 0.0,
    })
}

fn time_now() -> String {
    bson::DateTime::now()
        .try_to_rfc3339_string()
        .unwrap_or_default()
}
