//! What a run measured: one table for people, the same as JSON for machines.

use crate::load::LoadFigures;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Report {
    pub size: String,
    pub started_at: String,
    pub cores: usize,
    pub ceilings: Ceilings,
    pub endpoint: Endpoint,
    pub worker: Vec<WorkerRun>,
    pub bulk: Bulk,
    pub reports: Reports,
    pub interference: Interference,
    pub memory: Memory,
    pub targets: Vec<Target>,
}

#[derive(Debug, Serialize)]
pub struct Ceilings {
    /// 0: the database alone, an indexed lookup + an insert, 64 at a time: pairs/s.
    pub database_pairs_per_second: f64,
    /// 0': the bare design of one refresh — find-and-claim, insert, confirmed publish — in a
    /// route of its own, loaded like the endpoint.
    pub bare_refresh: LoadFigures,
    /// 4: the database's pace in bulk, documents/s by group size.
    pub bulk_pace: Vec<crate::bare::BulkPace>,
    /// 1: a bare axum route publishing one persistent, confirmed message to a quorum queue.
    pub bare_route: LoadFigures,
    /// 2: consume + ack at the worker's prefetch, messages/s.
    pub bare_consume_per_second: f64,
    pub prefetch: u16,
    /// 3: pipelined confirmed publish, messages/s.
    pub bare_publish_per_second: f64,
}

#[derive(Debug, Serialize)]
pub struct Endpoint {
    pub load: LoadFigures,
    /// Requests/s over ceiling 1's.
    pub ratio: f64,
    /// Requests/s over ceiling 0's pairs/s: how much of the database's own pace one request
    /// takes (the database is shared by every row, and is these machines' bottleneck).
    pub database_ratio: f64,
    /// Requests/s over ceiling 0' (the bare design of a refresh, database included).
    pub design_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct WorkerRun {
    pub sim_latency_ms: u64,
    pub jobs: u64,
    pub categories: u64,
    pub seconds: f64,
    pub categories_per_second: f64,
    /// Categories/s over ceiling 2's messages/s.
    pub ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct Bulk {
    pub devices: u64,
    /// From the 202 until every device has its job published.
    pub queued_seconds: f64,
    pub queued_per_second: f64,
    /// Devices queued/s over ceiling 3's messages/s.
    pub ratio: f64,
    /// From the 202 until the batch reads `completed` (every device reported).
    pub finished_seconds: f64,
    pub reported: u64,
}

/// Device reports queued all at once (the devices of a batch, answering while no worker
/// applied reports), then applied by one worker.
#[derive(Debug, Serialize)]
pub struct Reports {
    pub devices: u64,
    pub reports: u64,
    pub seconds: f64,
    pub per_second: f64,
    /// Reports/s over ceiling 0's pairs/s: each report is an upsert, a claim freed, a guarded
    /// job write and a job read.
    pub database_ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct Interference {
    /// One caller refreshing one device after another, nothing else running.
    pub quiet: LoadFigures,
    /// The same while the batch drains.
    pub draining: LoadFigures,
}

#[derive(Debug, Serialize)]
pub struct Memory {
    pub api_peak_mib: f64,
    pub worker_peak_mib: f64,
    pub waiting_messages: u64,
    /// Peak RSS of a worker started with `waiting_messages` in its queue, over `watched_seconds`.
    pub worker_with_waiting_mib: f64,
    pub watched_seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct Target {
    pub name: &'static str,
    pub measured: f64,
    pub bound: f64,
    /// `true`: measured must be at least the bound; `false`: at most.
    pub at_least: bool,
    pub met: bool,
}

impl Target {
    pub fn at_least(name: &'static str, measured: f64, bound: f64) -> Target {
        Target {
            name,
            measured,
            bound,
            at_least: true,
            met: measured >= bound,
        }
    }

    pub fn at_most(name: &'static str, measured: f64, bound: f64) -> Target {
        Target {
            name,
            measured,
            bound,
            at_least: false,
            met: measured <= bound,
        }
    }
}

impl Endpoint {
    /// The endpoint's figures and their ratios to this run's ceilings.
    pub fn against(load: LoadFigures, ceilings: &Ceilings) -> Endpoint {
        Endpoint {
            ratio: load.per_second / ceilings.bare_route.per_second,
            database_ratio: load.per_second / ceilings.database_pairs_per_second,
            design_ratio: load.per_second / ceilings.bare_refresh.per_second,
            load,
        }
    }
}

impl Report {
    pub fn targets(&mut self) {
        let zero_latency = self.worker.iter().find(|run| run.sim_latency_ms == 0);
        let slow = self.worker.iter().find(|run| run.sim_latency_ms > 0);
        self.targets = vec![
            Target::at_least("endpoint / ceiling 0'", self.endpoint.design_ratio, 0.8),
            Target::at_most("endpoint p99 ms @64", self.endpoint.load.p99_ms, 50.0),
            Target::at_least(
                "worker (0 ms sim) / bare consume",
                zero_latency.map_or(0.0, |run| run.ratio),
                0.5,
            ),
            Target::at_least(
                "worker categories/s (100 ms sim)",
                slow.map_or(0.0, |run| run.categories_per_second),
                2_000.0,
            ),
            Target::at_most("batch queued s", self.bulk.queued_seconds, 15.0),
            Target::at_most("batch finished s", self.bulk.finished_seconds, 120.0),
            Target::at_most(
                "single p99 ms while draining",
                self.interference.draining.p99_ms,
                50.0,
            ),
            Target::at_most("api peak RSS MiB", self.memory.api_peak_mib, 64.0),
            Target::at_most(
                "worker RSS MiB, messages waiting",
                self.memory.worker_with_waiting_mib,
                128.0,
            ),
        ];
    }

    pub fn print(&self) {
        let c = &self.ceilings;
        println!(
            "\ndevice-refresh bench — size {}, {} cores, {}\n",
            self.size, self.cores, self.started_at
        );
        println!(
            "{:<44} {:>12} {:>9} {:>9}",
            "measure", "value", "p50 ms", "p99 ms"
        );
        let load = |name: &str, figures: &LoadFigures| {
            println!(
                "{:<44} {:>10.0}/s {:>9.2} {:>9.2}{}",
                name,
                figures.per_second,
                figures.p50_ms,
                figures.p99_ms,
                if figures.not_ok.is_empty() {
                    String::new()
                } else {
                    format!("  not 200: {:?}", figures.not_ok)
                }
            )
        };
        let rate = |name: &str, value: f64| println!("{name:<44} {value:>10.0}/s");
        rate(
            "ceiling 0: bare database lookup + insert",
            c.database_pairs_per_second,
        );
        load("ceiling 0': bare claim + insert + publish", &c.bare_refresh);
        load("ceiling 1: bare route + confirmed publish", &c.bare_route);
        rate(
            &format!("ceiling 2: bare consume + ack, prefetch {}", c.prefetch),
            c.bare_consume_per_second,
        );
        rate(
            "ceiling 3: bare pipelined publish",
            c.bare_publish_per_second,
        );
        for pace in &c.bulk_pace {
            println!(
                "{:<44} {:>10.0}/s   update_many {:.0}/s",
                format!("ceiling 4: insert_many, groups of {}", pace.group),
                pace.inserts_per_second,
                pace.updates_per_second
            );
        }
        load(
            &format!("endpoint @{} connections", self.endpoint.load.connections),
            &self.endpoint.load,
        );
        println!(
            "{:<44} {:>10.2}x",
            "endpoint / ceiling 0", self.endpoint.database_ratio
        );
        println!(
            "{:<44} {:>10.2}x",
            "endpoint / ceiling 0'", self.endpoint.design_ratio
        );
        for run in &self.worker {
            rate(
                &format!(
                    "worker categories, sim {} ms ({} jobs)",
                    run.sim_latency_ms, run.jobs
                ),
                run.categories_per_second,
            );
        }
        let b = &self.bulk;
        println!(
            "{:<44} {:>10.0}/s   queued in {:.1} s, finished in {:.1} s",
            format!("batch of {} devices queued", b.devices),
            b.queued_per_second,
            b.queued_seconds,
            b.finished_seconds
        );
        let r = &self.reports;
        println!(
            "{:<44} {:>10.0}/s   {:.2}x ceiling 0, {} reports in {:.1} s",
            format!("reports applied ({} devices at once)", r.devices),
            r.per_second,
            r.database_ratio,
            r.reports,
            r.seconds
        );
        load("single device, quiet", &self.interference.quiet);
        load("single device, batch draining", &self.interference.draining);
        let m = &self.memory;
        println!(
            "{:<44} api {:.1} MiB, worker {:.1} MiB",
            "peak RSS", m.api_peak_mib, m.worker_peak_mib
        );
        println!(
            "{:<44} {:.1} MiB",
            format!("worker RSS, {} messages waiting", m.waiting_messages),
            m.worker_with_waiting_mib
        );
        println!("\n{:<36} {:>10} {:>10}  met", "target", "measured", "bound");
        for target in &self.targets {
            println!(
                "{:<36} {:>10.2} {} {:>7.2}  {}",
                target.name,
                target.measured,
                if target.at_least { ">=" } else { "<=" },
                target.bound,
                if target.met { "yes" } else { "NO" }
            );
        }
    }
}
