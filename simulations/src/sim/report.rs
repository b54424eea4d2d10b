//! The summary of a run, and the files it is written to: `summary.json`,
//! `report.md`, CSV files of every sample and of the time series, and the
//! table printed at the end.

use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::metrics::{
    buckets, hops, theory_bound, theory_expected, Bucket, Dist, LookupSample, Purpose, Rate, ALPHA, K,
};
use super::plan::{Phase, Plan};
use super::runner::{is_cut_short, Measured};

/// Lookup figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LookupSummary {
    /// Workload lookups: successes out of attempts.
    pub success: Rate,
    /// Latency of successful lookups (the whole `resolve`), ms.
    pub latency_ms: Dist,
    /// Time until the first copy of the record arrived, ms.
    pub first_record_ms: Dist,
    /// Hops: request rounds until the first record (see `metrics::hops`).
    pub hops: Dist,
    /// Requests before the first record arrived.
    pub requests_to_first: Dist,
    /// Messages (Kademlia requests) per lookup of a user record.
    pub messages: Dist,
    /// Success by phase of the run.
    pub by_phase: Vec<(Phase, Rate)>,
    /// Failures by cause.
    pub errors: Vec<(String, usize)>,
    /// Success of the lookups whose target's node had its records
    /// acknowledged by the mesh when the lookup began.
    #[serde(default)]
    pub success_published: Rate,
    /// Lookups whose target's node was running but had not had its
    /// records acknowledged yet (it joined or came back recently, or its
    /// puts kept failing).
    #[serde(default)]
    pub unpublished_targets: Rate,
}

/// Partition figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartitionSummary {
    /// Nodes on the far side.
    pub far_nodes: usize,
    /// Probes (lookups across the former partition).
    pub probes: usize,
    /// Probes that succeeded again.
    pub recovered: usize,
    /// Seconds after the heal until probes succeeded again.
    pub recovery_s: Dist,
}

/// Everything a run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// The scenario.
    pub scenario: String,
    /// Its seed.
    pub seed: u64,
    /// The plan's digest (same seed, same digest).
    pub plan_digest: String,
    /// Nodes at the start.
    pub nodes: usize,
    /// Nodes that ever ran (replacements included).
    pub nodes_ever: usize,
    /// Nodes running when the workload started.
    pub nodes_at_workload: usize,
    /// Wall-clock seconds of the run.
    pub wall_s: f64,
    /// Wall-clock seconds per simulated second (the scaled clock); every
    /// other time in this summary is simulated time.
    pub time_scale: f64,
    /// Seconds of workload.
    pub workload_s: f64,
    /// The run hit its time limit.
    pub cut_short: bool,
    /// Workload lookups.
    pub lookups: LookupSummary,
    /// Calls: successes out of attempts.
    pub calls: Rate,
    /// Call set-up time (invite sent to `accepted` received), ms.
    pub call_setup_ms: Dist,
    /// Call failures by cause.
    pub call_errors: Vec<(String, usize)>,
    /// The end-of-run audit: live users' records checked.
    pub audit: Rate,
    /// Records of live users not found at the end by a lookup that the
    /// closest nodes answered (lookups cut short are not counted here).
    pub records_lost: usize,
    /// Audit lookups cut short (timed out, or the closest nodes did not
    /// answer) on every try: whether those records are still held is not
    /// known.
    #[serde(default)]
    pub audit_cut_short: usize,
    /// The partition, if any.
    pub partition: Option<PartitionSummary>,
    /// log2(N), the classic bound on hops.
    pub theory_hops_bound: f64,
    /// log2(N/k)/(1+log2 k), the expected hops with k-buckets.
    pub theory_hops_expected: f64,
    /// Resident memory before the first node, MiB.
    pub rss_baseline_mib: f64,
    /// Resident memory when the workload started, MiB.
    pub rss_at_workload_mib: f64,
    /// Highest resident memory, MiB.
    pub rss_peak_mib: f64,
    /// (RSS at workload − baseline) / nodes, KiB.
    pub memory_per_node_kib: f64,
    /// Nodes per GiB at that rate.
    pub nodes_per_gib: f64,
    /// Emulated connections per node when the workload started.
    pub connections_per_node: f64,
    /// CPU cores the process used on average during the workload.
    pub cpu_cores: f64,
    /// CPU milliseconds per node per simulated second during the workload.
    pub cpu_ms_per_node_s: f64,
    /// Lookups completed per simulated second of workload (all purposes).
    pub lookups_per_s: f64,
    /// Lookups completed per wall-clock second of workload: what this
    /// machine simulates.
    pub lookups_per_wall_s: f64,
    /// Kademlia requests per second of workload, by the lookups measured.
    pub kad_requests_per_s: f64,
    /// How late operations started against the plan, ms.
    pub lateness_ms: Dist,
    /// Operations dropped (too many in flight) and skipped (asker down).
    pub dropped: usize,
    /// Operations skipped because the asking node was down.
    pub skipped: usize,
    /// Nodes that failed to start.
    pub start_failures: usize,
    /// The emulated network's counters.
    pub net: dht::netem::NetemStats,
    /// The time series.
    pub timeline: Vec<Bucket>,
}

fn cpu_cores(m: &Measured) -> f64 {
    let wall = m.workload_wall.1 - m.workload_wall.0;
    if wall > 0.0 {
        (m.cpu_at_end - m.cpu_at_workload) / wall
    } else {
        0.0
    }
}

fn count_errors<'a>(errs: impl Iterator<Item = &'a str>) -> Vec<(String, usize)> {
    let mut m: std::collections::BTreeMap<String, usize> = Default::default();
    for e in errs {
        // "unreachable: <detail>" → "unreachable".
        let key = e.split(':').next().unwrap_or(e).trim().to_string();
        *m.entry(key).or_default() += 1;
    }
    let mut v: Vec<(String, usize)> = m.into_iter().collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v
}

impl Summary {
    /// Summarises what `plan` measured.
    pub fn new(plan: &Plan, m: &Measured) -> Self {
        let s = &plan.scenario;
        let work: Vec<&LookupSample> = m.lookups.iter().filter(|l| l.purpose == Purpose::Workload).collect();
        let ok_work: Vec<&&LookupSample> = work.iter().filter(|l| l.ok).collect();
        let mut phases: Vec<Phase> = work.iter().map(|l| l.phase).collect();
        phases.sort();
        phases.dedup();
        let by_phase =
            phases.iter().map(|p| (*p, Rate::of(work.iter().filter(|l| l.phase == *p).map(|l| l.ok)))).collect();
        // Hops are judged where the network is whole.
        let whole = |l: &&&&LookupSample| matches!(l.phase, Phase::Steady | Phase::Healed);
        let lookups = LookupSummary {
            success: Rate::of(work.iter().filter(|l| l.phase != Phase::PartitionCross).map(|l| l.ok)),
            latency_ms: Dist::of(ok_work.iter().map(|l| l.latency_ms)),
            first_record_ms: Dist::of(ok_work.iter().filter_map(|l| l.first_ms)),
            hops: Dist::of(
                ok_work.iter().filter(whole).filter_map(|l| l.requests_to_first.map(|r| f64::from(hops(r)))),
            ),
            requests_to_first: Dist::of(
                ok_work.iter().filter(whole).filter_map(|l| l.requests_to_first.map(f64::from)),
            ),
            messages: Dist::of(work.iter().filter(|l| l.requests > 0).map(|l| f64::from(l.requests))),
            by_phase,
            errors: count_errors(work.iter().filter_map(|l| l.error.as_deref())),
            success_published: Rate::of(
                work.iter().filter(|l| l.phase != Phase::PartitionCross && l.target_published).map(|l| l.ok),
            ),
            unpublished_targets: Rate::of(
                work.iter()
                    .filter(|l| l.phase != Phase::PartitionCross && !l.target_published && l.target_up_s.is_some())
                    .map(|l| l.ok),
            ),
        };
        let audit_samples: Vec<&LookupSample> = m.lookups.iter().filter(|l| l.purpose == Purpose::Audit).collect();
        let audit = Rate::of(audit_samples.iter().map(|l| l.ok));
        let partition = plan.actions.iter().find_map(|a| match &a.action {
            super::plan::Action::Partition { far } => Some(far.len()),
            _ => None,
        });
        let partition = partition.map(|far_nodes| PartitionSummary {
            far_nodes,
            probes: m.probe_recovery_s.len(),
            recovered: m.probe_recovery_s.iter().filter(|r| r.is_some()).count(),
            recovery_s: Dist::of(m.probe_recovery_s.iter().flatten().copied()),
        });
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let per_node = if m.nodes_at_workload > 0 {
            m.rss_at_workload.saturating_sub(m.rss_baseline) as f64 / 1024.0 / m.nodes_at_workload as f64
        } else {
            0.0
        };
        let workload_s = s.duration_s;
        let n = s.nodes;
        let requests: f64 = m.lookups.iter().map(|l| f64::from(l.requests)).sum();
        Summary {
            scenario: s.name.clone(),
            seed: s.seed,
            plan_digest: plan.digest(),
            nodes: n,
            nodes_ever: plan.nodes.len(),
            nodes_at_workload: m.nodes_at_workload,
            wall_s: m.wall_s,
            time_scale: m.time_scale.max(1.0),
            workload_s,
            cut_short: m.cut_short,
            lookups,
            calls: Rate::of(m.calls.iter().filter(|c| c.phase != Phase::PartitionCross).map(|c| c.ok)),
            call_setup_ms: Dist::of(m.calls.iter().filter(|c| c.ok).map(|c| c.setup_ms)),
            call_errors: count_errors(m.calls.iter().filter_map(|c| c.error.as_deref())),
            records_lost: audit_samples.iter().filter(|l| !l.ok && !is_cut_short(l.error.as_deref())).count(),
            audit_cut_short: audit_samples.iter().filter(|l| !l.ok && is_cut_short(l.error.as_deref())).count(),
            audit,
            partition,
            theory_hops_bound: theory_bound(n),
            theory_hops_expected: theory_expected(n),
            rss_baseline_mib: mib(m.rss_baseline),
            rss_at_workload_mib: mib(m.rss_at_workload),
            rss_peak_mib: mib(m.rss_peak),
            memory_per_node_kib: per_node,
            nodes_per_gib: if per_node > 0.0 { 1024.0 * 1024.0 / per_node } else { 0.0 },
            connections_per_node: if m.nodes_at_workload > 0 {
                2.0 * m.connections_at_workload as f64 / m.nodes_at_workload as f64
            } else {
                0.0
            },
            cpu_cores: cpu_cores(m),
            cpu_ms_per_node_s: if m.nodes_at_workload > 0 {
                cpu_cores(m) * m.time_scale.max(1.0) * 1000.0 / m.nodes_at_workload as f64
            } else {
                0.0
            },
            lookups_per_s: m.lookups.len() as f64 / workload_s,
            lookups_per_wall_s: m.lookups.len() as f64 / (workload_s * m.time_scale.max(1.0)),
            kad_requests_per_s: requests / workload_s,
            lateness_ms: Dist::of(work.iter().map(|l| l.late_ms).chain(m.calls.iter().map(|c| c.late_ms))),
            dropped: m.dropped,
            skipped: m.skipped,
            start_failures: m.start_failures,
            net: m.net,
            timeline: buckets(&m.lookups, &m.calls, s.bucket_s, s.duration_s),
        }
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let pct = |r: &Rate| format!("{:.2}% ({}/{})", r.rate * 100.0, r.ok, r.total);
        let d = |x: &Dist| format!("{:.0} / {:.0} / {:.0}", x.p50, x.p90, x.p99);
        let rows: Vec<(String, String)> = vec![
            ("scenario".into(), format!("{} (seed {}, plan {})", self.scenario, self.seed, &self.plan_digest[..12])),
            (
                "nodes".into(),
                format!("{} at start, {} ever, {} at workload", self.nodes, self.nodes_ever, self.nodes_at_workload),
            ),
            ("lookup success".into(), pct(&self.lookups.success)),
            (
                "  target published / not yet".into(),
                format!("{} / {}", pct(&self.lookups.success_published), pct(&self.lookups.unpublished_targets)),
            ),
            ("lookup latency p50/p90/p99 ms".into(), d(&self.lookups.latency_ms)),
            ("first record p50/p90/p99 ms".into(), d(&self.lookups.first_record_ms)),
            (
                "hops mean / p99 / max".into(),
                format!(
                    "{:.2} / {:.0} / {:.0}  (log2 N = {:.2}, expected {:.2})",
                    self.lookups.hops.mean,
                    self.lookups.hops.p99,
                    self.lookups.hops.max,
                    self.theory_hops_bound,
                    self.theory_hops_expected
                ),
            ),
            (
                "requests to 1st record mean/p99".into(),
                format!("{:.2} / {:.0}", self.lookups.requests_to_first.mean, self.lookups.requests_to_first.p99),
            ),
            (
                "messages per lookup mean/p99".into(),
                format!("{:.1} / {:.0}", self.lookups.messages.mean, self.lookups.messages.p99),
            ),
            ("call success".into(), pct(&self.calls)),
            ("call set-up p50/p90/p99 ms".into(), d(&self.call_setup_ms)),
            (
                "records lost (audit)".into(),
                format!(
                    "{} of {} ({} lookups cut short {} times)",
                    self.records_lost,
                    self.audit.total,
                    self.audit_cut_short,
                    super::runner::AUDIT_TRIES
                ),
            ),
            (
                "memory per node".into(),
                format!(
                    "{:.0} KiB ({:.0} nodes/GiB; peak RSS {:.0} MiB)",
                    self.memory_per_node_kib, self.nodes_per_gib, self.rss_peak_mib
                ),
            ),
            ("connections per node".into(), format!("{:.1}", self.connections_per_node)),
            (
                "CPU during workload".into(),
                format!("{:.2} cores ({:.2} ms per node per simulated s)", self.cpu_cores, self.cpu_ms_per_node_s),
            ),
            (
                "lookups/s simulated".into(),
                format!(
                    "{:.1} per simulated s, {:.1} per wall s ({:.0} kad requests per simulated s)",
                    self.lookups_per_s, self.lookups_per_wall_s, self.kad_requests_per_s
                ),
            ),
            ("clock".into(), format!("x{} (wall s per simulated s)", self.time_scale)),
            ("lateness p50/p99 ms".into(), format!("{:.0} / {:.0}", self.lateness_ms.p50, self.lateness_ms.p99)),
            ("dropped / skipped".into(), format!("{} / {}", self.dropped, self.skipped)),
            ("wall time".into(), format!("{:.0} s{}", self.wall_s, if self.cut_short { " (cut short)" } else { "" })),
        ];
        let mut rows = rows;
        for (p, r) in &self.lookups.by_phase {
            rows.push((format!("  lookups {p:?}"), pct(r)));
        }
        if let Some(p) = &self.partition {
            rows.push((
                "partition recovery".into(),
                format!(
                    "{}/{} probes found again; p50 {:.1} s, max {:.1} s after heal",
                    p.recovered, p.probes, p.recovery_s.p50, p.recovery_s.max
                ),
            ));
        }
        let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        for (k, v) in rows {
            let _ = writeln!(t, "{k:<w$}  {v}");
        }
        t
    }

    /// The markdown report.
    pub fn markdown(&self, plan: &Plan) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Simulation report: {}\n", self.scenario);
        let _ = writeln!(
            md,
            "Real `dht::Mesh` swarms (libp2p Kademlia, identify, ping, relay, signed records, \
             request-response signalling) on the emulated network, one process.\n"
        );
        let _ = writeln!(md, "```text\n{}```\n", self.table());
        let _ = writeln!(md, "## Hops\n");
        let _ = writeln!(
            md,
            "Hops are request rounds until the first copy of the record arrived: ⌈requests / α⌉ with α = {ALPHA} \
             (libp2p does not expose the path of a query; this is an upper estimate). Theory: the classic bound \
             log2 N = {:.2}; the expected count with k = {K} buckets, max(1, log2(N/k) / (1 + log2 k)) = {:.2}. \
             Measured: mean {:.2}, p99 {:.0}, max {:.0} — {} log2 N.\n",
            self.theory_hops_bound,
            self.theory_hops_expected,
            self.lookups.hops.mean,
            self.lookups.hops.p99,
            self.lookups.hops.max,
            if self.lookups.hops.max <= self.theory_hops_bound { "all within" } else { "NOT all within" }
        );
        let _ = writeln!(md, "## Over time\n");
        let _ = writeln!(md, "| t (s) | lookups | success | p50 ms | p99 ms | calls | call success | set-up p50 ms |");
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
        for b in &self.timeline {
            let _ = writeln!(
                md,
                "| {:.0} | {} | {:.2}% | {:.0} | {:.0} | {} | {:.2}% | {:.0} |",
                b.t_s,
                b.lookups.total,
                b.lookups.rate * 100.0,
                b.latency.p50,
                b.latency.p99,
                b.calls.total,
                b.calls.rate * 100.0,
                b.setup.p50
            );
        }
        if !self.lookups.errors.is_empty() || !self.call_errors.is_empty() {
            let _ = writeln!(md, "\n## Failures\n");
            for (e, n) in &self.lookups.errors {
                let _ = writeln!(md, "- lookup: {e}: {n}");
            }
            for (e, n) in &self.call_errors {
                let _ = writeln!(md, "- call: {e}: {n}");
            }
        }
        let _ = writeln!(md, "\n## Scenario\n\n```toml\n{}```", toml::to_string(&plan.scenario).unwrap_or_default());
        md
    }
}

fn csv_opt<T: std::fmt::Display>(x: Option<T>) -> String {
    x.map(|v| v.to_string()).unwrap_or_default()
}

/// Writes `summary.json`, `report.md`, `lookups.csv`, `calls.csv`,
/// `timeline.csv` and `resources.csv` into `dir`.
pub fn write_files(dir: &Path, plan: &Plan, m: &Measured, summary: &Summary) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("summary.json"), serde_json::to_vec_pretty(summary).unwrap_or_default())?;
    std::fs::write(dir.join("report.md"), summary.markdown(plan))?;
    let mut l = String::from(
        "t_s,purpose,phase,ok,error,latency_ms,first_ms,requests,requests_to_first,hops,failures,late_ms,target_up_s,target_published,asker_up_s,claim_requests,claim_successes,claim_records,asker_table,asker_peers\n",
    );
    for x in &m.lookups {
        let _ = writeln!(
            l,
            "{:.3},{:?},{:?},{},{},{:.1},{},{},{},{},{},{:.1},{},{},{},{},{},{},{},{}",
            x.t_s,
            x.purpose,
            x.phase,
            x.ok,
            x.error.as_deref().unwrap_or("").replace(',', ";"),
            x.latency_ms,
            csv_opt(x.first_ms),
            x.requests,
            csv_opt(x.requests_to_first),
            csv_opt(x.requests_to_first.map(hops)),
            x.failures,
            x.late_ms,
            csv_opt(x.target_up_s.map(|s| (s * 10.0).round() / 10.0)),
            x.target_published,
            csv_opt(x.asker_up_s.map(|s| (s * 10.0).round() / 10.0)),
            x.claim.0,
            x.claim.1,
            x.claim.2,
            csv_opt(x.asker_view.map(|v| v.0)),
            csv_opt(x.asker_view.map(|v| v.1))
        );
    }
    std::fs::write(dir.join("lookups.csv"), l)?;
    let mut c = String::from("t_s,phase,ok,error,setup_ms,late_ms\n");
    for x in &m.calls {
        let _ = writeln!(
            c,
            "{:.3},{:?},{},{},{:.1},{:.1}",
            x.t_s,
            x.phase,
            x.ok,
            x.error.as_deref().unwrap_or("").replace(',', ";"),
            x.setup_ms,
            x.late_ms
        );
    }
    std::fs::write(dir.join("calls.csv"), c)?;
    let mut t = String::from(
        "t_s,lookups,lookup_success,latency_p50_ms,latency_p90_ms,latency_p99_ms,first_p50_ms,calls,call_success,setup_p50_ms\n",
    );
    for b in &summary.timeline {
        let _ = writeln!(
            t,
            "{},{},{:.5},{:.1},{:.1},{:.1},{:.1},{},{:.5},{:.1}",
            b.t_s,
            b.lookups.total,
            b.lookups.rate,
            b.latency.p50,
            b.latency.p90,
            b.latency.p99,
            b.first.p50,
            b.calls.total,
            b.calls.rate,
            b.setup.p50
        );
    }
    std::fs::write(dir.join("timeline.csv"), t)?;
    let mut r = String::from("t_s,nodes,rss_mib,connections,cpu_s\n");
    for p in &m.resources {
        let _ = writeln!(r, "{:.1},{},{:.1},{},{:.2}", p.t_s, p.nodes, p.rss_mib, p.connections, p.cpu_s);
    }
    std::fs::write(dir.join("resources.csv"), r)
}
