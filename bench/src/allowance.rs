//! What the deployment-wide organization limit costs the endpoint (issue 16): the endpoint row
//! again, with the api restarted under each organization limit of [`SETTINGS`] in turn, each
//! row on devices no earlier row touched, against ceilings 0 and 1 of the same run. Comparing
//! builds (the same command on each) shows what the mechanism itself costs.

use crate::{
    CONNECTIONS, Plan, bench_overrides, ceilings, load, refresh_url, refreshes,
    report::{Ceilings, Endpoint},
    stack::Stack,
    time_now,
};
use serde::Serialize;
use std::{collections::HashMap, path::Path};

/// An organization limit the endpoint is measured under.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Setting {
    /// What the api does under it: an api leases a twentieth of a second's allowance, at most
    /// the burst, with one guarded write (`api/src/org_allowance.rs`).
    pub name: &'static str,
    pub rate: u32,
    pub burst: u32,
}

pub const SETTINGS: [Setting; 3] = [
    Setting {
        name: "1,000,000/s: a write per 50,000 requests",
        rate: 1_000_000,
        burst: 1_000_000,
    },
    Setting {
        name: "2,000/s: a write per 100 requests",
        rate: 2_000,
        burst: 2_000,
    },
    // A lease of one request (a twentieth of 20/s), with a burst so large that nothing in a
    // row is refused: a burst of 1 leases one too, but the in-process limiter then refuses
    // requests that arrive in the same microsecond.
    Setting {
        name: "20/s, burst 1,000,000: a write per request",
        rate: 20,
        burst: 1_000_000,
    },
];

#[derive(Debug, Serialize)]
pub struct Row {
    pub setting: Setting,
    pub round: u32,
    pub endpoint: Endpoint,
}

#[derive(Debug, Serialize)]
pub struct AllowanceReport {
    pub size: String,
    pub started_at: String,
    pub cores: usize,
    pub ceilings: Ceilings,
    pub rows: Vec<Row>,
}

/// Measures every setting `rounds` times, alternating, so a slow spell of the machine does not
/// land on one setting only.
pub async fn measure(
    plan: &Plan,
    size: &str,
    rounds: u32,
    logs: &Path,
    connection: &lapin::Connection,
) -> anyhow::Result<AllowanceReport> {
    let started_at = time_now();
    let ceilings = ceilings(plan, logs, connection).await?;
    let base: HashMap<String, String> = std::env::vars().collect();
    let mut stack = Stack::start(&base, &bench_overrides(), logs).await?;
    let rows = rows(&mut stack, plan, rounds, &ceilings).await;
    stack.teardown(connection).await?;
    Ok(AllowanceReport {
        size: size.to_owned(),
        started_at,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
        ceilings,
        rows: rows?,
    })
}

async fn rows(
    stack: &mut Stack,
    plan: &Plan,
    rounds: u32,
    ceilings: &Ceilings,
) -> anyhow::Result<Vec<Row>> {
    let (organization, tokens) = stack.organization(CONNECTIONS).await?;
    let mut rows = Vec::new();
    for round in 1..=rounds {
        for setting in SETTINGS {
            eprintln!("round {round}, organization limit {}…", setting.name);
            stack
                .restart_api(&[
                    ("ORG_RATE_LIMIT_PER_SECOND", setting.rate.to_string()),
                    ("ORG_RATE_LIMIT_BURST", setting.burst.to_string()),
                ])
                .await?;
            let tag = format!("allowance-{round}-{}", setting.burst);
            let devices = stack.devices(organization.id, plan.devices, &tag).await?;
            let urls: Vec<String> = devices
                .iter()
                .map(|device| refresh_url(&stack.api_url, organization.id, device.id))
                .collect();
            let load = refreshes(
                &urls,
                &tokens,
                CONNECTIONS,
                load::Until {
                    elapsed: Some(plan.endpoint),
                    requests: Some(urls.len() as u64),
                    stop: None,
                },
            )
            .await;
            rows.push(Row {
                setting,
                round,
                endpoint: Endpoint::against(load, ceilings),
            });
        }
    }
    Ok(rows)
}

impl AllowanceReport {
    pub fn print(&self) {
        println!(
            "\ndevice-refresh bench, organization allowance — size {}, {} cores, {}\n",
            self.size, self.cores, self.started_at
        );
        let c = &self.ceilings;
        println!(
            "ceiling 0: bare database lookup + insert {:>10.0}/s",
            c.database_pairs_per_second
        );
        println!(
            "ceiling 1: bare route + confirmed publish {:>9.0}/s, p99 {:.2} ms\n",
            c.bare_route.per_second, c.bare_route.p99_ms
        );
        println!(
            "{:<42} {:>5} {:>9} {:>8} {:>8} {:>7} {:>7}  not 200",
            "organization limit", "round", "req/s", "p50 ms", "p99 ms", "/ c1", "/ c0"
        );
        for row in &self.rows {
            let load = &row.endpoint.load;
            println!(
                "{:<42} {:>5} {:>9.0} {:>8.2} {:>8.2} {:>7.3} {:>7.3}  {:?}",
                row.setting.name,
                row.round,
                load.per_second,
                load.p50_ms,
                load.p99_ms,
                row.endpoint.ratio,
                row.endpoint.database_ratio,
                load.not_ok
            );
        }
    }
}
