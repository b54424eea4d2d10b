//! A small in-process simulation end to end: real meshes on the emulated
//! network publish, resolve and route calls; the report, CSV files and
//! plots are written. Kept small: tests run unoptimised, where signature
//! checks are slow.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use xarxa_simulations::sim::{self, RunOptions, Scenario};

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
    let out = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let opts = RunOptions { progress: false, max_wall: Duration::from_secs(50), data_dir: data.path().join("db") };
    let summary = sim::simulate(&s, out.path(), &opts).await.unwrap();
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
