//! `xarxa-sim`: runs many real mesh nodes in one process on an emulated
//! network, as a TOML scenario says, and reports what it measured.
//!
//! ```text
//! xarxa-sim run simulations/scenarios/smoke.toml --out sim-out/smoke
//! xarxa-sim plan simulations/scenarios/churn-1000.toml        # the plan's digest
//! xarxa-sim sweep simulations/scenarios/no-churn-1000.toml --sizes 100,250,500,1000 --out sim-out/sizes
//! xarxa-sim multi --nodes 30 --out sim-out/multi              # real processes on loopback
//! ```

/// Thousands of connection tasks allocate and free small buffers all the
/// time; with glibc's malloc a sixth of a large run went to consolidating
/// free lists.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use xarxa_simulations::sim::{self, multi, Plan, RunOptions, Scenario, Summary};

#[derive(Parser)]
#[command(name = "xarxa-sim", about = "Simulates a mesh of Xarxa zone nodes (real dht code, emulated network)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Overrides {
    /// Nodes at the start (overrides the scenario).
    #[arg(long)]
    nodes: Option<usize>,
    /// Seed (overrides the scenario).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds of workload (overrides the scenario).
    #[arg(long)]
    duration: Option<f64>,
    /// Wall-clock seconds per simulated second (overrides the scenario's
    /// `time_scale`).
    #[arg(long)]
    time_scale: Option<f64>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs a scenario and writes its report, CSV files and plots.
    Run {
        /// The scenario file.
        scenario: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "sim-out")]
        out: PathBuf,
        #[command(flatten)]
        over: Overrides,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Stop after this many seconds of wall time whatever happens.
        #[arg(long, default_value_t = 3600)]
        max_wall: u64,
    },
    /// Draws a scenario's plan and prints its digest (same seed, same digest).
    Plan {
        /// The scenario file.
        scenario: PathBuf,
        #[command(flatten)]
        over: Overrides,
        /// Also write the plan as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Runs a scenario at several network sizes and plots against size.
    Sweep {
        /// The scenario file.
        scenario: PathBuf,
        /// Sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "100,250,500,1000")]
        sizes: Vec<usize>,
        /// Output directory (one subdirectory per size).
        #[arg(long, default_value = "sim-out/sweep")]
        out: PathBuf,
        #[command(flatten)]
        over: Overrides,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Starts real `xarxa` processes on loopback, measures lookups and call
    /// routing from an observer node, and compares with the in-process mode.
    Multi {
        /// Node processes.
        #[arg(long, default_value_t = 30)]
        nodes: usize,
        /// Users per node.
        #[arg(long, default_value_t = 2)]
        users: usize,
        /// Lookups.
        #[arg(long, default_value_t = 600)]
        lookups: usize,
        /// Call invites.
        #[arg(long, default_value_t = 200)]
        calls: usize,
        /// Seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Seconds to let the mesh settle before measuring.
        #[arg(long, default_value_t = 20)]
        settle: u64,
        /// Output directory.
        #[arg(long, default_value = "sim-out/multi")]
        out: PathBuf,
        /// Skip the in-process run of the same plan.
        #[arg(long)]
        no_compare: bool,
        /// Largest difference in lookup success (percentage points) that
        /// counts as agreement.
        #[arg(long, default_value_t = 1.0)]
        margin: f64,
    },
}

fn load(path: &Path, over: &Overrides) -> anyhow::Result<Scenario> {
    let mut s = Scenario::load(path)?;
    if let Some(n) = over.nodes {
        s.nodes = n;
        s.name = format!("{}-n{n}", s.name);
    }
    if let Some(seed) = over.seed {
        s.seed = seed;
    }
    if let Some(d) = over.duration {
        s.duration_s = d;
    }
    if let Some(k) = over.time_scale {
        s.time_scale = k;
    }
    s.validate()?;
    Ok(s)
}

fn options(progress: bool, max_wall: u64) -> RunOptions {
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    RunOptions {
        progress,
        max_wall: Duration::from_secs(max_wall),
        data_dir: base.join(format!("xarxa-sim-{}", std::process::id())),
    }
}

async fn run_one(s: &Scenario, out: &Path, progress: bool, max_wall: u64) -> anyhow::Result<Summary> {
    let plan = Plan::new(s);
    let (l, c) = plan.operations();
    eprintln!(
        "{}: {} nodes ({} ever), {l} lookups, {c} calls planned; plan {}",
        s.name,
        s.nodes,
        plan.nodes.len(),
        &plan.digest()[..16]
    );
    let summary = sim::simulate(s, out, &options(progress, max_wall)).await?;
    println!("{}", summary.table());
    eprintln!("report: {}", out.join("report.md").display());
    Ok(summary)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    match cli.cmd {
        Cmd::Run { scenario, out, over, quiet, max_wall } => {
            let s = load(&scenario, &over)?;
            run_one(&s, &out, !quiet, max_wall).await?;
        }
        Cmd::Plan { scenario, over, json } => {
            let s = load(&scenario, &over)?;
            let plan = Plan::new(&s);
            let (l, c) = plan.operations();
            println!(
                "{}  {} nodes ({} ever), {} actions, {l} lookups, {c} calls",
                plan.digest(),
                s.nodes,
                plan.nodes.len(),
                plan.actions.len()
            );
            let lat = sim::metrics::Dist::of(plan.latency_sample(10_000));
            println!(
                "one-way link latency ms: p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}",
                lat.p50, lat.p90, lat.p99, lat.max
            );
            if let Some(p) = json {
                std::fs::write(&p, serde_json::to_vec_pretty(&plan)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
        }
        Cmd::Sweep { scenario, sizes, out, over, quiet } => {
            let base = load(&scenario, &over)?;
            let mut runs = Vec::new();
            for n in sizes {
                let mut s = base.clone();
                s.nodes = n;
                s.name = format!("{}-n{n}", base.name);
                s.validate()?;
                let summary = run_one(&s, &out.join(format!("n{n}")), !quiet, 3600).await?;
                runs.push(summary);
            }
            std::fs::create_dir_all(&out)?;
            let mut csv = String::from(
                "nodes,lookup_success,latency_p50_ms,latency_p99_ms,first_p50_ms,hops_mean,hops_p99,log2_n,expected_hops,messages_mean,call_success,setup_p50_ms,memory_per_node_kib,lookups_per_s\n",
            );
            for r in &runs {
                csv.push_str(&format!(
                    "{},{:.5},{:.1},{:.1},{:.1},{:.3},{:.0},{:.3},{:.3},{:.1},{:.5},{:.1},{:.0},{:.1}\n",
                    r.nodes,
                    r.lookups.success.rate,
                    r.lookups.latency_ms.p50,
                    r.lookups.latency_ms.p99,
                    r.lookups.first_record_ms.p50,
                    r.lookups.hops.mean,
                    r.lookups.hops.p99,
                    r.theory_hops_bound,
                    r.theory_hops_expected,
                    r.lookups.messages.mean,
                    r.calls.rate,
                    r.call_setup_ms.p50,
                    r.memory_per_node_kib,
                    r.lookups_per_s
                ));
            }
            std::fs::write(out.join("sizes.csv"), csv)?;
            std::fs::write(out.join("sizes.json"), serde_json::to_vec_pretty(&runs)?)?;
            sim::plot::size_plots(&out, &runs).map_err(|e| anyhow::anyhow!("plotting: {e}"))?;
            eprintln!("size plots in {}", out.display());
        }
        Cmd::Multi { nodes, users, lookups, calls, seed, settle, out, no_compare, margin } => {
            let o = multi::MultiOptions {
                nodes,
                users_per_node: users,
                lookups,
                calls,
                seed,
                settle_s: settle,
                concurrency: 8,
            };
            std::fs::create_dir_all(&out)?;
            let m = multi::run(&o, true).await?;
            std::fs::write(out.join("multi.json"), serde_json::to_vec_pretty(&m)?)?;
            println!(
                "multi-process: {} nodes, lookups {:.2}% ({}/{}), p50 {:.0} ms p99 {:.0} ms, hops mean {:.2}; invites {:.2}% ({}/{}); RSS per process p50 {:.0} MiB",
                m.nodes,
                m.lookups.rate * 100.0,
                m.lookups.ok,
                m.lookups.total,
                m.latency_ms.p50,
                m.latency_ms.p99,
                m.hops.mean,
                m.calls.rate * 100.0,
                m.calls.ok,
                m.calls.total,
                m.rss_per_process_mib.p50
            );
            if !m.errors.is_empty() {
                println!("  failures: {:?}", m.errors);
            }
            if !no_compare {
                let mut s = multi::scenario(&o);
                s.lookup_rate = (lookups as f64 / 60.0).max(1.0);
                s.call_rate = (calls as f64 / 60.0).max(0.5);
                s.duration_s = 60.0;
                let inproc = run_one(&s, &out.join("in-process"), true, 1800).await?;
                let diff = (inproc.lookups.success.rate - m.lookups.rate).abs() * 100.0;
                let agree = diff <= margin;
                let text = format!(
                    "lookup success: multi-process {:.2}% vs in-process {:.2}% (difference {:.2} points, margin {margin}): {}\n\
                     call routing:   multi-process {:.2}% vs in-process {:.2}%\n",
                    m.lookups.rate * 100.0,
                    inproc.lookups.success.rate * 100.0,
                    diff,
                    if agree { "AGREE" } else { "DISAGREE" },
                    m.calls.rate * 100.0,
                    inproc.calls.rate * 100.0,
                );
                print!("{text}");
                std::fs::write(out.join("comparison.txt"), text)?;
                if !agree {
                    anyhow::bail!("the modes disagree by more than the margin");
                }
            }
        }
    }
    Ok(())
}
