//! `xarxa-bench`: the zone-node benchmark of issue 3 (latency, concurrent
//! calls, idle sockets) against a real `xarxa` process on 127.0.0.1.
//!
//! Run it optimised: `cargo run --release -p xarxa-simulations --bin
//! xarxa-bench -- all`. It prints a table and writes the figures as JSON.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use clap::{Parser, ValueEnum};
use xarxa_simulations::bench::{self, calls, latency, sockets, Options, Selection, STEP_TIMEOUT};

/// Benchmarks a Xarxa zone node on loopback (issue 3, point 4).
#[derive(Parser, Debug)]
#[command(name = "xarxa-bench", version, about)]
struct Cli {
    /// Which measurement: latency, calls, sockets or all.
    #[arg(value_enum)]
    what: What,
    /// (a) measured sequential calls.
    #[arg(long, default_value_t = 2_000)]
    latency_calls: usize,
    /// (a) unmeasured calls first.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// (b) concurrent calls (twice as many devices).
    #[arg(long, default_value_t = 1_000)]
    calls: usize,
    /// (b) users the caller devices belong to (each callee is its own user).
    #[arg(long, default_value_t = 10)]
    caller_users: usize,
    /// (c) idle sockets.
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// (c) sockets (devices) per user.
    #[arg(long, default_value_t = 10)]
    devices_per_user: usize,
    /// (c) how far each socket goes: tls, upgraded or authenticated (the
    /// measurement of issue 3; the others split its memory).
    #[arg(long, value_enum, default_value_t = SocketStage::Authenticated)]
    socket_stage: SocketStage,
    /// Sockets being opened at once while connecting.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// (c) seconds to wait after the last welcome before reading the node's memory.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// Bound in seconds on each step (connecting, setting up calls, …).
    #[arg(long, default_value_t = STEP_TIMEOUT.as_secs())]
    step_timeout_secs: u64,
    /// Users registered at once during set-up (the node hashes two passwords at a time).
    #[arg(long, default_value_t = 4)]
    setup_concurrency: usize,
    /// Run the node without its mesh (a lone zone); by default the mesh is on,
    /// on loopback without mDNS, as the test harness runs it.
    #[arg(long)]
    no_mesh: bool,
    /// Worker threads of the bench's own runtime (1: a single-threaded client,
    /// leaving the other core to the node as far as possible).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// The `xarxa` binary; default: built with cargo in this profile.
    #[arg(long, env = "XARXA_BIN")]
    node_bin: Option<PathBuf>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/xarxa-bench.json")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SocketStage {
    Tls,
    Upgraded,
    Authenticated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum What {
    Latency,
    Calls,
    Sockets,
    All,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xarxa-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; run with --release for meaningful figures");
    }
    let open_files = bench::host::raise_open_files_limit()?;
    let node_bin = node_binary(cli.node_bin.clone())?;
    // The harness starts whatever `XARXA_BIN` names. Set before any thread
    // (the runtime) exists.
    std::env::set_var("XARXA_BIN", &node_bin);

    let all = cli.what == What::All;
    let step = Duration::from_secs(cli.step_timeout_secs.max(1));
    let opts = Options {
        selection: Selection {
            latency: all || cli.what == What::Latency,
            calls: all || cli.what == What::Calls,
            sockets: all || cli.what == What::Sockets,
        },
        latency: latency::Options { calls: cli.latency_calls, warmup: cli.warmup },
        calls: calls::Options { calls: cli.calls, connect_concurrency: cli.connect_concurrency, step_timeout: step },
        caller_users: cli.caller_users,
        sockets: sockets::Options {
            sockets: cli.sockets,
            devices_per_user: cli.devices_per_user,
            connect_concurrency: cli.connect_concurrency,
            settle: Duration::from_secs(cli.settle_secs),
            step_timeout: step,
            stage: match cli.socket_stage {
                SocketStage::Tls => sockets::Stage::Tls,
                SocketStage::Upgraded => sockets::Stage::Upgraded,
                SocketStage::Authenticated => sockets::Stage::Authenticated,
            },
        },
        setup_concurrency: cli.setup_concurrency,
        mesh: !cli.no_mesh,
        command: format!(
            "cargo run --release -p xarxa-simulations --bin xarxa-bench -- {}",
            std::env::args().skip(1).collect::<Vec<_>>().join(" ")
        ),
        client_threads: cli.client_threads.max(1),
    };
    opts.check(open_files)?;

    let runtime = if opts.client_threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(opts.client_threads).enable_all().build()
    }
    .context("starting the runtime")?;
    let report = runtime.block_on(bench::run(&opts, &node_bin.display().to_string()))?;

    println!("{}", report.table());
    write_json(&cli.out, &report)?;
    println!("results written to {}", cli.out.display());
    Ok(())
}

/// `explicit`, or the `xarxa` binary built by cargo in this build's profile
/// (a no-op when it is up to date). When that build fails (say, another
/// crate of the workspace is half-edited), falls back, with a warning, to
/// a `xarxa` already built next to this executable.
fn node_binary(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("Cargo.toml");
    eprintln!("building the xarxa binary ({}) …", if cfg!(debug_assertions) { "debug" } else { "release" });
    let mut build = escargot::CargoBuild::new().manifest_path(manifest).package("xarxa-node").bin("xarxa");
    if !cfg!(debug_assertions) {
        build = build.release();
    }
    let error = match build.run() {
        Ok(run) => return Ok(run.path().to_path_buf()),
        Err(e) => e,
    };
    let sibling = std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join("xarxa")));
    match sibling.filter(|p| p.is_file()) {
        Some(path) => {
            eprintln!("warning: building xarxa failed ({error}); using the existing {}", path.display());
            Ok(path)
        }
        None => Err(anyhow!("building the xarxa binary: {error}")),
    }
}

fn write_json(path: &Path, report: &bench::Report) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(report).context("serialising the report")?;
    std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
}
