//! The limits per source address and per network, seen from distinct
//! addresses. On loopback every peer comes from 127.0.0.1 (and loopback is
//! exempt from the per-network bound), so these tests give each node a
//! host of its own: a thread that unshares its network namespace
//! (`CLONE_NEWNET`, which needs root or CAP_SYS_ADMIN, as CI has) and runs
//! the node's Tokio runtime, whose threads inherit the namespace. The
//! hosts are joined by veth pairs to a bridge in one more namespace, set
//! up with `ip` (iproute2) through `nsenter`. Every socket of these tests
//! is in a namespace they made; the namespaces go with their threads.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dht::MeshConfig;
use libp2p::kad::KBucketKey;
use libp2p::PeerId;
use signalling::ZoneName;
use tokio::sync::oneshot;

mod common;

use common::{addr_of, config_on as config, start_with, until, Node};

/// `ip ARGS` in the network namespace of thread `tid`.
fn ip_in(tid: u32, args: &[&str]) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{tid}/ns/net"))
        .arg("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("nsenter ip (util-linux, iproute2): {e}"));
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A thread in a network namespace of its own, with a runtime on it.
struct Host {
    tid: u32,
    rt: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Host {
    fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("unshare(CLONE_NEWNET): {e} (these tests need root, as CI runs them)"));
            let me = std::fs::read_link("/proc/thread-self").unwrap();
            let tid: u32 = me.file_name().unwrap().to_str().unwrap().parse().unwrap();
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            tx.send((tid, rt.handle().clone())).unwrap();
            rt.block_on(async {
                let _ = stopped.await;
            });
        });
        let (tid, rt) = rx.recv().unwrap();
        ip_in(tid, &["link", "set", "lo", "up"]);
        Self { tid, rt, stop: Some(stop), thread: Some(thread) }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let _ = self.thread.take().map(|t| t.join());
    }
}

/// Hosts on one Ethernet segment (10.0.0.0/8, no router).
struct Lan {
    hub: Host,
    hosts: Vec<Host>,
}

static LINKS: AtomicUsize = AtomicUsize::new(0);

impl Lan {
    fn new() -> Self {
        let hub = Host::new();
        ip_in(hub.tid, &["link", "add", "br0", "type", "bridge"]);
        ip_in(hub.tid, &["link", "set", "br0", "up"]);
        Self { hub, hosts: Vec::new() }
    }

    /// A new host at `ip` on the segment; its index.
    fn host(&mut self, ip: &str) -> usize {
        let host = Host::new();
        let link = format!("h{}", LINKS.fetch_add(1, Ordering::Relaxed));
        let tid = host.tid.to_string();
        ip_in(self.hub.tid, &["link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &tid]);
        ip_in(self.hub.tid, &["link", "set", &link, "master", "br0", "up"]);
        ip_in(host.tid, &["addr", "add", &format!("{ip}/8"), "dev", "eth0"]);
        ip_in(host.tid, &["link", "set", "eth0", "up"]);
        self.hosts.push(host);
        self.hosts.len() - 1
    }

    /// Starts a node of `zone` with key `[seed; 32]` on host `host`.
    async fn node(&self, host: usize, zone: &str, seed: u8, config: MeshConfig) -> Node {
        let zone = zone.to_string();
        self.hosts[host].rt.spawn(async move { start_with(&zone, seed, config).await }).await.unwrap()
    }
}

fn peer_of_seed(seed: u8) -> PeerId {
    libp2p::identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap().public().to_peer_id()
}

/// The bucket `peer` falls in, in `of`'s routing table.
fn bucket(of: PeerId, peer: PeerId) -> u32 {
    KBucketKey::from(of).distance(&KBucketKey::from(peer)).ilog2().unwrap()
}

/// Waits until `n`'s refusals have not moved for three seconds (claim
/// checks under way end within 10 s).
async fn settled(n: &Node) -> dht::record::RejectionCounts {
    let mut last = n.mesh.status().await.rejected;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = n.mesh.status().await.rejected;
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("refusals still moving after a minute: {last:?}");
}

/// Many keys from one address use up that address's share of new zone
/// names; a newcomer from another address is not held to it: its first
/// claim is stored, while one more from the crowd's address is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_share_of_new_names_is_per_address() {
    let mut lan = Lan::new();
    {
        let strict = MeshConfig { new_zones_per_address_per_hour: 3, ..config("10.9.9.1", vec![]) };
        let (ha, crowd_host, hn) = (lan.host("10.9.9.1"), lan.host("10.1.1.1"), lan.host("10.2.2.1"));
        let a = lan.node(ha, "a", 101, strict).await;
        let boot = addr_of(&a).await;
        let mut crowd = Vec::new();
        // Several nodes on one host (one address), each a zone of its own:
        // more than the share and its burst (twice the share).
        for i in 0..8u8 {
            let c = config("10.1.1.1", vec![boot.clone()]);
            crowd.push(lan.node(crowd_host, &format!("crowd{i}"), 110 + i, c).await);
        }
        until("a refused names past 10.1.1.1's share", || async {
            a.mesh.status().await.rejected.claim_rate_limited >= 1
        })
        .await;
        for m in &crowd {
            m.mesh.stop().await;
        }
        let before = settled(&a).await;
        let held = a.mesh.status().await.stored_records;

        // A newcomer from another address: a stores its first claim.
        let other = lan.node(hn, "nou", 120, config("10.2.2.1", vec![boot.clone()])).await;
        until("a stored nou's claim", || async { a.mesh.status().await.stored_records == held + 1 }).await;
        assert_eq!(settled(&a).await.claim_rate_limited, before.claim_rate_limited);
        other.mesh.stop().await;

        // One more from the crowd's address: refused, nothing stored.
        let same = lan.node(crowd_host, "mes", 121, config("10.1.1.1", vec![boot.clone()])).await;
        until("a refused mes's claim", || async {
            a.mesh.status().await.rejected.claim_rate_limited > before.claim_rate_limited
        })
        .await;
        // Stopped first: it renews its claim, and each renewal is refused.
        same.mesh.stop().await;
        settled(&a).await;
        assert_eq!(a.mesh.status().await.stored_records, held + 1);

        // Both newcomers gone, a node that joins later learns from a what
        // a holds: nou's claim, and not mes's.
        let observer = lan.node(hn, "obs", 122, config("10.2.2.1", vec![boot.clone()])).await;
        until("the observer found nou through a", || async {
            observer.mesh.zone_claim(&ZoneName::parse("nou").unwrap()).await.is_some()
        })
        .await;
        assert!(observer.mesh.zone_claim(&ZoneName::parse("mes").unwrap()).await.is_none(), "a refused mes's claim");
    }
}

/// One bucket of a routing table takes at most `max_peers_per_prefix`
/// peers from one /24: zone nodes from 10.1.1.0/24 that fall in the same
/// bucket past that bound are refused (`prefix_full`), and a zone node of
/// that bucket from another network is still admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_takes_few_peers_from_one_network() {
    const ADDRS: &[&str] = &["10.9.9.1", "10.1.1.1", "10.1.1.2", "10.1.1.3", "10.1.1.4", "10.1.2.1"];
    let mut lan = Lan::new();
    {
        const A: u8 = 130;
        let me = peer_of_seed(A);
        // Five keys whose peer ids fall in the farthest bucket of a's table
        // (half of all keys do).
        let seeds: Vec<u8> = (131..=255u8).filter(|&s| bucket(me, peer_of_seed(s)) == 255).take(5).collect();
        assert_eq!(seeds.len(), 5);
        let hosts: Vec<usize> = ADDRS.iter().map(|ip| lan.host(ip)).collect();
        let a = lan.node(hosts[0], "a", A, MeshConfig { max_peers_per_prefix: 2, ..config(ADDRS[0], vec![]) }).await;
        let boot = addr_of(&a).await;
        let mut same_net = Vec::new();
        for (i, seed) in seeds[..4].iter().enumerate() {
            let ip = ADDRS[1 + i];
            same_net.push(lan.node(hosts[1 + i], &format!("veina{i}"), *seed, config(ip, vec![boot.clone()])).await);
        }
        until("a refused the peers past the bound", || async {
            a.mesh.status().await.refused_peers.get("prefix_full").copied().unwrap_or(0) >= 2
        })
        .await;
        assert_eq!(a.mesh.status().await.routing_table, 2, "two peers of 10.1.1.0/24 in one bucket");

        let elsewhere = lan.node(hosts[5], "lluny", seeds[4], config(ADDRS[5], vec![boot.clone()])).await;
        until("a admitted the peer from 10.1.2.0/24", || async { a.mesh.status().await.routing_table == 3 }).await;
        let status = a.mesh.status().await;
        assert_eq!(status.refused_peers.get("prefix_full").copied(), Some(2), "{:?}", status.refused_peers);
        drop((same_net, elsewhere));
    }
}
