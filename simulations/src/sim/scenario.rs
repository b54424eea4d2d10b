//! Scenarios: what a simulation runs, read from a TOML file.
//!
//! Every field has a default, so a scenario file names only what it
//! changes. Times are in seconds (`_s`) or milliseconds (`_ms`).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The largest [`Scenario::time_scale`].
pub const MAX_TIME_SCALE: f64 = 50.0;

/// One simulation: the network, the mesh settings and the workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scenario {
    /// A short name, used in reports.
    pub name: String,
    /// Seed of the topology and the workload.
    pub seed: u64,
    /// The scaled clock: wall-clock seconds per simulated second (1: real
    /// time). The plan's times, link latencies, every timer of every node
    /// (`dht::MeshConfig::time_scale`) and the operations' timeouts are
    /// stretched by it, and measured times are divided by it again: all
    /// nodes share this machine's cores, and a larger scale gives each
    /// node the CPU time per simulated second a machine of its own would.
    pub time_scale: f64,
    /// Zone nodes at the start (replacements for churned nodes come on top).
    pub nodes: usize,
    /// Users published by each node.
    pub users_per_node: usize,
    /// Nodes started per second while the mesh forms.
    pub join_rate: f64,
    /// Earlier nodes each new node is told about (its bootstrap peers).
    pub bootstrap_peers: usize,
    /// Seconds between the last join and the start of the workload.
    pub settle_s: f64,
    /// Seconds of workload.
    pub duration_s: f64,
    /// Lookups per second (the whole network).
    pub lookup_rate: f64,
    /// Calls per second (the whole network).
    pub call_rate: f64,
    /// A lookup that has not finished by then counts as failed.
    pub lookup_timeout_s: f64,
    /// A call not accepted by then counts as failed.
    pub call_timeout_s: f64,
    /// A user is looked up or called only once its node has been up this long
    /// (time to publish its records).
    pub min_record_age_s: f64,
    /// Users checked at the end for lost records (0: every live user).
    pub audit_users: usize,
    /// Most lookups and calls in flight at once.
    pub max_in_flight: usize,
    /// Seconds per bucket of the time series.
    pub bucket_s: f64,
    /// Latency of the links.
    pub latency: Latency,
    /// Loss, bandwidth and dial behaviour of the links.
    pub link: Link,
    /// The mesh's own settings.
    pub mesh: MeshParams,
    /// Nodes leaving and joining during the workload.
    pub churn: Option<Churn>,
    /// A partition that opens and heals during the workload.
    pub partition: Option<Partition>,
    /// Nodes behind NAT, reachable only through relays.
    pub nat: Option<Nat>,
}

/// How link latency is drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Latency {
    /// Every link the same.
    Constant {
        /// One-way delay.
        ms: f64,
    },
    /// Each pair of nodes draws once, uniformly.
    Uniform {
        /// Smallest one-way delay.
        min_ms: f64,
        /// Largest one-way delay.
        max_ms: f64,
    },
    /// Each pair of nodes draws once from a log-normal distribution.
    LogNormal {
        /// Median one-way delay.
        median_ms: f64,
        /// Standard deviation of the underlying normal.
        sigma: f64,
    },
    /// A community network: zones hang off a tree of wireless links (as
    /// guifi.net's supernodes); a packet crosses every link on the tree
    /// path between two zones, each adding its own delay.
    Tree {
        /// Children per tree node.
        fanout: usize,
        /// Smallest delay of one tree link.
        hop_min_ms: f64,
        /// Largest delay of one tree link.
        hop_max_ms: f64,
    },
}

/// Loss, bandwidth and dial behaviour of every link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Link {
    /// Probability that a write is lost once (it is then retransmitted).
    pub loss: f64,
    /// Bandwidth of each link direction, kbit/s (0: unlimited).
    pub bandwidth_kbit: u64,
    /// How long a dial into a black hole waits before failing.
    pub unreachable_dial_ms: u64,
    /// The smallest retransmission timeout.
    pub min_rto_ms: u64,
    /// Secure the emulated connections with noise as real ones are
    /// (default: no, keys are exchanged in the clear; see
    /// `dht::netem::NetemConfig::noise`).
    pub noise: bool,
}

/// The mesh settings each simulated node runs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshParams {
    /// How often records are renewed.
    pub republish_s: f64,
    /// Lifetime of user records.
    pub user_ttl_s: f64,
    /// Lifetime of zone claims.
    pub claim_ttl_s: f64,
    /// How long a resolved user stays cached (0: every lookup goes to the
    /// DHT, which is what the simulator measures).
    pub cache_ttl_ms: u64,
    /// How long one signalling request may take.
    pub request_timeout_ms: u64,
    /// Extra tries of a failed delivery.
    pub retries: u32,
    /// Established connections per node.
    pub max_connections: u32,
    /// Seconds a connection no protocol uses stays open (the node: 120).
    pub idle_timeout_s: f64,
    /// Seconds between Kademlia's routing-table refreshes (the node: 300).
    pub bootstrap_interval_s: f64,
}

/// Nodes leaving and joining during the workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Churn {
    /// Share of the starting nodes that leave during the workload.
    pub replace_fraction: f64,
    /// Of those leaving, the share that vanish without a word (crash,
    /// power cut) rather than close their connections.
    pub crash_share: f64,
    /// Of those leaving, the share that come back later with the same key
    /// and data; the others never return and a new node joins instead.
    pub rejoin_share: f64,
    /// How long a returning node stays away.
    pub rejoin_after_s: f64,
}

/// A partition that opens and heals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Partition {
    /// Seconds into the workload when the network splits.
    pub at_s: f64,
    /// Seconds it stays split.
    pub heal_after_s: f64,
    /// Share of the nodes on the far side.
    pub fraction: f64,
    /// Users per side checked after the heal until found again.
    pub probe_users: usize,
    /// Seconds between probes after the heal.
    pub probe_interval_s: f64,
    /// Seconds after the heal when probing gives up.
    pub probe_timeout_s: f64,
}

/// Nodes behind NAT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Nat {
    /// Share of the nodes behind NAT.
    pub fraction: f64,
    /// Public nodes that serve as relays (each NATed node uses one).
    pub relays: usize,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            name: "unnamed".into(),
            seed: 1,
            time_scale: 1.0,
            nodes: 50,
            users_per_node: 2,
            join_rate: 20.0,
            bootstrap_peers: 3,
            settle_s: 20.0,
            duration_s: 60.0,
            lookup_rate: 10.0,
            call_rate: 2.0,
            lookup_timeout_s: 30.0,
            call_timeout_s: 30.0,
            min_record_age_s: 15.0,
            audit_users: 500,
            max_in_flight: 512,
            bucket_s: 10.0,
            latency: Latency::LogNormal { median_ms: 20.0, sigma: 0.5 },
            link: Link::default(),
            mesh: MeshParams::default(),
            churn: None,
            partition: None,
            nat: None,
        }
    }
}

impl Default for Link {
    fn default() -> Self {
        Self { loss: 0.0, bandwidth_kbit: 0, unreachable_dial_ms: 3000, min_rto_ms: 200, noise: false }
    }
}

impl Default for MeshParams {
    fn default() -> Self {
        Self {
            republish_s: 600.0,
            user_ttl_s: 3600.0,
            claim_ttl_s: 3600.0,
            cache_ttl_ms: 0,
            request_timeout_ms: 5000,
            retries: 2,
            max_connections: 256,
            idle_timeout_s: 120.0,
            bootstrap_interval_s: 300.0,
        }
    }
}

impl Default for Churn {
    fn default() -> Self {
        Self { replace_fraction: 0.2, crash_share: 0.5, rejoin_share: 0.5, rejoin_after_s: 20.0 }
    }
}

impl Default for Partition {
    fn default() -> Self {
        Self {
            at_s: 20.0,
            heal_after_s: 30.0,
            fraction: 0.5,
            probe_users: 25,
            probe_interval_s: 2.0,
            probe_timeout_s: 120.0,
        }
    }
}

impl Default for Nat {
    fn default() -> Self {
        Self { fraction: 0.1, relays: 5 }
    }
}

/// Why a scenario cannot run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("reading {path}: {why}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// The file is not a valid scenario.
    #[error("scenario: {0}")]
    Parse(String),
    /// A value is out of range.
    #[error("scenario field {field}: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        why: &'static str,
    },
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError::Read { path: path.display().to_string(), why: e.to_string() })?;
        Self::parse(&text)
    }

    /// Parses and validates a scenario.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
        s.validate()?;
        Ok(s)
    }

    /// Checks that every value is in range (and bounded: runs end).
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let bad = |field, why| Err(ScenarioError::Invalid { field, why });
        if !(2..=20_000).contains(&self.nodes) {
            return bad("nodes", "must be 2..=20000");
        }
        if !(1..=16).contains(&self.users_per_node) {
            return bad("users_per_node", "must be 1..=16");
        }
        let pos = |x: f64| x.is_finite() && x > 0.0;
        let nonneg = |x: f64| x.is_finite() && x >= 0.0;
        if !(1.0..=MAX_TIME_SCALE).contains(&self.time_scale) {
            return bad("time_scale", "must be in [1, 50]");
        }
        if !pos(self.join_rate) || !nonneg(self.settle_s) || !nonneg(self.lookup_rate) || !nonneg(self.call_rate) {
            return bad("join_rate/settle_s/lookup_rate/call_rate", "must be finite, rates non-negative");
        }
        if !pos(self.duration_s) || self.duration_s > 6.0 * 3600.0 {
            return bad("duration_s", "must be in (0, 21600]");
        }
        if (self.lookup_rate + self.call_rate) * self.duration_s > 2_000_000.0 {
            return bad("lookup_rate", "at most 2,000,000 operations per run");
        }
        if !pos(self.lookup_timeout_s) || !pos(self.call_timeout_s) || !nonneg(self.min_record_age_s) {
            return bad("lookup_timeout_s/call_timeout_s", "must be positive");
        }
        if self.bootstrap_peers == 0 || self.max_in_flight == 0 || !pos(self.bucket_s) {
            return bad("bootstrap_peers/max_in_flight/bucket_s", "must be positive");
        }
        if !(0.0..1.0).contains(&self.link.loss) {
            return bad("link.loss", "must be in [0, 1)");
        }
        match &self.latency {
            Latency::Constant { ms } if !nonneg(*ms) => return bad("latency.ms", "must be >= 0"),
            Latency::Uniform { min_ms, max_ms } if !(nonneg(*min_ms) && min_ms <= max_ms) => {
                return bad("latency", "need 0 <= min_ms <= max_ms")
            }
            Latency::LogNormal { median_ms, sigma } if !(pos(*median_ms) && nonneg(*sigma)) => {
                return bad("latency", "need median_ms > 0, sigma >= 0")
            }
            Latency::Tree { fanout, hop_min_ms, hop_max_ms }
                if !(*fanout >= 2 && nonneg(*hop_min_ms) && hop_min_ms <= hop_max_ms) =>
            {
                return bad("latency", "need fanout >= 2 and 0 <= hop_min_ms <= hop_max_ms")
            }
            _ => {}
        }
        if let Some(c) = &self.churn {
            let unit = |x: f64| (0.0..=1.0).contains(&x);
            if !unit(c.replace_fraction) || !unit(c.crash_share) || !unit(c.rejoin_share) || !nonneg(c.rejoin_after_s) {
                return bad("churn", "fractions in [0, 1], rejoin_after_s >= 0");
            }
        }
        if let Some(p) = &self.partition {
            if !(p.fraction > 0.0 && p.fraction < 1.0 && nonneg(p.at_s) && pos(p.heal_after_s)) {
                return bad("partition", "fraction in (0, 1), at_s >= 0, heal_after_s > 0");
            }
            if !pos(p.probe_interval_s) || !pos(p.probe_timeout_s) || p.probe_timeout_s > 3600.0 {
                return bad("partition", "probe_interval_s > 0, probe_timeout_s in (0, 3600]");
            }
        }
        if let Some(n) = &self.nat {
            if !(0.0..1.0).contains(&n.fraction) || n.relays == 0 || n.relays >= self.nodes {
                return bad("nat", "fraction in [0, 1), 1 <= relays < nodes");
            }
        }
        if self.mesh.republish_s <= 0.0 || self.mesh.user_ttl_s <= self.mesh.republish_s {
            return bad("mesh.republish_s", "must be positive and shorter than user_ttl_s");
        }
        Ok(())
    }

    /// Seconds from the start to the beginning of the workload.
    pub fn workload_start_s(&self) -> f64 {
        self.nodes as f64 / self.join_rate + self.settle_s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_fill_in_and_bad_values_are_refused() {
        let s = Scenario::parse("name = \"x\"\nnodes = 10\n[latency]\nkind = \"constant\"\nms = 5\n").unwrap();
        assert_eq!(s.nodes, 10);
        assert_eq!(s.latency, Latency::Constant { ms: 5.0 });
        assert!(Scenario::parse("nodes = 1").is_err());
        assert!(Scenario::parse("bogus = 1").is_err());
        assert!(Scenario::parse("[link]\nloss = 1.5").is_err());
    }
}
