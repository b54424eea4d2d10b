//! The mesh simulator: many zone nodes in one process, each a real
//! [`dht::Mesh`] — the code the node ships: libp2p swarm, Kademlia, signed
//! records, request-response signalling with receipts — on an emulated
//! network ([`dht::netem`]) with per-link latency, loss, bandwidth,
//! partitions, crashes and NAT.
//!
//! A run goes:
//!
//! 1. [`Scenario`] (TOML) → [`Plan`]: topology and workload drawn from the
//!    seed alone (same seed, same plan; [`Plan::digest`] checks it).
//! 2. [`runner::run`]: nodes join at the planned rate, bootstrap from the
//!    planned peers and publish their users; the workload (lookups through
//!    `Mesh::resolve`, calls through `Mesh::send` answered with `accepted`),
//!    churn and the partition happen at their planned wall-clock times.
//! 3. [`Summary`]: success rates, latency percentiles, hops and messages
//!    per lookup, call set-up, records lost, memory per node; written as
//!    `summary.json`, `report.md`, CSV files and SVG plots.
//!
//! [`multi`] runs real `xarxa` processes on loopback for comparison.

pub mod metrics;
pub mod multi;
pub mod plan;
pub mod plot;
pub mod report;
pub mod runner;
pub mod scenario;

use std::path::Path;

pub use plan::Plan;
pub use report::Summary;
pub use runner::RunOptions;
pub use scenario::Scenario;

/// Plans and runs `scenario`, writes its report, CSV files and plots into
/// `out`, and returns the summary.
pub async fn simulate(scenario: &Scenario, out: &Path, opts: &RunOptions) -> anyhow::Result<Summary> {
    let plan = Plan::new(scenario);
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("plan-digest.txt"), format!("{}\n", plan.digest()))?;
    let measured = runner::run(plan.clone(), opts).await?;
    let summary = Summary::new(&plan, &measured);
    report::write_files(out, &plan, &measured, &summary)?;
    plot::run_plots(out, &plan, &summary, &measured).map_err(|e| anyhow::anyhow!("plotting: {e}"))?;
    Ok(summary)
}
