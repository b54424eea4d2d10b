//! The multi-process mode: real `xarxa run` processes on loopback (TCP),
//! one per zone, joined as the plan says, users registered over HTTPS; an
//! observer — a `dht::Mesh` in this process, on a real TCP socket — joins
//! the same mesh and drives lookups (`Mesh::resolve`) and call invites
//! (`Mesh::send`, answered with a receipt by the real node) to the
//! processes' users. Its success rate is compared with the in-process mode
//! on the same plan.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use dht::mesh::{Multiaddr, PeerId};
use dht::{Mesh, MeshConfig};
use ed25519_dalek::SigningKey;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use signalling::service::CallService;
use signalling::{Address, CallId, Media, NodeToNode, UserName, ZoneName};
use tokio::sync::Semaphore;

use super::metrics::{hops, Dist, Rate};
use super::plan::Plan;
use super::scenario::{Latency, Scenario};

/// How a multi-process run goes.
#[derive(Debug, Clone)]
pub struct MultiOptions {
    /// Node processes.
    pub nodes: usize,
    /// Users per node.
    pub users_per_node: usize,
    /// Lookups the observer makes.
    pub lookups: usize,
    /// Call invites the observer sends.
    pub calls: usize,
    /// Seed of the plan (zones, bootstrap graph, targets).
    pub seed: u64,
    /// Seconds to wait after the last user is registered.
    pub settle_s: u64,
    /// Lookups in flight at once.
    pub concurrency: usize,
}

/// What a multi-process run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MultiSummary {
    /// Node processes.
    pub nodes: usize,
    /// Users registered.
    pub users: usize,
    /// The plan's digest.
    pub plan_digest: String,
    /// Lookups: successes out of attempts.
    pub lookups: Rate,
    /// Their latency, ms.
    pub latency_ms: Dist,
    /// Hops (request rounds to the first record).
    pub hops: Dist,
    /// Messages per lookup.
    pub messages: Dist,
    /// Invites delivered to the right node with a receipt.
    pub calls: Rate,
    /// Invite delivery time (lookup + message + receipt), ms.
    pub call_ms: Dist,
    /// Resident memory per node process, MiB.
    pub rss_per_process_mib: Dist,
    /// Seconds to start the processes and register the users.
    pub setup_s: f64,
    /// Failures by cause.
    pub errors: Vec<(String, usize)>,
}

fn rss_of(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: f64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096.0 / (1 << 20) as f64)
}

/// The scenario the multi-process mode and its in-process twin share.
pub fn scenario(o: &MultiOptions) -> Scenario {
    Scenario {
        name: format!("multi-{}", o.nodes),
        seed: o.seed,
        nodes: o.nodes,
        users_per_node: o.users_per_node,
        latency: Latency::Constant { ms: 0.05 },
        ..Scenario::default()
    }
}

/// Runs the multi-process mode.
pub async fn run(o: &MultiOptions, progress: bool) -> anyhow::Result<MultiSummary> {
    if !(2..=100).contains(&o.nodes) || o.lookups > 100_000 || o.calls > 100_000 {
        bail!("multi: 2..=100 nodes, at most 100000 lookups and calls");
    }
    let plan = Plan::new(&scenario(o));
    let say = |m: String| {
        if progress {
            eprintln!("{m}");
        }
    };
    let t0 = Instant::now();
    // Start the processes in plan order, each bootstrapping from its planned
    // peers' real addresses.
    let mut procs: Vec<xarxa_tests::Node> = Vec::new();
    let bar = if progress { indicatif::ProgressBar::new(o.nodes as u64) } else { indicatif::ProgressBar::hidden() };
    bar.set_message("starting xarxa processes");
    for n in plan.nodes.iter().take(o.nodes) {
        let boots: Vec<String> = n
            .bootstrap
            .iter()
            .flat_map(|&b| procs.get(b).map(|p| p.info().mesh.clone()).unwrap_or_default())
            .map(|a| format!("\"{a}\""))
            .collect();
        let boot_env = format!("[{}]", boots.join(","));
        let mut env = vec![("XARXA_MESH__REPUBLISH", "60s")];
        if !boots.is_empty() {
            env.push(("XARXA_MESH__BOOTSTRAP", boot_env.as_str()));
        }
        let node = tokio::task::block_in_place(|| xarxa_tests::Node::start(&n.zone, &env))
            .with_context(|| format!("starting zone {}", n.zone))?;
        procs.push(node);
        bar.inc(1);
    }
    bar.finish_and_clear();
    say(format!("{} processes up in {:.1} s; registering users", procs.len(), t0.elapsed().as_secs_f64()));
    for (p, n) in procs.iter().zip(&plan.nodes) {
        for u in &n.users {
            p.register(u, "simulated-password-1").await.with_context(|| format!("registering {u}@{}", n.zone))?;
        }
    }
    let peers: Vec<PeerId> = procs
        .iter()
        .map(|p| p.info().peer_id.as_deref().unwrap_or_default().parse::<PeerId>().context("node.json peer id"))
        .collect::<anyhow::Result<_>>()?;

    // The observer.
    let dir = tempfile::tempdir()?;
    let tree = sled::open(dir.path())?.open_tree("mesh")?;
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed ^ 0x0b5e);
    let mut boot: Vec<Multiaddr> =
        procs.iter().flat_map(|p| p.info().mesh.clone()).filter_map(|a| a.parse().ok()).collect();
    boot.shuffle(&mut rng);
    boot.truncate(3);
    let c = MeshConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        bootstrap: boot,
        mdns: false,
        cache_ttl: Duration::ZERO,
        request_timeout: Duration::from_secs(5),
        ..MeshConfig::default()
    };
    let mut key = [0u8; 32];
    rng.fill(&mut key);
    let observer = Mesh::start(SigningKey::from_bytes(&key), tree, ZoneName::parse("observer")?, c).await?;
    let mut inbound = observer.serve::<CallService>(1024)?;
    tokio::spawn(async move {
        while let Some(m) = inbound.recv().await {
            m.reply.ok(()).await;
        }
    });
    let setup_s = t0.elapsed().as_secs_f64();
    say(format!("users registered; settling {} s", o.settle_s));
    tokio::time::sleep(Duration::from_secs(o.settle_s)).await;

    // Targets: random users, drawn from the seed.
    let users: Vec<(usize, String)> = plan
        .nodes
        .iter()
        .take(o.nodes)
        .enumerate()
        .flat_map(|(i, n)| n.users.iter().map(move |u| (i, u.clone())))
        .collect();
    let pick = |rng: &mut ChaCha8Rng| users.choose(rng).cloned();
    let observer = Arc::new(observer);
    let limit = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let bar = if progress {
        indicatif::ProgressBar::new((o.lookups + o.calls) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut set = tokio::task::JoinSet::new();
    for k in 0..(o.lookups + o.calls) {
        let Some((node, user)) = pick(&mut rng) else { break };
        let addr = Address::new(UserName::parse(&user)?, ZoneName::parse(&plan.nodes[node].zone)?);
        let want = peers[node];
        let (observer, limit, bar) = (observer.clone(), limit.clone(), bar.clone());
        let is_call = k >= o.lookups;
        set.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let t = Instant::now();
            let out = if is_call {
                let invite = NodeToNode::Invite {
                    call: CallId(format!("multi-{k}")),
                    from: Address::new(
                        UserName::parse("sim").unwrap_or_else(|_| addr.name.clone()),
                        observer.zone().clone(),
                    ),
                    to: addr.clone(),
                    media: Media { audio: true, video: false },
                };
                let sim = invite_from(&invite);
                match tokio::time::timeout(Duration::from_secs(30), observer.send::<CallService>(&addr, sim, &invite))
                    .await
                {
                    Ok(Ok((p, ()))) if p == want => (true, None, None),
                    Ok(Ok(_)) => (false, Some("wrong node".to_string()), None),
                    Ok(Err(e)) => (false, Some(e.to_string()), None),
                    Err(_) => (false, Some("timeout".into()), None),
                }
            } else {
                match tokio::time::timeout(Duration::from_secs(30), observer.resolve_with_stats(&addr)).await {
                    Ok((Ok((p, _)), st)) if p == want => (true, None, st),
                    Ok((Ok(_), st)) => (false, Some("wrong node".into()), st),
                    Ok((Err(e), st)) => (false, Some(e.to_string()), st),
                    Err(_) => (false, Some("timeout".into()), None),
                }
            };
            bar.inc(1);
            (is_call, out.0, out.1, out.2, t.elapsed().as_secs_f64() * 1e3)
        });
    }
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        results.push(r?);
    }
    bar.finish_and_clear();
    let lookups: Vec<_> = results.iter().filter(|r| !r.0).collect();
    let calls: Vec<_> = results.iter().filter(|r| r.0).collect();
    let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &results {
        if let Some(e) = &r.2 {
            *errors.entry(e.split(':').next().unwrap_or(e).to_string()).or_default() += 1;
        }
    }
    let summary = MultiSummary {
        nodes: o.nodes,
        users: users.len(),
        plan_digest: plan.digest(),
        lookups: Rate::of(lookups.iter().map(|r| r.1)),
        latency_ms: Dist::of(lookups.iter().filter(|r| r.1).map(|r| r.4)),
        hops: Dist::of(
            lookups.iter().filter_map(|r| r.3.and_then(|s| s.requests_to_first).map(|x| f64::from(hops(x)))),
        ),
        messages: Dist::of(lookups.iter().filter_map(|r| r.3.map(|s| f64::from(s.requests)))),
        calls: Rate::of(calls.iter().map(|r| r.1)),
        call_ms: Dist::of(calls.iter().filter(|r| r.1).map(|r| r.4)),
        rss_per_process_mib: Dist::of(procs.iter().filter_map(|p| rss_of(p.info().pid))),
        setup_s,
        errors: errors.into_iter().collect(),
    };
    observer.stop().await;
    drop(procs);
    Ok(summary)
}

/// The caller an invite names: the user the observer acts for.
fn invite_from(invite: &NodeToNode) -> Option<&UserName> {
    match invite {
        NodeToNode::Invite { from, .. } => Some(&from.name),
        _ => None,
    }
}
