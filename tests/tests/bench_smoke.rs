//! The benchmark harness (`refresh-bench`, run in full by `scripts/bench`) at its smoke size:
//! every measurement runs end to end against the real services and reports figures that add
//! up. Speed is not judged here — debug builds on a shared machine — only that the harness
//! works and that the product did all the work it was given.

use refresh_tests::binary;
use serde_json::Value;
use std::process::Stdio;

/// Runs `refresh-bench COMMAND --size smoke ARGS…` into a scratch folder; its table and JSON.
async fn smoke(command: &str, args: &[&str]) -> (String, Value) {
    let out = std::env::temp_dir().join(format!("refresh-bench-{command}-{}", std::process::id()));
    let results = out.join("results.json");
    let run = tokio::process::Command::new(binary("refresh-bench"))
        .args([command, "--size", "smoke"])
        .args(args)
        .arg("--out")
        .arg(&results)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("run refresh-bench");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    println!("{stdout}");
    assert!(
        run.status.success(),
        "refresh-bench {command} failed: {}\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let report =
        serde_json::from_slice(&std::fs::read(&results).expect("the JSON report")).expect("JSON");
    // The services' errors, printed before their logs go with the scratch folder: shown when
    // an assertion below fails (a 500 in a row says nothing without the api's reason).
    for log in std::fs::read_dir(out.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        for line in text.lines().filter(|line| is_error(line)) {
            println!("{}: {line}", log.file_name().to_string_lossy());
        }
    }
    std::fs::remove_dir_all(&out).ok();
    (stdout, report)
}

/// An error a service logged, but for the broker's answers to the queue checks at start.
fn is_error(line: &str) -> bool {
    let error = line.contains("\"level\":\"ERROR\"") || line.contains(" ERROR ");
    error && !line.contains("NOT_FOUND - no queue")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_smoke_run_measures_every_row() {
    let (stdout, report) = smoke("run", &[]).await;
    for row in [
        "ceiling 1: bare route",
        "ceiling 2: bare consume",
        "ceiling 3: bare pipelined publish",
        "endpoint @64 connections",
        "worker categories, sim 0 ms",
        "worker categories, sim 100 ms",
        "batch of 300 devices queued",
        "reports applied (50 devices at once)",
        "single device, batch draining",
        "worker RSS, 10000 messages waiting",
    ] {
        assert!(stdout.contains(row), "the table has no row {row:?}");
    }

    let positive = |pointer: &str| {
        let value = report.pointer(pointer).and_then(Value::as_f64);
        assert!(
            value.is_some_and(|v| v > 0.0),
            "{pointer} = {value:?} in {report:#}"
        );
    };
    for pointer in [
        "/ceilings/bare_route/per_second",
        "/ceilings/bare_consume_per_second",
        "/ceilings/bare_publish_per_second",
        "/endpoint/ratio",
        "/bulk/ratio",
        "/memory/api_peak_mib",
        "/memory/worker_peak_mib",
        "/memory/worker_with_waiting_mib",
    ] {
        positive(pointer);
    }
    for load in [
        "/ceilings/bare_route",
        "/endpoint/load",
        "/interference/quiet",
        "/interference/draining",
    ] {
        let figures = &report.pointer(load).expect(load);
        assert!(figures["requests"].as_u64() > Some(0), "{load}: {figures}");
        assert_eq!(
            figures["not_ok"],
            serde_json::json!({}),
            "{load}: {figures}"
        );
    }

    // The worker pushed every category of every job it was given, at both sim latencies.
    let runs = report["worker"].as_array().expect("worker runs");
    assert_eq!(runs.len(), 2);
    for worker in runs {
        let jobs = worker["jobs"].as_u64().expect("jobs");
        assert!(jobs > 0, "{worker}");
        assert_eq!(worker["categories"].as_u64(), Some(jobs * 3), "{worker}");
    }
    // Every device of the batch reported.
    assert_eq!(report["bulk"]["devices"].as_u64(), Some(300));
    assert_eq!(report["bulk"]["reported"].as_u64(), Some(300));
    // Every report of the reporters' batch was applied.
    assert_eq!(report["reports"]["devices"].as_u64(), Some(50));
    assert_eq!(report["reports"]["reports"].as_u64(), Some(150));
    assert!(
        report["reports"]["per_second"].as_f64() > Some(0.0),
        "{}",
        report["reports"]
    );
    // The ceilings that include the database: the bare design of a refresh, and bulk writes
    // at both group sizes.
    let bare_refresh = &report["ceilings"]["bare_refresh"];
    assert!(
        bare_refresh["requests"].as_u64() > Some(0)
            && bare_refresh["not_ok"] == serde_json::json!({}),
        "{bare_refresh}"
    );
    let pace = report["ceilings"]["bulk_pace"]
        .as_array()
        .expect("ceiling 4");
    let groups: Vec<u64> = pace.iter().filter_map(|p| p["group"].as_u64()).collect();
    assert_eq!(groups, [100, 1_000], "{pace:?}");
    assert!(
        pace.iter()
            .all(|p| p["inserts_per_second"].as_f64() > Some(0.0)
                && p["updates_per_second"].as_f64() > Some(0.0)),
        "{pace:?}"
    );
    let targets = report["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 9);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_allowance_run_measures_the_endpoint_under_every_organization_limit() {
    let (stdout, report) = smoke("allowance", &["--devices", "100", "--rounds", "1"]).await;
    let rows = report["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 3, "{report:#}");
    for row in rows {
        let name = row["setting"]["name"].as_str().expect("a setting's name");
        assert!(stdout.contains(name), "the table has no row {name:?}");
        // Every limit is far above what the smoke load asks: each row admits every request,
        // one per device, or runs for its time without a refusal.
        let load = &row["endpoint"]["load"];
        assert!(load["requests"].as_u64() > Some(0), "{row}");
        assert_eq!(load["not_ok"], serde_json::json!({}), "{row}");
        assert!(row["endpoint"]["ratio"].as_f64() > Some(0.0), "{row}");
    }
}
