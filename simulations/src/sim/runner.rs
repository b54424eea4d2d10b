//! Runs a [`Plan`] in this process: one real `dht::Mesh` per zone node
//! (libp2p swarm with Kademlia, identify, ping, relay, signalling), all on
//! one [`Netem`], with the plan's actions executed at their planned times
//! (wall clock, stretched by the scenario's `time_scale`: every time this
//! module measures is divided by it again, so results are in simulated time).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dht::mesh::{Multiaddr, PeerId};
use dht::netem::{memory_addr, Netem, NetemConfig};
use dht::{Incoming, Mesh, MeshConfig, Network};
use ed25519_dalek::SigningKey;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use signalling::service::CallService;
use signalling::{Address, CallId, Media, NodeToNode, UserName, ZoneName};
use tokio::sync::{oneshot, Semaphore};

use super::metrics::{cpu_seconds, rss_bytes, CallSample, LookupSample, Purpose, ResourcePoint};
use super::plan::{Action, Links, Phase, Plan, UserRef};

/// How a run is carried out (not part of the plan).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Give up (and report what was measured) after this long.
    pub max_wall: Duration,
    /// Where the sled trees of the nodes live (a temporary directory).
    pub data_dir: std::path::PathBuf,
}

/// Everything a run measured, before it is summarised.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Every lookup (workload, probes, audit).
    pub lookups: Vec<LookupSample>,
    /// Every call.
    pub calls: Vec<CallSample>,
    /// Operations not started because `max_in_flight` were under way.
    pub dropped: usize,
    /// Operations whose asking node was not running.
    pub skipped: usize,
    /// Resource use over time.
    pub resources: Vec<ResourcePoint>,
    /// RSS before the first node started, bytes.
    pub rss_baseline: u64,
    /// RSS when the workload started, bytes.
    pub rss_at_workload: u64,
    /// Nodes running when the workload started.
    pub nodes_at_workload: usize,
    /// Connections open when the workload started.
    pub connections_at_workload: usize,
    /// Highest RSS seen, bytes.
    pub rss_peak: u64,
    /// CPU seconds used when the workload started and when it ended.
    pub cpu_at_workload: f64,
    /// CPU seconds used when the workload ended.
    pub cpu_at_end: f64,
    /// Seconds from the start to the beginning and end of the workload.
    pub workload_wall: (f64, f64),
    /// Seconds after the heal when each probe first succeeded (None: never).
    pub probe_recovery_s: Vec<Option<f64>>,
    /// Wall-clock seconds of the whole run.
    pub wall_s: f64,
    /// Stopped early by `max_wall`.
    pub cut_short: bool,
    /// The network's counters.
    pub net: dht::netem::NetemStats,
    /// Nodes that failed to start.
    pub start_failures: usize,
    /// Wall-clock seconds per simulated second the run used.
    pub time_scale: f64,
}

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;

struct Node {
    mesh: Mesh,
    /// When it (re)started.
    started: Instant,
}

struct Sim {
    plan: Arc<Plan>,
    netem: Arc<Netem>,
    db: sled::Db,
    peers: Vec<PeerId>,
    nodes: Mutex<Vec<Option<Node>>>,
    waiters: Waiters,
    lookups: Mutex<Vec<LookupSample>>,
    calls: Mutex<Vec<CallSample>>,
    dropped: AtomicUsize,
    skipped: AtomicUsize,
    in_flight: Arc<Semaphore>,
    t0: Instant,
    call_seq: AtomicUsize,
    probes: Mutex<Vec<Option<f64>>>,
    /// Wall-clock seconds per simulated second.
    scale: f64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn secs(d: f64) -> Duration {
    Duration::from_secs_f64(d.max(0.0))
}

impl Sim {
    /// `sim_s` simulated seconds in wall-clock time.
    fn wall(&self, sim_s: f64) -> Duration {
        secs(sim_s * self.scale)
    }

    /// A wall-clock span in simulated milliseconds.
    fn sim_ms(&self, wall: Duration) -> f64 {
        wall.as_secs_f64() * 1e3 / self.scale
    }
    /// `/memory/<port>/p2p/<peer id>` of node `i`.
    fn addr_of(&self, i: usize) -> Multiaddr {
        let port = self.plan.nodes[i].port;
        format!("/memory/{port}/p2p/{}", self.peers[i]).parse().unwrap_or_else(|_| memory_addr(port))
    }

    fn user(&self, u: UserRef) -> anyhow::Result<Address> {
        let n = &self.plan.nodes[u.node];
        let name = n.users.get(u.user).context("no such user")?;
        Ok(Address::new(UserName::parse(name)?, ZoneName::parse(&n.zone)?))
    }

    fn mesh(&self, i: usize) -> Option<Mesh> {
        lock(&self.nodes).get(i).and_then(|n| n.as_ref().map(|n| n.mesh.clone()))
    }

    fn running(&self) -> usize {
        lock(&self.nodes).iter().filter(|n| n.is_some()).count()
    }

    async fn start_node(self: &Arc<Self>, i: usize) -> anyhow::Result<()> {
        let n = &self.plan.nodes[i];
        let s = &self.plan.scenario;
        let c = MeshConfig {
            listen: vec![memory_addr(n.port)],
            bootstrap: n.bootstrap.iter().map(|&b| self.addr_of(b)).collect(),
            relays: n.via.map(|r| vec![self.addr_of(r)]).unwrap_or_default(),
            mdns: false,
            relay_server: !n.nat,
            claim_ttl: secs(s.mesh.claim_ttl_s),
            user_ttl: secs(s.mesh.user_ttl_s),
            republish: secs(s.mesh.republish_s),
            cache_ttl: Duration::from_millis(s.mesh.cache_ttl_ms),
            request_timeout: Duration::from_millis(s.mesh.request_timeout_ms),
            retries: s.mesh.retries,
            max_connections: s.mesh.max_connections,
            idle_timeout: secs(s.mesh.idle_timeout_s),
            bootstrap_interval: secs(s.mesh.bootstrap_interval_s),
            time_scale: self.scale,
            network: Network::Simulated(self.netem.clone()),
            ..MeshConfig::default()
        };
        self.netem.revive(n.port);
        self.netem.set_nat(n.port, n.nat);
        let tree = self.db.open_tree(format!("n{i}"))?;
        let mesh = Mesh::start(SigningKey::from_bytes(&n.key), tree, ZoneName::parse(&n.zone)?, c).await?;
        let inbound = mesh.serve::<CallService>(1024)?;
        for u in &n.users {
            mesh.publish_user(UserName::parse(u)?).await;
        }
        tokio::spawn(serve(mesh.clone(), inbound, self.waiters.clone()));
        if let Some(slot) = lock(&self.nodes).get_mut(i) {
            *slot = Some(Node { mesh, started: Instant::now() });
        }
        Ok(())
    }

    async fn stop_node(&self, i: usize, crash: bool) {
        let node = lock(&self.nodes).get_mut(i).and_then(Option::take);
        if crash {
            self.netem.crash(self.plan.nodes[i].port);
        }
        if let Some(n) = node {
            n.mesh.stop().await;
        }
    }

    /// The two nodes of a lookup as it starts: simulated seconds since each
    /// (re)started, and whether the mesh had acknowledged the target's
    /// records since.
    fn lookup_state(&self, from: usize, target: usize) -> LookupState {
        let nodes = lock(&self.nodes);
        let up = |i: usize| nodes.get(i).and_then(Option::as_ref).map(|n| self.sim_ms(n.started.elapsed()) / 1e3);
        let published = nodes.get(target).and_then(Option::as_ref).is_some_and(|n| n.mesh.published_at_ms().is_some());
        LookupState { target_up_s: up(target), target_published: published, asker_up_s: up(from), asker_view: None }
    }

    /// Resolves `target` from node `from`, timed.
    async fn lookup(&self, from: usize, target: UserRef) -> LookupResult {
        let mut state = self.lookup_state(from, target.node);
        let Some(mesh) = self.mesh(from) else { return (false, Some("asker down".into()), 0.0, None, state) };
        let Ok(addr) = self.user(target) else { return (false, Some("bad user".into()), 0.0, None, state) };
        let t = Instant::now();
        let timeout = self.wall(self.plan.scenario.lookup_timeout_s);
        let (ok, error, latency_ms, st) = match tokio::time::timeout(timeout, mesh.resolve_with_stats(&addr)).await {
            Ok((Ok((peer, _)), st)) => {
                let ok = peer == self.peers[target.node];
                (ok, (!ok).then(|| "wrong node".to_string()), self.sim_ms(t.elapsed()), st)
            }
            Ok((Err(e), st)) => (false, Some(e.to_string()), self.sim_ms(t.elapsed()), st),
            Err(_) => (false, Some("timeout".into()), self.sim_ms(t.elapsed()), None),
        };
        if !ok {
            // What the asker knew of the mesh when it gave up.
            let status = mesh.status().await;
            state.asker_view = Some((status.routing_table as u32, status.peers.len() as u32));
        }
        (ok, error, latency_ms, st, state)
    }

    fn record_lookup(&self, t_s: f64, purpose: Purpose, phase: Phase, late_ms: f64, r: LookupResult) {
        let (ok, error, latency_ms, st, LookupState { target_up_s, target_published, asker_up_s, asker_view }) = r;
        let st = st.unwrap_or_default();
        lock(&self.lookups).push(LookupSample {
            t_s,
            purpose,
            phase,
            ok,
            error,
            latency_ms,
            first_ms: st.first_ms.map(|m| m as f64 / self.scale),
            requests: st.requests,
            requests_to_first: st.requests_to_first,
            failures: st.failures,
            late_ms,
            target_up_s,
            target_published,
            asker_up_s,
            claim: (st.claim_requests, st.claim_successes, st.claim_records),
            asker_view,
        });
    }

    /// Places a call: an invite through `Mesh::send` (lookup, delivery,
    /// receipt), then waits for the callee node's `accepted`.
    async fn call(&self, caller: UserRef, callee: UserRef) -> (bool, Option<String>, f64) {
        let Some(mesh) = self.mesh(caller.node) else { return (false, Some("caller down".into()), 0.0) };
        let (Ok(from), Ok(to)) = (self.user(caller), self.user(callee)) else {
            return (false, Some("bad user".into()), 0.0);
        };
        let id = format!("sim-{}", self.call_seq.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(id.clone(), tx);
        let t = Instant::now();
        let caller_name = from.name.clone();
        let invite = NodeToNode::Invite {
            call: CallId(id.clone()),
            from,
            to: to.clone(),
            media: Media { audio: true, video: false },
        };
        let timeout = self.wall(self.plan.scenario.call_timeout_s);
        let res = tokio::time::timeout(timeout, async {
            let (peer, ()) =
                mesh.send::<CallService>(&to, Some(&caller_name), &invite).await.map_err(|e| format!("invite: {e}"))?;
            if peer != self.peers[callee.node] {
                return Err("invite reached the wrong node".to_string());
            }
            rx.await.map_err(|_| "no accepted".to_string())
        })
        .await;
        lock(&self.waiters).remove(&id);
        match res {
            Ok(Ok(at)) => (true, None, self.sim_ms(at.duration_since(t))),
            Ok(Err(e)) => (false, Some(e), self.sim_ms(t.elapsed())),
            Err(_) => (false, Some("timeout".into()), self.sim_ms(t.elapsed())),
        }
    }
}

/// Found the right node, why not, latency (simulated ms), the query's
/// statistics, and the state of its two nodes (see `Sim::lookup_state`).
type LookupResult = (bool, Option<String>, f64, Option<dht::LookupStats>, LookupState);

/// The nodes of a lookup as it started.
struct LookupState {
    target_up_s: Option<f64>,
    target_published: bool,
    asker_up_s: Option<f64>,
    /// A failed lookup's asker afterwards: routing-table entries, peers
    /// connected.
    asker_view: Option<(u32, u32)>,
}

/// Answers other nodes' call requests as a node would: every message gets
/// a receipt; an invite is then accepted (the callee's node sends
/// `accepted` back to the caller's node, acting for the callee); an
/// `accepted` completes the call.
async fn serve(mesh: Mesh, mut inbound: Incoming<CallService>, waiters: Waiters) {
    while let Some(msg) = inbound.recv().await {
        let peer = msg.peer;
        msg.reply.ok(()).await;
        match msg.request {
            NodeToNode::Invite { call, to, .. } => {
                let m = mesh.clone();
                tokio::spawn(async move {
                    let _ = m.send_to::<CallService>(peer, Some(&to.name), &NodeToNode::Accepted { call }).await;
                });
            }
            NodeToNode::Accepted { call } => {
                if let Some(tx) = lock(&waiters).remove(&call.0) {
                    let _ = tx.send(Instant::now());
                }
            }
            _ => {}
        }
    }
}

/// Runs `plan`; returns what was measured.
pub async fn run(plan: Plan, opts: &RunOptions) -> anyhow::Result<Measured> {
    let plan = Arc::new(plan);
    let s = plan.scenario.clone();
    let scale = s.time_scale;
    let links = Links::new(&plan);
    let netem = Netem::new(
        Box::new(move |a, b| {
            let mut p = links.params(a, b);
            p.latency = p.latency.mul_f64(scale);
            p.bandwidth = p.bandwidth.map(|b| ((b as f64 / scale) as u64).max(1));
            p
        }),
        NetemConfig {
            unreachable_dial: Duration::from_millis(s.link.unreachable_dial_ms).mul_f64(scale),
            min_rto: Duration::from_millis(s.link.min_rto_ms).mul_f64(scale),
            seed: s.seed,
            noise: s.link.noise,
        },
    );
    let db = sled::Config::new()
        .path(&opts.data_dir)
        .temporary(true)
        .cache_capacity(64 << 20)
        .flush_every_ms(Some(2000))
        .open()
        .context("opening the nodes' database")?;
    let peers = plan
        .nodes
        .iter()
        .map(|n| dht::mesh::keypair_of(&SigningKey::from_bytes(&n.key)).map(|k| PeerId::from(k.public())))
        .collect::<Result<Vec<_>, _>>()?;
    let sim = Arc::new(Sim {
        nodes: Mutex::new((0..plan.nodes.len()).map(|_| None).collect()),
        plan: plan.clone(),
        netem: netem.clone(),
        db,
        peers,
        waiters: Arc::default(),
        lookups: Mutex::default(),
        calls: Mutex::default(),
        dropped: AtomicUsize::new(0),
        skipped: AtomicUsize::new(0),
        in_flight: Arc::new(Semaphore::new(s.max_in_flight)),
        t0: Instant::now(),
        call_seq: AtomicUsize::new(0),
        probes: Mutex::default(),
        scale,
    });
    let mut m = Measured { rss_baseline: rss_bytes(), time_scale: scale, ..Measured::default() };

    // Resource sampling.
    let resources: Arc<Mutex<Vec<ResourcePoint>>> = Arc::default();
    let sampler = {
        let (sim, resources) = (sim.clone(), resources.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                tick.tick().await;
                let p = ResourcePoint {
                    t_s: sim.t0.elapsed().as_secs_f64() / sim.scale,
                    nodes: sim.running(),
                    rss_mib: rss_bytes() as f64 / (1 << 20) as f64,
                    connections: sim.netem.open_connections(),
                    cpu_s: cpu_seconds(),
                };
                lock(&resources).push(p);
            }
        })
    };

    let bar = if opts.progress { ProgressBar::new(plan.actions.len() as u64) } else { ProgressBar::hidden() };
    if opts.progress {
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
    }
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let deadline = sim.t0 + opts.max_wall;
    let mut tasks = tokio::task::JoinSet::new();
    let mut marked_workload = false;
    let mut last_msg = Instant::now();
    let mut start_failures = 0;
    for timed in &plan.actions {
        let at = sim.t0 + sim.wall(timed.at_ms as f64 / 1e3);
        if at > deadline {
            m.cut_short = true;
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        if !marked_workload && timed.at_ms >= plan.workload_start_ms {
            marked_workload = true;
            m.rss_at_workload = rss_bytes();
            m.nodes_at_workload = sim.running();
            m.connections_at_workload = netem.open_connections();
            m.cpu_at_workload = cpu_seconds();
            m.workload_wall.0 = sim.t0.elapsed().as_secs_f64();
        }
        let late_ms = sim.sim_ms(at.elapsed());
        let t_s = (timed.at_ms as f64 - plan.workload_start_ms as f64) / 1e3;
        match &timed.action {
            Action::Join { node } | Action::Rejoin { node } => {
                if let Err(e) = sim.start_node(*node).await {
                    start_failures += 1;
                    bar.println(format!("node {node} failed to start: {e:#}"));
                }
            }
            Action::Leave { node, crash } => sim.stop_node(*node, *crash).await,
            Action::Partition { far } => {
                let groups = far.iter().map(|&i| (plan.nodes[i].port, 1)).collect();
                netem.partition(groups);
            }
            Action::Lookup { from, target, phase } => {
                let Ok(permit) = sim.in_flight.clone().try_acquire_owned() else {
                    sim.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if sim.mesh(*from).is_none() {
                    sim.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let (sim, from, target, phase) = (sim.clone(), *from, *target, *phase);
                tasks.spawn(async move {
                    let r = sim.lookup(from, target).await;
                    sim.record_lookup(t_s, Purpose::Workload, phase, late_ms, r);
                    drop(permit);
                });
            }
            Action::Call { caller, callee, phase } => {
                let Ok(permit) = sim.in_flight.clone().try_acquire_owned() else {
                    sim.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let (sim, caller, callee, phase) = (sim.clone(), *caller, *callee, *phase);
                tasks.spawn(async move {
                    let (ok, error, setup_ms) = sim.call(caller, callee).await;
                    lock(&sim.calls).push(CallSample { t_s, phase, ok, error, setup_ms, late_ms });
                    drop(permit);
                });
            }
            Action::Heal { probes } => {
                netem.heal();
                let (sim, probes) = (sim.clone(), probes.clone());
                let p = s.partition.clone().unwrap_or_default();
                tasks.spawn(async move { probe(sim, probes, p, t_s).await });
            }
            Action::Audit { checks } => {
                m.cpu_at_end = cpu_seconds();
                m.workload_wall.1 = sim.t0.elapsed().as_secs_f64();
                bar.set_message("auditing records");
                let (sim, checks) = (sim.clone(), checks.clone());
                tasks.spawn(async move { audit(sim, checks, t_s).await });
            }
        }
        bar.inc(1);
        if last_msg.elapsed() > Duration::from_millis(500) {
            last_msg = Instant::now();
            let (lk, ok) = {
                let l = lock(&sim.lookups);
                (l.len(), l.iter().filter(|x| x.ok).count())
            };
            let (cl, cok) = {
                let c = lock(&sim.calls);
                (c.len(), c.iter().filter(|x| x.ok).count())
            };
            bar.set_message(format!(
                "nodes {} | lookups {ok}/{lk} | calls {cok}/{cl} | {} MiB",
                sim.running(),
                rss_bytes() >> 20
            ));
        }
    }
    bar.set_message("waiting for the last operations");
    let rest = deadline.saturating_duration_since(Instant::now());
    if tokio::time::timeout(rest, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
        m.cut_short = true;
        tasks.abort_all();
    }
    bar.finish_with_message("done");
    m.wall_s = sim.t0.elapsed().as_secs_f64();
    m.net = netem.stats();
    sampler.abort();
    m.resources = lock(&resources).clone();
    m.rss_peak = m.resources.iter().map(|r| (r.rss_mib * (1 << 20) as f64) as u64).max().unwrap_or(0).max(rss_bytes());
    m.lookups = std::mem::take(&mut *lock(&sim.lookups));
    m.calls = std::mem::take(&mut *lock(&sim.calls));
    m.probe_recovery_s = std::mem::take(&mut *lock(&sim.probes));
    m.dropped = sim.dropped.load(Ordering::Relaxed);
    m.skipped = sim.skipped.load(Ordering::Relaxed);
    m.start_failures = start_failures;
    // Stop every node.
    let all: Vec<usize> = (0..plan.nodes.len()).collect();
    for i in all {
        sim.stop_node(i, false).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(m)
}

/// After a heal: each probe looks its user up every `probe_interval_s`
/// until it succeeds once (or `probe_timeout_s` passes).
async fn probe(sim: Arc<Sim>, probes: Vec<(usize, UserRef)>, p: super::scenario::Partition, t_s: f64) {
    let healed = Instant::now();
    let since_heal = || healed.elapsed().as_secs_f64() / sim.scale;
    let mut found: Vec<Option<f64>> = vec![None; probes.len()];
    let limit = sim.wall(p.probe_timeout_s);
    while healed.elapsed() < limit && found.iter().any(Option::is_none) {
        let round: Vec<usize> = (0..probes.len()).filter(|&i| found[i].is_none()).collect();
        let mut set = tokio::task::JoinSet::new();
        for i in round {
            let (sim, (from, target)) = (sim.clone(), probes[i]);
            set.spawn(async move {
                let r = sim.lookup(from, target).await;
                let ok = r.0;
                let since = healed.elapsed().as_secs_f64() / sim.scale;
                sim.record_lookup(t_s + since, Purpose::Probe, Phase::Healed, 0.0, r);
                (i, ok)
            });
        }
        while let Some(Ok((i, ok))) = set.join_next().await {
            if ok {
                found[i] = Some(since_heal());
            }
        }
        tokio::time::sleep(sim.wall(p.probe_interval_s)).await;
    }
    lock(&sim.probes).extend(found);
}

/// Tries the audit gives a user whose lookup was cut short: a lookup
/// that timed out, or that the closest nodes did not all answer, says the
/// mesh was slow, not that the record is gone.
pub(crate) const AUDIT_TRIES: usize = 3;

/// Whether a lookup's error says it was cut short (the simulator's limit
/// on the whole lookup, or `dht::RouteError::Incomplete`) rather than
/// that the closest nodes had no such record.
pub(crate) fn is_cut_short(error: Option<&str>) -> bool {
    let incomplete = dht::RouteError::Incomplete.to_string();
    error.is_some_and(|e| e == "timeout" || e == incomplete)
}

/// The end-of-run audit: each live user looked up, 32 at a time; a lookup
/// cut short is tried again, up to [`AUDIT_TRIES`] in all, and the
/// last try is recorded.
async fn audit(sim: Arc<Sim>, checks: Vec<(usize, UserRef)>, t_s: f64) {
    let limit = Arc::new(Semaphore::new(32));
    let mut set = tokio::task::JoinSet::new();
    for (from, target) in checks {
        let (sim, limit) = (sim.clone(), limit.clone());
        set.spawn(async move {
            let Ok(_permit) = limit.acquire_owned().await else { return };
            let mut r = sim.lookup(from, target).await;
            for _ in 1..AUDIT_TRIES {
                if !is_cut_short(r.1.as_deref()) {
                    break;
                }
                r = sim.lookup(from, target).await;
            }
            sim.record_lookup(t_s, Purpose::Audit, Phase::Steady, 0.0, r);
        });
    }
    while set.join_next().await.is_some() {}
}
