//! Hostile peers on real loopback swarms: throw-away peers that speak the
//! mesh's Kademlia but hold no zone claim, peers that leave, one key
//! claiming many zone names, many keys claiming from one address.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use dht::behaviour::{IDENTIFY_VERSION, KAD_PROTOCOL};
use dht::record::{node_hex, ZoneClaim};
use dht::{MeshConfig, MeshRecord};
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::kad::store::MemoryStore;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, kad, noise, tcp, yamux, Multiaddr, PeerId};
use signalling::{Address, UserName, ZoneName};
use tokio::sync::mpsc;

mod common;

use common::{addr_of, config_on as config, start_with as start, until};

/// A throw-away peer: Kademlia on the mesh's protocol in server mode, and
/// identify, and nothing else (no zone claim to show).
#[derive(NetworkBehaviour)]
struct Throwaway {
    kad: kad::Behaviour<MemoryStore>,
    identify: identify::Behaviour,
}

/// A swarm of a [`Throwaway`] peer with a fresh key; `max_bytes` raises its
/// Kademlia message and value limits (to offer values over the mesh's).
fn throwaway_swarm(max_bytes: Option<usize>) -> libp2p::Swarm<Throwaway> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let mut config = kad::Config::new(KAD_PROTOCOL);
            let mut store = kad::store::MemoryStoreConfig::default();
            if let Some(max) = max_bytes {
                config.set_max_packet_size(max);
                store.max_value_bytes = max;
            }
            let mut kad = kad::Behaviour::with_config(peer, MemoryStore::with_config(peer, store), config);
            kad.set_mode(Some(kad::Mode::Server));
            let identify = identify::Behaviour::new(identify::Config::new(IDENTIFY_VERSION.into(), key.public()));
            Throwaway { kad, identify }
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Starts a throw-away peer that joins through `boot`, walks the mesh for
/// random keys, and sends every peer its walks end on to `found`. It stays
/// until the returned task is aborted.
fn throwaway(boot: Multiaddr, found: mpsc::UnboundedSender<Vec<PeerId>>) -> (PeerId, tokio::task::JoinHandle<()>) {
    let mut swarm = throwaway_swarm(None);
    let me = *swarm.local_peer_id();
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    let boot_peer = boot.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::P2p(id) => Some(id),
        _ => None,
    });
    swarm.behaviour_mut().kad.add_address(&boot_peer.unwrap(), boot);
    let task = tokio::spawn(async move {
        let mut walk = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = walk.tick() => {
                    swarm.behaviour_mut().kad.get_closest_peers(PeerId::random());
                }
                ev = swarm.select_next_some() => {
                    if let SwarmEvent::Behaviour(ThrowawayEvent::Kad(kad::Event::OutboundQueryProgressed {
                        result: kad::QueryResult::GetClosestPeers(Ok(ok)), ..
                    })) = ev {
                        let _ = found.send(ok.peers.into_iter().map(|p| p.peer_id).collect());
                    }
                }
            }
        }
    });
    (me, task)
}

/// Throw-away peers neither enter honest routing tables nor appear in
/// their FIND_NODE answers, a zone node that leaves is dropped from them,
/// and calls still route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_zone_nodes_shape_routing_tables() {
    let a = start("a", 41, config("127.0.0.1", vec![])).await;
    let boot = addr_of(&a).await;
    let b = start("b", 42, config("127.0.0.1", vec![boot.clone()])).await;
    let c = start("c", 43, config("127.0.0.1", vec![boot.clone()])).await;
    let honest: HashSet<PeerId> = [a.mesh.peer_id(), b.mesh.peer_id(), c.mesh.peer_id()].into();
    b.mesh.publish_user(UserName::parse("bob").unwrap()).await;
    let bob = Address::parse("bob@b").unwrap();
    until("bob@b resolvable from c", || async { c.mesh.resolve(&bob).await.is_ok() }).await;

    // Three throw-away peers join through a, walk, and leave.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut gone = HashSet::new();
    for _ in 0..3 {
        let (id, task) = throwaway(boot.clone(), tx.clone());
        gone.insert(id);
        // It has walked the mesh (and so talked to the honest nodes).
        tokio::time::timeout(Duration::from_secs(20), rx.recv()).await.unwrap().unwrap();
        task.abort();
    }
    until("a refused them all", || async {
        a.mesh.status().await.refused_peers.get("no_claim").copied().unwrap_or(0) >= 3
    })
    .await;
    for n in [&a, &b, &c] {
        assert_eq!(n.mesh.status().await.routing_table, 2, "only the other two zone nodes");
    }
    // A fresh throw-away asks the honest nodes for peers: it hears only of
    // zone nodes.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_, task) = throwaway(boot.clone(), tx);
    for _ in 0..5 {
        let peers = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
        let strangers: Vec<&PeerId> = peers.iter().filter(|p| gone.contains(p)).collect();
        assert!(strangers.is_empty(), "FIND_NODE answers named throw-away peers: {strangers:?}");
        assert!(peers.iter().all(|p| honest.contains(p)), "{peers:?}");
    }
    task.abort();
    c.mesh.forget(&bob);
    assert_eq!(c.mesh.resolve(&bob).await.unwrap().0, b.mesh.peer_id(), "calls still route");

    // A zone node that leaves is dropped once it cannot be reached.
    let d = start("d", 44, config("127.0.0.1", vec![boot.clone()])).await;
    until("d is in a's table", || async { a.mesh.status().await.routing_table == 3 }).await;
    d.mesh.stop().await;
    until("a dropped d", || async {
        let _ = a.mesh.resolve(&Address::parse("x@d").unwrap()).await;
        a.mesh.status().await.routing_table == 2
    })
    .await;
}

/// A claim of `zone` by `key`, signed now.
fn claim_of(key: &SigningKey, zone: &str) -> MeshRecord {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    MeshRecord::Zone(
        ZoneClaim {
            zone: ZoneName::parse(zone).unwrap(),
            node: node_hex(key),
            addrs: vec![],
            seq: now,
            issued_at_ms: now,
            expires_at_ms: now + 3_600_000,
            first_claimed_at_ms: Some(now),
            handover: None,
        }
        .sign(key),
    )
}

/// One key may hold one zone name; one address may bring in only so many
/// new names; past the bounds first claims are refused, counted by cause,
/// and an honest new zone still joins the mesh. (On loopback every
/// inbound connection comes from 127.0.0.1, so the node that refused the
/// crowd would refuse a newcomer's claim too until its share refills; the
/// newcomer's claim lives on the other nodes, and a finds its users.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squatters_are_bounded_by_key_and_by_address() {
    let strict = |boot| MeshConfig {
        new_zones_per_peer_per_hour: 2,
        new_zones_per_address_per_hour: 3,
        ..config("127.0.0.1", boot)
    };
    let a = start("a", 51, strict(vec![])).await;
    let boot = addr_of(&a).await;
    let b = start("b", 52, config("127.0.0.1", vec![boot.clone()])).await;
    until("a knows b's zone", || async { a.mesh.zone_claim(&ZoneName::parse("b").unwrap()).await.is_some() }).await;

    // One key, four names: its own zone and three more.
    let k = SigningKey::from_bytes(&[53; 32]);
    let squatter = start("sq0", 53, config("127.0.0.1", vec![boot.clone()])).await;
    for zone in ["sq1", "sq2", "sq3"] {
        let _ = squatter.mesh.put_raw(&claim_of(&k, zone)).await;
    }
    until("a refused the key's other names", || async { a.mesh.status().await.rejected.too_many_zones >= 3 }).await;

    // Many keys from one address, each with a name of its own.
    let mut crowd = Vec::new();
    for i in 0..6u8 {
        crowd.push(start(&format!("crowd{i}"), 60 + i, config("127.0.0.1", vec![boot.clone()])).await);
    }
    until("a refused names past the address's share", || async {
        a.mesh.status().await.rejected.claim_rate_limited >= 1
    })
    .await;

    // The squatters renew their claims every republish, and are refused
    // each time: silence them before the honest newcomer comes.
    for m in std::iter::once(&squatter).chain(&crowd) {
        m.mesh.stop().await;
    }
    // Checks under way finish (a claim lookup times out within 10 s).
    let mut last = a.mesh.status().await.rejected;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = a.mesh.status().await.rejected;
        if now == last {
            break;
        }
        last = now;
    }
    let status = a.mesh.status().await;
    assert!(status.rejected.too_many_zones >= 3, "{:?}", status.rejected);
    assert!(status.rejected.claim_rate_limited >= 1, "{:?}", status.rejected);

    // An honest new zone still joins the mesh: its users are found from
    // a, whose share for this (loopback) address the crowd has used up,
    // through the nodes that hold its claim.
    let n = start("nou", 70, config("127.0.0.1", vec![addr_of(&b).await])).await;
    n.mesh.publish_user(UserName::parse("nina").unwrap()).await;
    let nina = Address::parse("nina@nou").unwrap();
    until("a resolves nina@nou", || async { a.mesh.resolve(&nina).await.is_ok() }).await;
    assert_eq!(a.mesh.resolve(&nina).await.unwrap().0, n.mesh.peer_id());
    drop((b, crowd));
}

/// A put whose walk timed out (a bootstrap peer accepts connections and
/// never says a word) still reaches the honest peer, straight to the
/// closest peers known; it is counted provisional, to be made again once
/// the table has filled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_that_fell_back_is_provisional() {
    let (silent, held) = common::silent_peer().await;
    let h = start("h", 91, config("127.0.0.1", vec![])).await;
    // On a faster clock, Kademlia's query timeout (stretched) comes before
    // its per-peer timeout (10 s, not configurable): the walk times out
    // waiting for the silent peer.
    let fast = MeshConfig { time_scale: 0.3, ..config("127.0.0.1", vec![silent, addr_of(&h).await]) };
    let a = start("p", 92, fast).await;
    until("a's claim went out provisionally", || async { a.mesh.status().await.provisional_puts >= 1 }).await;
    until("h holds a's claim", || async { h.mesh.zone_claim(&ZoneName::parse("p").unwrap()).await.is_some() }).await;
    held.abort();
}

/// A value over the record limit is refused and counted as `too_large`,
/// up to what a Kademlia message may carry; the node stores nothing of it
/// and goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_value_is_counted() {
    let a = start("a", 95, config("127.0.0.1", vec![])).await;
    let boot = addr_of(&a).await;
    let boot_peer = a.mesh.peer_id();
    let mut swarm = throwaway_swarm(Some(1 << 20));
    swarm.behaviour_mut().kad.add_address(&boot_peer, boot);
    // 40 KiB, within a Kademlia message here; 8 KiB is the record limit.
    const OFFERS: u64 = 3;
    for i in 0..OFFERS {
        let key = kad::RecordKey::new(&format!("/xarxa/zone/big{i}"));
        let record = kad::Record::new(key, vec![b'{'; 40 * 1024]);
        swarm.behaviour_mut().kad.put_record(record, kad::Quorum::One).unwrap();
    }
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    until("a counted every oversized value", || async { a.mesh.status().await.rejected.too_large >= OFFERS }).await;
    let status = a.mesh.status().await;
    assert_eq!(status.rejected.too_large, OFFERS, "{:?}", status.rejected);
    assert_eq!(status.rejected.malformed, 0, "{:?}", status.rejected);
    assert!(status.stored_records <= 1, "at most a's own claim is stored: {}", status.stored_records);
    task.abort();
}
