//! The zone-node benchmark of issue 3.
//!
//! [`run`] starts one `xarxa run` process (through the end-to-end harness,
//! [`xarxa_tests::Node`]) on `127.0.0.1:0`, makes the users every selected
//! measurement needs (Argon2id makes that the slow part, so it happens
//! once), then runs each measurement on a freshly restarted process on the
//! same data directory, so that none inherits another's heap or caches:
//!
//! - [`latency`]: sequential calls between two devices, percentiles of
//!   `call` → `incoming` and friends;
//! - [`calls`]: a thousand calls placed at once between devices that are
//!   all connected first;
//! - [`sockets`]: the node's memory holding ten thousand idle
//!   authenticated sockets.
//!
//! (a) talks through the harness's [`xarxa_tests::Device`]; (b) and (c),
//! with thousands of sockets sharing two cores with the node, through the
//! leaner [`client`]. [`host`] reads memory and CPU time from `/proc`.
//!
//! Everything is bounded: counts by [`MAX_SOCKETS`] and the open-files
//! limit, every wait by a timeout.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use xarxa_tests::{Node, User};

pub mod calls;
pub mod client;
pub mod host;
pub mod latency;
pub mod sockets;
pub mod stats;

/// Goal of issue 3: p99 of `call` → `incoming` at the callee, milliseconds.
pub const GOAL_P99_MS: f64 = 5.0;
/// Goal of issue 3: 1,000 concurrent calls set up within this, milliseconds.
pub const GOAL_CALLS_MS: f64 = 2_000.0;
/// Goal of issue 3: node RSS holding 10,000 idle sockets, MiB.
pub const GOAL_RSS_MIB: f64 = 300.0;
/// Most sockets (or devices) one run may open.
pub const MAX_SOCKETS: usize = 16_000;
/// Most rounds of the latency measurement.
pub const MAX_LATENCY_CALLS: usize = 100_000;
/// Zone name of the benchmarked node.
pub const ZONE: &str = "bench";

/// Which measurements to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selection {
    /// (a) latency.
    pub latency: bool,
    /// (b) concurrent calls.
    pub calls: bool,
    /// (c) idle sockets.
    pub sockets: bool,
}

/// Everything a run needs to know.
#[derive(Debug, Clone)]
pub struct Options {
    /// What to run.
    pub selection: Selection,
    /// (a) parameters.
    pub latency: latency::Options,
    /// (b) parameters.
    pub calls: calls::Options,
    /// Users the caller devices of (b) belong to.
    pub caller_users: usize,
    /// (c) parameters.
    pub sockets: sockets::Options,
    /// Users registered at once while setting up.
    pub setup_concurrency: usize,
    /// Run the node with its mesh on (as the harness configures it: loopback
    /// only, no mDNS); off measures the lone zone node.
    pub mesh: bool,
    /// How the bench was invoked, for the record.
    pub command: String,
    /// Worker threads of the bench's own runtime, for the record.
    pub client_threads: usize,
}

/// The record of one run, written as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// How the bench was invoked.
    pub command: String,
    /// When it started, seconds since the Unix epoch.
    pub unix_time: u64,
    /// Where it ran.
    pub machine: host::Machine,
    /// The node binary measured.
    pub node_binary: String,
    /// Its version, from `node.json`.
    pub node_version: String,
    /// Configuration the node ran with beyond its defaults.
    pub node_env: Vec<(String, String)>,
    /// Worker threads of the bench's runtime (the node has its own).
    pub client_threads: usize,
    /// Whether the bench itself was an optimised build.
    pub release_build: bool,
    /// Users registered for the run.
    pub users: usize,
    /// Time to register and log them in, seconds.
    pub setup_secs: f64,
    /// (a), if run.
    pub latency: Option<latency::Outcome>,
    /// (b), if run.
    pub calls: Option<calls::Outcome>,
    /// (c), if run.
    pub sockets: Option<sockets::Outcome>,
}

/// The users of a run: callers (of (a) and (b)) and callees (of (a) and
/// (b); their tokens also open the sockets of (c)).
struct Users {
    callers: Vec<User>,
    callees: Vec<User>,
}

impl Options {
    /// Fails when a count is out of bounds.
    pub fn check(&self, open_files: u64) -> Result<()> {
        let s = &self.selection;
        if s.latency && !(1..=MAX_LATENCY_CALLS).contains(&self.latency.calls) {
            bail!("latency calls must be 1 to {MAX_LATENCY_CALLS}");
        }
        let devices =
            (if s.calls { 2 * self.calls.calls } else { 0 }).max(if s.sockets { self.sockets.sockets } else { 0 });
        if devices > MAX_SOCKETS {
            bail!("at most {MAX_SOCKETS} sockets or devices in one run (asked for {devices})");
        }
        if devices as u64 + 512 > open_files {
            bail!("{devices} sockets need a higher open-files limit than {open_files} (see `ulimit -Hn`)");
        }
        if s.calls && (self.calls.calls == 0 || self.caller_users == 0) {
            bail!("calls and caller users must be positive");
        }
        if s.sockets && (self.sockets.sockets == 0 || self.sockets.devices_per_user == 0) {
            bail!("sockets and devices per user must be positive");
        }
        Ok(())
    }

    fn callees_needed(&self) -> usize {
        let s = &self.selection;
        let mut n = usize::from(s.latency);
        if s.calls {
            n = n.max(self.calls.calls);
        }
        if s.sockets && self.sockets.stage == sockets::Stage::Authenticated {
            n = n.max(self.sockets.sockets.div_ceil(self.sockets.devices_per_user.max(1)));
        }
        n
    }

    fn callers_needed(&self) -> usize {
        let s = &self.selection;
        let mut n = usize::from(s.latency);
        if s.calls {
            n = n.max(self.caller_users.min(self.calls.calls));
        }
        n
    }

    /// The node's configuration beyond its defaults: only the limits the
    /// load itself would trip.
    pub fn node_env(&self) -> Vec<(String, String)> {
        let s = &self.selection;
        let mut devices_per_user = 10; // the node's default
        if s.calls {
            devices_per_user = devices_per_user.max(self.calls.calls.div_ceil(self.caller_users.max(1)));
        }
        if s.sockets {
            devices_per_user = devices_per_user.max(self.sockets.devices_per_user);
        }
        let mut env = vec![
            // Everything registers from 127.0.0.1 (default: 20 per 5 minutes).
            ("XARXA_LIMITS__REGISTRATIONS_PER_ADDRESS".to_owned(), "100000".to_owned()),
            ("XARXA_LIMITS__MAX_DEVICES_PER_USER".to_owned(), devices_per_user.to_string()),
            ("XARXA_LIMITS__MAX_CONNECTIONS".to_owned(), (MAX_SOCKETS + 1024).to_string()),
        ];
        if s.sockets && self.sockets.stage == sockets::Stage::Upgraded {
            // Sockets that never say hello are otherwise closed after 10 s.
            env.push(("XARXA_TIMEOUTS__HELLO".to_owned(), "1h".to_owned()));
        }
        if !self.mesh {
            env.push(("XARXA_MESH__ENABLED".to_owned(), "false".to_owned()));
        }
        if s.latency {
            // One device placing calls back to back sends far more than the
            // default 50 messages per second.
            env.push(("XARXA_LIMITS__WS_MESSAGES_PER_SECOND".to_owned(), "100000".to_owned()));
        }
        env
    }
}

/// Runs the selected measurements. `node_binary` is only recorded (the
/// harness starts what `$XARXA_BIN` names).
pub async fn run(opts: &Options, node_binary: &str) -> Result<Report> {
    let env = opts.node_env();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let unix_time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut node = Node::start(ZONE, &env_refs).context("starting the node")?;
    eprintln!("node pid {} on {}, log {}", node.info().pid, node.addr(), node.log_path().display());

    let t_setup = Instant::now();
    let users = make_users(&node, opts.callers_needed(), opts.callees_needed(), opts.setup_concurrency).await?;
    let setup_secs = t_setup.elapsed().as_secs_f64();
    eprintln!("{} users registered and logged in in {setup_secs:.1} s", users.callers.len() + users.callees.len());

    let mut report = Report {
        command: opts.command.clone(),
        unix_time,
        machine: host::machine(),
        node_binary: node_binary.to_owned(),
        node_version: node.info().version.clone(),
        node_env: env.clone(),
        client_threads: opts.client_threads,
        release_build: !cfg!(debug_assertions),
        users: users.callers.len() + users.callees.len(),
        setup_secs,
        latency: None,
        calls: None,
        sockets: None,
    };
    let s = opts.selection;
    if s.latency {
        fresh(&mut node)?;
        eprintln!("(a) latency: {} calls after {} warm-up …", opts.latency.calls, opts.latency.warmup);
        let (caller, callee) = (&users.callers[0], &users.callees[0]);
        report.latency = Some(latency::run(&node, caller, callee, opts.latency).await.context("(a) latency")?);
    }
    if s.calls {
        fresh(&mut node)?;
        eprintln!("(b) {} concurrent calls …", opts.calls.calls);
        let callers = &users.callers[..opts.caller_users.min(users.callers.len())];
        report.calls = Some(calls::run(&node, callers, &users.callees, opts.calls).await.context("(b) calls")?);
    }
    if s.sockets {
        fresh(&mut node)?;
        eprintln!("(c) {} idle sockets …", opts.sockets.sockets);
        report.sockets = Some(sockets::run(&node, &users.callees, opts.sockets).await.context("(c) sockets")?);
    }
    if !node.is_running() {
        bail!("the node died during the run; log:\n{}", node.log_tail(40));
    }
    Ok(report)
}

/// Restarts the node on the same data directory: a fresh process with the
/// same users and sessions.
fn fresh(node: &mut Node) -> Result<()> {
    node.restart().context("restarting the node")?;
    eprintln!("node restarted: pid {} on {}", node.info().pid, node.addr());
    Ok(())
}

async fn make_users(node: &Node, callers: usize, callees: usize, concurrency: usize) -> Result<Users> {
    let caller_names: Vec<String> = (0..callers).map(|i| format!("c{i:04}")).collect();
    let callee_names: Vec<String> = (0..callees).map(|i| format!("u{i:05}")).collect();
    let mut made = Vec::with_capacity(callers + callees);
    let all: Vec<&String> = caller_names.iter().chain(&callee_names).collect();
    let report_every = (all.len() / 10).max(1);
    for chunk in all.chunks(concurrency.max(1)) {
        let users = futures_util::future::try_join_all(chunk.iter().map(|n| node.user(n))).await?;
        made.extend(users);
        if made.len() % report_every < chunk.len() {
            eprintln!("  users: {}/{}", made.len(), all.len());
        }
    }
    let callees = made.split_off(callers);
    Ok(Users { callers: made, callees })
}

impl Report {
    /// The figures as a plain-text table, against the goals of issue 3.
    pub fn table(&self) -> String {
        let mut rows: Vec<[String; 4]> = Vec::new();
        let mut row = |what: &str, value: String, goal: &str, met: Option<bool>| {
            let verdict = match met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            };
            rows.push([what.to_owned(), value, goal.to_owned(), verdict.to_owned()]);
        };
        let msf = |v: f64| format!("{v:.3} ms");
        let cpu = |c: &host::CpuUse| format!("{:.0} / {:.0} ms of {:.0} ms", c.node_ms, c.bench_ms, c.wall_ms);
        if let Some(l) = &self.latency {
            let i = &l.call_to_incoming;
            row("(a) call -> incoming at callee, p50", msf(i.p50_ms), "", None);
            row("(a) call -> incoming at callee, p90", msf(i.p90_ms), "", None);
            row("(a) call -> incoming at callee, p99", msf(i.p99_ms), "< 5 ms", Some(i.p99_ms < GOAL_P99_MS));
            row("(a) call -> incoming at callee, max", msf(i.max_ms), "", None);
            let r = &l.call_to_ringing;
            row("(a) call -> ringing at caller, p50 / p99", format!("{:.3} / {:.3} ms", r.p50_ms, r.p99_ms), "", None);
            let a = &l.accept_to_accepted;
            row("(a) accept -> accepted, p50 / p99", format!("{:.3} / {:.3} ms", a.p50_ms, a.p99_ms), "", None);
            let h = &l.hangup_to_ended;
            row("(a) hangup -> ended (flushed), p50 / p99", format!("{:.3} / {:.3} ms", h.p50_ms, h.p99_ms), "", None);
            row(
                "(a) rounds measured",
                format!("{} (+{} warm-up) in {:.1} s", l.calls, l.warmup, l.wall_secs),
                "",
                None,
            );
            row("(a) CPU node / bench over those rounds", cpu(&l.cpu), "", None);
        }
        if let Some(c) = &self.calls {
            row("(b) devices connected (hello+welcome)", format!("{} in {:.2} s", c.devices, c.connect_secs), "", None);
            row("(b) first call sent -> all incoming", msf(c.all_incoming_ms), "", None);
            row("(b) first call sent -> all ringing", msf(c.all_ringing_ms), "", None);
            row(
                &format!("(b) first call sent -> all {} accepted", c.calls),
                msf(c.all_accepted_ms),
                "< 2 s",
                Some(c.all_accepted_ms < GOAL_CALLS_MS),
            );
            let p = &c.per_call_incoming;
            row("(b) per call, call -> incoming p50 / p99", format!("{:.1} / {:.1} ms", p.p50_ms, p.p99_ms), "", None);
            let p = &c.per_call_accepted;
            row("(b) per call, call -> accepted p50 / p99", format!("{:.1} / {:.1} ms", p.p50_ms, p.p99_ms), "", None);
            row("(b) CPU node / bench, release -> all accepted", cpu(&c.cpu_setup), "", None);
            row("(b) all hang up -> all ended (flushed)", msf(c.all_ended_ms), "", None);
        }
        if let Some(s) = &self.sockets {
            let mib = |kib: u64| kib as f64 / 1024.0;
            let counted = s.node_devices.map_or_else(|| "?".to_owned(), |n| n.to_string());
            row(
                &format!("(c) sockets open ({:?}; node counts devices)", s.stage),
                format!("{} ({counted})", s.open_at_measure),
                "",
                None,
            );
            row("(c) time to open them", format!("{:.2} s", s.connect_secs), "", None);
            row("(c) CPU node / bench while opening", cpu(&s.cpu_connect), "", None);
            row("(c) node RSS idle, before", format!("{:.1} MiB", mib(s.baseline.rss_kib)), "", None);
            row(
                &format!("(c) node RSS with {} sockets", s.sockets),
                format!("{:.1} MiB", mib(s.loaded.rss_kib)),
                "< 300 MiB",
                (s.stage == sockets::Stage::Authenticated).then_some(mib(s.loaded.rss_kib) < GOAL_RSS_MIB),
            );
            row("(c) per socket (delta / sockets)", format!("{:.1} KiB", s.per_socket_kib), "", None);
            row("(c) node RSS after closing them", format!("{:.1} MiB", mib(s.after_close.rss_kib)), "", None);
        }
        let width = |k: usize| rows.iter().map(|r| r[k].len()).max().unwrap_or(0);
        let (w0, w1, w2) = (width(0), width(1), width(2));
        let mut out = String::new();
        for r in &rows {
            let line = format!("{:<w0$}  {:>w1$}  {:<w2$}  {}", r[0], r[1], r[2], r[3]);
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Bound for one step of a measurement, unless told otherwise.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(120);
