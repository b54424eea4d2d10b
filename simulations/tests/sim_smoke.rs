//! A small in-process simulation end to end: real meshes on the emulated
//! network publish, resolve and route calls; the report, CSV files and
//! plots are written. Kept small: tests run unoptimised, where signature
//! checks are slow.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use xarxa_simulations::sim::{self, RunOptions, Scenario, Summary};

/// Runs `s` with its output in a temporary directory (returned, so the
/// files can be read), for at most `max_wall_s` seconds.
async fn simulate(s: &Scenario, max_wall_s: u64) -> (Summary, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let opts =
        RunOptions { progress: false, max_wall: Duration::from_secs(max_wall_s), data_dir: data.path().join("db") };
    (sim::simulate(s, out.path(), &opts).await.unwrap(), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_mesh_resolves_and_routes_calls() {
    let s = Scenario::parse(
        r#"
        name = "test"
        seed = 5
        nodes = 8
        users_per_node = 2
        join_rate = 8.0
        settle_s = 4.0
        duration_s = 12.0
        lookup_rate = 2.0
        call_rate = 0.5
        min_record_age_s = 4.0
        bucket_s = 4.0
        [latency]
        kind = "constant"
        ms = 5.0
        [churn]
        replace_fraction = 0.25
        crash_share = 0.5
        rejoin_share = 0.5
        rejoin_after_s = 3.0
        "#,
    )
    .unwrap();
    let (summary, out) = simulate(&s, 50).await;
    assert!(!summary.cut_short);
    assert!(summary.lookups.success.total >= 10, "{}", summary.table());
    assert!(summary.lookups.success.rate >= 0.9, "{}", summary.table());
    assert!(summary.calls.total >= 1 && summary.calls.rate >= 0.5, "{}", summary.table());
    assert!(summary.lookups.hops.max <= summary.theory_hops_bound.ceil(), "{}", summary.table());
    for f in [
        "summary.json",
        "report.md",
        "lookups.csv",
        "calls.csv",
        "timeline.csv",
        "latency.svg",
        "success.svg",
        "hops.svg",
    ] {
        let len = std::fs::metadata(out.path().join(f)).unwrap().len();
        assert!(len > 100, "{f} is {len} bytes");
    }
}

/// On a clock stretched twice, the plan runs twice as long in wall-clock
/// time while everything reported stays in simulated time: link delays
/// are stretched as well, so no call is set up faster than one simulated
/// round trip, and the resource samples end at the simulated length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stretched_clock_reports_simulated_time() {
    let s = Scenario::parse(
        r#"
        name = "scaled"
        seed = 6
        time_scale = 2.0
        nodes = 6
        users_per_node = 1
        join_rate = 6.0
        settle_s = 3.0
        duration_s = 6.0
        lookup_rate = 2.0
        call_rate = 1.0
        min_record_age_s = 2.0
        bucket_s = 2.0
        [latency]
        kind = "constant"
        ms = 40.0
        "#,
    )
    .unwrap();
    let (summary, out) = simulate(&s, 80).await;
    assert!(!summary.cut_short, "{}", summary.table());
    assert_eq!(summary.time_scale, 2.0);
    let simulated = s.workload_start_s() + s.duration_s;
    assert!(summary.wall_s >= 2.0 * simulated, "wall {} s for {simulated} simulated s", summary.wall_s);
    assert!(summary.calls.ok >= 1, "{}", summary.table());
    let fastest = std::fs::read_to_string(out.path().join("calls.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| l.split(',').nth(2) == Some("true"))
        .filter_map(|l| l.split(',').nth(4).and_then(|v| v.parse::<f64>().ok()))
        .fold(f64::INFINITY, f64::min);
    assert!(fastest >= 80.0, "a call was set up in {fastest} simulated ms, under one 80 ms round trip");
    let last_sample = std::fs::read_to_string(out.path().join("resources.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').next().and_then(|v| v.parse::<f64>().ok()))
        .fold(0.0, f64::max);
    assert!(last_sample > 0.0 && last_sample <= summary.wall_s / 2.0 + 0.5, "last sample at {last_sample} s");
}
