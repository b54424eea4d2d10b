//! What a run measured: one sample per operation, and the summary drawn
//! from them.

use serde::{Deserialize, Serialize};

use super::plan::Phase;

/// Kademlia's parallelism (libp2p's default α), used to turn requests into
/// rounds.
pub const ALPHA: u32 = 3;
/// Kademlia's bucket size and replication factor (libp2p's default k).
pub const K: f64 = 20.0;

/// Why an operation ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Part of the workload.
    Workload,
    /// A probe after a partition healed.
    Probe,
    /// The end-of-run audit.
    Audit,
}

/// One lookup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LookupSample {
    /// Planned time, seconds after the workload started.
    pub t_s: f64,
    /// Why it ran.
    pub purpose: Purpose,
    /// The phase of the run.
    pub phase: Phase,
    /// Found the right home node.
    pub ok: bool,
    /// Why not, if it failed.
    pub error: Option<String>,
    /// Time of the whole `resolve`, ms.
    pub latency_ms: f64,
    /// Time until the user record's first copy arrived, ms.
    pub first_ms: Option<f64>,
    /// Requests of the user-record query in all (messages per lookup).
    pub requests: u32,
    /// Requests sent before the first record arrived.
    pub requests_to_first: Option<u32>,
    /// Requests that failed.
    pub failures: u32,
    /// How late it started against the plan, ms (the simulator falling behind).
    pub late_ms: f64,
    /// Simulated seconds since the target's node (re)started, when the
    /// lookup began (`None`: it was not running).
    #[serde(default)]
    pub target_up_s: Option<f64>,
    /// Whether the mesh had acknowledged the target node's records (its
    /// claim and every user) by then.
    #[serde(default)]
    pub target_published: bool,
    /// Simulated seconds since the asking node (re)started (`None`: it was
    /// not running).
    #[serde(default)]
    pub asker_up_s: Option<f64>,
    /// The zone-claim query beside it: requests, answers and claims
    /// returned (all 0 when the claim came from the cache).
    #[serde(default)]
    pub claim: (u32, u32, u32),
    /// After a failed lookup, what its asker knew of the mesh: entries in
    /// its routing table and peers connected.
    #[serde(default)]
    pub asker_view: Option<(u32, u32)>,
}

/// One call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallSample {
    /// Planned time, seconds after the workload started.
    pub t_s: f64,
    /// The phase of the run.
    pub phase: Phase,
    /// The callee's node took the invite and the caller's node got `accepted`.
    pub ok: bool,
    /// Why not, if it failed.
    pub error: Option<String>,
    /// From sending the invite to `accepted` arriving, ms.
    pub setup_ms: f64,
    /// How late it started against the plan, ms.
    pub late_ms: f64,
}

/// A point of the resource time series.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ResourcePoint {
    /// Seconds since the run started.
    pub t_s: f64,
    /// Nodes running.
    pub nodes: usize,
    /// Resident memory of the process, MiB.
    pub rss_mib: f64,
    /// Emulated connections open.
    pub connections: usize,
    /// CPU seconds (user + system) the process has used so far.
    pub cpu_s: f64,
}

/// Percentiles of a set of values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Dist {
    /// How many values.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Dist {
    /// The distribution of `values` (nearest-rank percentiles).
    pub fn of(values: impl IntoIterator<Item = f64>) -> Self {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Self {
            n: v.len(),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: v[v.len() - 1],
        }
    }
}

/// Successes out of attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// Attempts.
    pub total: usize,
    /// Successes.
    pub ok: usize,
    /// ok / total (1 when there were none).
    pub rate: f64,
}

impl Rate {
    /// The rate of `oks`.
    pub fn of(oks: impl IntoIterator<Item = bool>) -> Self {
        let (mut total, mut ok) = (0, 0);
        for b in oks {
            total += 1;
            ok += usize::from(b);
        }
        Self { total, ok, rate: if total == 0 { 1.0 } else { ok as f64 / total as f64 } }
    }
}

/// The hop count of a lookup: sequential request rounds until the first
/// record, estimated as ⌈requests before the first record / α⌉ (0 when the
/// asking node held the record itself). libp2p does not expose the path a
/// query took; each round is at least one hop of the iterative lookup and
/// the first α requests go out together, so this counts rounds of round
/// trips, an upper estimate of the hops.
pub fn hops(requests_to_first: u32) -> u32 {
    requests_to_first.div_ceil(ALPHA)
}

/// The classic Kademlia bound on hops: log2(N).
pub fn theory_bound(n: usize) -> f64 {
    (n.max(2) as f64).log2()
}

/// The expected hops of a Kademlia lookup with buckets of k: each hop fixes
/// about 1 + log2(k) more bits of the key, and reaching any of the k nodes
/// closest to the key (which all hold the record) needs log2(N/k) bits:
/// ≈ max(1, log2(N/k) / (1 + log2 k)).
pub fn theory_expected(n: usize) -> f64 {
    ((n.max(2) as f64 / K).log2() / (1.0 + K.log2())).max(1.0)
}

/// Per-bucket figures over time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bucket {
    /// Start of the bucket, seconds after the workload started.
    pub t_s: f64,
    /// Workload lookups.
    pub lookups: Rate,
    /// Their latency, ms.
    pub latency: Dist,
    /// Time to the first record, ms.
    pub first: Dist,
    /// Calls.
    pub calls: Rate,
    /// Their set-up time, ms.
    pub setup: Dist,
}

/// Buckets of `width` seconds over the workload.
pub fn buckets(lookups: &[LookupSample], calls: &[CallSample], width: f64, span: f64) -> Vec<Bucket> {
    let n = (span / width).ceil().max(1.0) as usize;
    (0..n)
        .map(|i| {
            let (a, b) = (i as f64 * width, (i + 1) as f64 * width);
            let ls: Vec<&LookupSample> =
                lookups.iter().filter(|l| l.purpose == Purpose::Workload && l.t_s >= a && l.t_s < b).collect();
            let cs: Vec<&CallSample> = calls.iter().filter(|c| c.t_s >= a && c.t_s < b).collect();
            Bucket {
                t_s: a,
                lookups: Rate::of(ls.iter().map(|l| l.ok)),
                latency: Dist::of(ls.iter().filter(|l| l.ok).map(|l| l.latency_ms)),
                first: Dist::of(ls.iter().filter_map(|l| l.first_ms)),
                calls: Rate::of(cs.iter().map(|c| c.ok)),
                setup: Dist::of(cs.iter().filter(|c| c.ok).map(|c| c.setup_ms)),
            }
        })
        .collect()
}

/// The resident memory of this process, bytes (Linux; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// CPU seconds (user + system) this process has used (Linux; 0 elsewhere).
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn percentiles_rates_and_theory() {
        let d = Dist::of((1..=100).map(f64::from));
        assert_eq!((d.p50, d.p90, d.p99, d.max), (50.0, 90.0, 99.0, 100.0));
        assert_eq!(Rate::of([true, true, false, true]).rate, 0.75);
        assert_eq!((hops(0), hops(1), hops(3), hops(4)), (0, 1, 1, 2));
        assert!((theory_bound(1024) - 10.0).abs() < 1e-9);
        assert!(theory_expected(1000) >= 1.0 && theory_expected(1000) < theory_bound(1000));
    }
}
