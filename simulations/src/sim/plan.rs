//! The plan of a run: topology and workload, drawn from the scenario's seed
//! alone, before anything runs.
//!
//! Everything random about a run is decided here: node keys, zones and
//! users, who bootstraps from whom, who sits behind NAT and which relay it
//! uses, the latency of every link, who leaves and joins and when, the
//! partition, and every lookup and call (time, caller, callee). The runner
//! then only executes the plan, so the same seed gives the same topology and
//! workload; only timings differ between runs. [`Plan::digest`] is a
//! SHA-256 over the plan and a fingerprint of the link latencies.

use std::collections::BTreeSet;
use std::time::Duration;

use dht::netem::LinkParams;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::scenario::{Latency, Scenario};

/// One node that exists at some point of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodePlan {
    /// Its `/memory/<port>` (index + 1).
    pub port: u64,
    /// Seed of its ed25519 node key.
    pub key: [u8; 32],
    /// Its zone name.
    pub zone: String,
    /// Its users' names.
    pub users: Vec<String>,
    /// Behind NAT (reachable only through its relay).
    pub nat: bool,
    /// Serves as a relay for NATed nodes.
    pub relay: bool,
    /// The relay it listens through, if behind NAT.
    pub via: Option<usize>,
    /// Nodes it bootstraps from.
    pub bootstrap: Vec<usize>,
    /// Its parent in the community-network tree (tree latency only).
    pub parent: Option<usize>,
    /// Delay of the link to its parent, ms (tree latency only).
    pub uplink_ms: f64,
    /// Part of the starting mesh (not a replacement).
    pub initial: bool,
}

/// Which part of the run an operation falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No partition in force (and none yet).
    Steady,
    /// During a partition, both ends on the same side.
    PartitionSameSide,
    /// During a partition, the ends on different sides.
    PartitionCross,
    /// After the partition healed.
    Healed,
}

/// A user: its node and its index among that node's users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    /// The home node.
    pub node: usize,
    /// Index in [`NodePlan::users`].
    pub user: usize,
}

/// Something the runner does at a planned time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum Action {
    /// Start a node (first time).
    Join {
        /// The node.
        node: usize,
    },
    /// A node leaves.
    Leave {
        /// The node.
        node: usize,
        /// Vanishes without closing its connections.
        crash: bool,
    },
    /// A node that left comes back with the same key and data.
    Rejoin {
        /// The node.
        node: usize,
    },
    /// `from` resolves `target`.
    Lookup {
        /// The node looking up.
        from: usize,
        /// The user looked up.
        target: UserRef,
        /// The phase.
        phase: Phase,
    },
    /// `caller` calls `callee`: an invite through `Mesh::send`, answered by
    /// the callee's node with `accepted`.
    Call {
        /// The caller.
        caller: UserRef,
        /// The callee.
        callee: UserRef,
        /// The phase.
        phase: Phase,
    },
    /// The network splits: `far` nodes on one side, the rest on the other.
    Partition {
        /// The nodes on the far side.
        far: Vec<usize>,
    },
    /// The partition ends; probe lookups (each a node looking up a user on
    /// the other side) run until each succeeds once.
    Heal {
        /// The probes.
        probes: Vec<(usize, UserRef)>,
    },
    /// The end-of-run audit: each live user looked up once from another node.
    Audit {
        /// The lookups.
        checks: Vec<(usize, UserRef)>,
    },
}

/// An action and when it happens, ms after the start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timed {
    /// When, ms after the start.
    pub at_ms: u64,
    /// What.
    pub action: Action,
}

/// The whole plan of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The scenario it was drawn from.
    pub scenario: Scenario,
    /// Every node of the run.
    pub nodes: Vec<NodePlan>,
    /// The actions, in time order.
    pub actions: Vec<Timed>,
    /// When the workload starts, ms.
    pub workload_start_ms: u64,
    /// When the workload ends (the audit follows), ms.
    pub workload_end_ms: u64,
}

/// Per-link parameters of a plan, as the emulated network asks for them.
#[derive(Debug, Clone)]
pub struct Links {
    latency: Latency,
    seed: u64,
    loss: f64,
    bandwidth: Option<u64>,
    parents: Vec<Option<usize>>,
    uplinks: Vec<f64>,
    depth: Vec<usize>,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A uniform draw in (0, 1) that depends only on its inputs.
fn unit(seed: u64, a: u64, b: u64, salt: u64) -> f64 {
    let h = splitmix(seed ^ splitmix(a ^ splitmix(b ^ splitmix(salt))));
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

impl Links {
    /// The link model of `plan`.
    pub fn new(plan: &Plan) -> Self {
        let parents: Vec<Option<usize>> = plan.nodes.iter().map(|n| n.parent).collect();
        let mut depth = vec![0; parents.len()];
        for i in 0..parents.len() {
            // Parents always come before their children.
            depth[i] = parents[i].map_or(0, |p| depth[p] + 1);
        }
        let s = &plan.scenario;
        Self {
            latency: s.latency.clone(),
            seed: s.seed,
            loss: s.link.loss,
            bandwidth: (s.link.bandwidth_kbit > 0).then_some(s.link.bandwidth_kbit * 1000 / 8),
            parents,
            uplinks: plan.nodes.iter().map(|n| n.uplink_ms).collect(),
            depth,
        }
    }

    /// One-way delay between nodes `a` and `b` (indices), ms; symmetric.
    pub fn latency_ms(&self, a: usize, b: usize) -> f64 {
        let (lo, hi) = (a.min(b) as u64, a.max(b) as u64);
        match self.latency {
            Latency::Constant { ms } => ms,
            Latency::Uniform { min_ms, max_ms } => min_ms + (max_ms - min_ms) * unit(self.seed, lo, hi, 1),
            Latency::LogNormal { median_ms, sigma } => {
                let (u1, u2) = (unit(self.seed, lo, hi, 2), unit(self.seed, lo, hi, 3));
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (median_ms * (sigma * z).exp()).min(median_ms * 50.0)
            }
            Latency::Tree { .. } => {
                let (mut x, mut y, mut sum) = (a, b, 0.0);
                let get = |v: &Vec<usize>, i: usize| v.get(i).copied().unwrap_or(0);
                while x != y {
                    let (dx, dy) = (get(&self.depth, x), get(&self.depth, y));
                    let step = if dx >= dy { &mut x } else { &mut y };
                    sum += self.uplinks.get(*step).copied().unwrap_or(0.0);
                    match self.parents.get(*step).copied().flatten() {
                        Some(p) => *step = p,
                        None => break,
                    }
                }
                sum
            }
        }
    }

    /// The parameters of the link from port `from` to port `to`.
    pub fn params(&self, from: u64, to: u64) -> LinkParams {
        let ms = match (from.checked_sub(1), to.checked_sub(1)) {
            (Some(a), Some(b)) if (a as usize) < self.parents.len() && (b as usize) < self.parents.len() => {
                self.latency_ms(a as usize, b as usize)
            }
            _ => 1.0,
        };
        LinkParams { latency: Duration::from_micros((ms * 1000.0) as u64), loss: self.loss, bandwidth: self.bandwidth }
    }
}

/// Liveness while the plan is drawn.
struct Live {
    up: Vec<bool>,
    since_ms: Vec<u64>,
}

impl Live {
    fn aged(&self, now: u64, age: u64) -> Vec<usize> {
        (0..self.up.len()).filter(|&i| self.up[i] && self.since_ms[i] + age <= now).collect()
    }
}

impl Plan {
    /// Draws the plan of `scenario` from its seed.
    pub fn new(scenario: &Scenario) -> Plan {
        let s = scenario;
        let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
        let ms = |secs: f64| (secs * 1000.0).round() as u64;
        let mut nodes: Vec<NodePlan> = Vec::new();
        let nat = s.nat.clone();
        let relays = nat.as_ref().map_or(0, |n| n.relays);
        let tree = match s.latency {
            Latency::Tree { fanout, hop_min_ms, hop_max_ms } => Some((fanout, hop_min_ms, hop_max_ms)),
            _ => None,
        };
        let mut children: Vec<usize> = Vec::new();
        let mut new_node = |rng: &mut ChaCha8Rng, nodes: &mut Vec<NodePlan>, initial: bool| -> usize {
            let i = nodes.len();
            let mut key = [0u8; 32];
            rng.fill(&mut key);
            let (parent, uplink_ms) = match tree {
                Some((fanout, lo, hi)) if i > 0 => {
                    let open: Vec<usize> = (0..i).filter(|&p| children[p] < fanout).collect();
                    let p = open.choose(rng).copied().unwrap_or(0);
                    children[p] += 1;
                    (Some(p), rng.gen_range(lo..=hi))
                }
                _ => (None, 0.0),
            };
            children.push(0);
            let is_relay = i < relays;
            let behind = !is_relay && i > 0 && nat.as_ref().is_some_and(|n| rng.gen_bool(n.fraction));
            let via = behind.then(|| rng.gen_range(0..relays.max(1)));
            nodes.push(NodePlan {
                port: i as u64 + 1,
                key,
                zone: format!("z{i:05}"),
                users: (0..s.users_per_node).map(|u| format!("u{u}")).collect(),
                nat: behind,
                relay: is_relay,
                via,
                bootstrap: Vec::new(),
                parent,
                uplink_ms,
                initial,
            });
            i
        };
        let pick_bootstrap = |rng: &mut ChaCha8Rng, nodes: &[NodePlan], me: usize, candidates: &[usize]| {
            let mut chosen: Vec<usize> = Vec::new();
            if let Some(p) = nodes[me].parent.filter(|p| candidates.contains(p) && !nodes[*p].nat) {
                chosen.push(p);
            }
            let public: Vec<usize> = candidates.iter().copied().filter(|&c| c != me && !nodes[c].nat).collect();
            let want = s.bootstrap_peers.min(public.len());
            while chosen.len() < want {
                if let Some(&c) = public.choose(rng) {
                    if !chosen.contains(&c) {
                        chosen.push(c);
                    }
                }
            }
            chosen
        };

        let mut actions: Vec<Timed> = Vec::new();
        // Joins of the starting mesh.
        for i in 0..s.nodes {
            new_node(&mut rng, &mut nodes, true);
            let earlier: Vec<usize> = (0..i).collect();
            nodes[i].bootstrap = pick_bootstrap(&mut rng, &nodes, i, &earlier);
            actions.push(Timed { at_ms: ms(i as f64 / s.join_rate), action: Action::Join { node: i } });
        }
        let start = ms(s.workload_start_s());
        let end = start + ms(s.duration_s);

        // The timeline of membership changes and the partition.
        enum Change {
            Leave(bool, bool),
            Rejoin(usize),
            Replace,
            Split,
            Heal,
        }
        let mut changes: Vec<(u64, Change)> = Vec::new();
        if let Some(c) = &s.churn {
            let leaving = (c.replace_fraction * s.nodes as f64).round() as usize;
            let span = ms(s.duration_s * 0.8).max(1);
            for _ in 0..leaving {
                let at = start + rng.gen_range(0..span);
                let crash = rng.gen_bool(c.crash_share);
                let back = rng.gen_bool(c.rejoin_share);
                changes.push((at, Change::Leave(crash, back)));
            }
        }
        if let Some(p) = &s.partition {
            changes.push((start + ms(p.at_s), Change::Split));
            changes.push((start + ms(p.at_s + p.heal_after_s), Change::Heal));
        }
        changes.sort_by_key(|(t, _)| *t);

        // Workload arrivals (Poisson).
        let mut arrivals: Vec<(u64, bool)> = Vec::new();
        for (rate, is_call) in [(s.lookup_rate, false), (s.call_rate, true)] {
            if rate <= 0.0 {
                continue;
            }
            let mut t = start as f64;
            loop {
                let u: f64 = rng.gen_range(f64::EPSILON..1.0);
                t += -u.ln() / rate * 1000.0;
                if t >= end as f64 {
                    break;
                }
                arrivals.push((t as u64, is_call));
            }
        }
        arrivals.sort();

        // Walk time forward, applying changes and drawing operations.
        let mut live = Live { up: vec![false; nodes.len()], since_ms: vec![0; nodes.len()] };
        for a in &actions {
            if let Action::Join { node } = a.action {
                live.up[node] = true;
                live.since_ms[node] = a.at_ms;
            }
        }
        let age = ms(s.min_record_age_s);
        let mut far: BTreeSet<usize> = BTreeSet::new();
        let mut split = false;
        let mut healed = false;
        let mut ci = 0;
        let mut pending: Vec<(u64, Change)> = Vec::new();
        let grow = |live: &mut Live, n: usize| {
            live.up.resize(n, false);
            live.since_ms.resize(n, 0);
        };
        let phase_of = |split: bool, healed: bool, far: &BTreeSet<usize>, a: usize, b: usize| match (split, healed) {
            (true, _) if far.contains(&a) != far.contains(&b) => Phase::PartitionCross,
            (true, _) => Phase::PartitionSameSide,
            (false, true) => Phase::Healed,
            _ => Phase::Steady,
        };
        let mut ai = 0;
        loop {
            // The next thing in time: a change (planned or pending) or an arrival.
            pending.sort_by_key(|(t, _)| *t);
            let next_change = match (changes.get(ci).map(|c| c.0), pending.first().map(|c| c.0)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let next_arrival = arrivals.get(ai).map(|a| a.0);
            let now = match (next_change, next_arrival) {
                (None, None) => break,
                (Some(c), Some(a)) => c.min(a),
                (c, a) => c.or(a).unwrap_or(end),
            };
            if next_change == Some(now) {
                let change = if changes.get(ci).is_some_and(|c| c.0 == now) {
                    ci += 1;
                    std::mem::replace(&mut changes[ci - 1].1, Change::Replace)
                } else {
                    pending.remove(0).1
                };
                match change {
                    Change::Leave(crash, back) => {
                        let cands: Vec<usize> =
                            (0..nodes.len()).filter(|&i| live.up[i] && !nodes[i].relay && i != 0).collect();
                        if let Some(&node) = cands.choose(&mut rng) {
                            live.up[node] = false;
                            actions.push(Timed { at_ms: now, action: Action::Leave { node, crash } });
                            let c = s.churn.clone().unwrap_or_default();
                            if back {
                                pending.push((now + ms(c.rejoin_after_s), Change::Rejoin(node)));
                            } else {
                                pending.push((now + 1000, Change::Replace));
                            }
                        }
                    }
                    Change::Rejoin(node) => {
                        live.up[node] = true;
                        live.since_ms[node] = now;
                        actions.push(Timed { at_ms: now, action: Action::Rejoin { node } });
                    }
                    Change::Replace => {
                        let node = new_node(&mut rng, &mut nodes, false);
                        grow(&mut live, nodes.len());
                        let up: Vec<usize> = (0..node).filter(|&i| live.up[i]).collect();
                        nodes[node].bootstrap = pick_bootstrap(&mut rng, &nodes, node, &up);
                        live.up[node] = true;
                        live.since_ms[node] = now;
                        actions.push(Timed { at_ms: now, action: Action::Join { node } });
                    }
                    Change::Split => {
                        far = self::far_side(&nodes, &live, s, &mut rng);
                        split = true;
                        actions.push(Timed {
                            at_ms: now,
                            action: Action::Partition { far: far.iter().copied().collect() },
                        });
                    }
                    Change::Heal => {
                        split = false;
                        healed = true;
                        let p = s.partition.clone().unwrap_or_default();
                        let aged = live.aged(now, age);
                        let (f, n): (Vec<usize>, Vec<usize>) = aged.iter().partition(|i| far.contains(i));
                        let mut probes = Vec::new();
                        for (targets, askers) in [(&f, &n), (&n, &f)] {
                            for _ in 0..p.probe_users.min(targets.len()) {
                                if let (Some(&t), Some(&a)) = (targets.choose(&mut rng), askers.choose(&mut rng)) {
                                    let user = rng.gen_range(0..s.users_per_node);
                                    probes.push((a, UserRef { node: t, user }));
                                }
                            }
                        }
                        actions.push(Timed { at_ms: now, action: Action::Heal { probes } });
                    }
                }
                continue;
            }
            let (_, is_call) = arrivals[ai];
            ai += 1;
            let aged = live.aged(now, age);
            if aged.len() < 2 {
                continue;
            }
            let (Some(&a), Some(&b)) = (aged.choose(&mut rng), aged.choose(&mut rng)) else { continue };
            if a == b {
                continue;
            }
            let phase = phase_of(split, healed, &far, a, b);
            let ua = rng.gen_range(0..s.users_per_node);
            let ub = rng.gen_range(0..s.users_per_node);
            let action = if is_call {
                Action::Call { caller: UserRef { node: a, user: ua }, callee: UserRef { node: b, user: ub }, phase }
            } else {
                Action::Lookup { from: a, target: UserRef { node: b, user: ub }, phase }
            };
            actions.push(Timed { at_ms: now, action });
        }

        // The audit: every live, aged user (or a sample), from another node.
        let at = end + 2000;
        let aged = live.aged(at, age);
        let mut users: Vec<UserRef> =
            aged.iter().flat_map(|&n| (0..s.users_per_node).map(move |u| UserRef { node: n, user: u })).collect();
        users.shuffle(&mut rng);
        if s.audit_users > 0 {
            users.truncate(s.audit_users);
        }
        let checks: Vec<(usize, UserRef)> = users
            .into_iter()
            .filter_map(|u| {
                let others: Vec<usize> = aged.iter().copied().filter(|&n| n != u.node).collect();
                others.choose(&mut rng).map(|&f| (f, u))
            })
            .collect();
        actions.push(Timed { at_ms: at, action: Action::Audit { checks } });
        actions.sort_by_key(|a| a.at_ms);
        Plan { scenario: s.clone(), nodes, actions, workload_start_ms: start, workload_end_ms: end }
    }

    /// SHA-256 (hex) over the plan and the latency of a fingerprint of
    /// links (each node to the next, and node 0 to each).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(self).unwrap_or_default());
        let links = Links::new(self);
        for i in 1..self.nodes.len() {
            h.update(links.latency_ms(i - 1, i).to_bits().to_le_bytes());
            h.update(links.latency_ms(0, i).to_bits().to_le_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// One-way latency of up to `samples` node pairs (drawn from the seed),
    /// ms: the spread of the topology.
    pub fn latency_sample(&self, samples: usize) -> Vec<f64> {
        let links = Links::new(self);
        let n = self.nodes.len();
        let mut rng = ChaCha8Rng::seed_from_u64(self.scenario.seed ^ 0x1a7e);
        (0..samples)
            .filter_map(|_| {
                let (a, b) = (rng.gen_range(0..n), rng.gen_range(0..n));
                (a != b).then(|| links.latency_ms(a, b))
            })
            .collect()
    }

    /// Lookups and calls planned.
    pub fn operations(&self) -> (usize, usize) {
        let lookups = self.actions.iter().filter(|a| matches!(a.action, Action::Lookup { .. })).count();
        let calls = self.actions.iter().filter(|a| matches!(a.action, Action::Call { .. })).count();
        (lookups, calls)
    }
}

/// The far side of a partition: with a tree, the subtree whose size is
/// nearest the wanted share (a backbone link failing); otherwise a random
/// share of the live nodes.
fn far_side(nodes: &[NodePlan], live: &Live, s: &Scenario, rng: &mut ChaCha8Rng) -> BTreeSet<usize> {
    let fraction = s.partition.as_ref().map_or(0.5, |p| p.fraction);
    let up: Vec<usize> = (0..nodes.len()).filter(|&i| live.up[i]).collect();
    let want = ((up.len() as f64) * fraction).round().max(1.0) as usize;
    if matches!(s.latency, Latency::Tree { .. }) {
        let mut size = vec![1usize; nodes.len()];
        for i in (1..nodes.len()).rev() {
            if let Some(p) = nodes[i].parent {
                size[p] += size[i];
            }
        }
        let best = (1..nodes.len()).min_by_key(|&i| size[i].abs_diff(want)).unwrap_or(0);
        let mut far = BTreeSet::new();
        for i in 0..nodes.len() {
            let mut x = Some(i);
            while let Some(v) = x {
                if v == best {
                    far.insert(i);
                    break;
                }
                x = nodes[v].parent;
            }
        }
        return far;
    }
    let mut up = up;
    up.shuffle(rng);
    up.into_iter().take(want).collect()
}
