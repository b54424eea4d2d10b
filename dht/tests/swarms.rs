//! Real swarms on loopback TCP: records are published, resolved and
//! validated, and service requests are delivered with receipts,
//! authenticated and limited by the service layer.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use dht::record::{node_hex, UserRecord, ZoneClaim};
use dht::{ClaimState, Mesh, MeshConfig, MeshRecord, RouteError};
use ed25519_dalek::SigningKey;
use libp2p::Multiaddr;
use signalling::service::{CallService, Refusal, Service};
use signalling::{Address, CallId, Media, NodeToNode, UserName, ZoneName};

mod common;

use common::{addr_of, config, start, start_with, until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_resolve_deliver_and_refuse_forgeries() {
    let a = start("a", 1, vec![]).await;
    let boot = addr_of(&a).await;
    let mut b = start("b", 2, vec![boot.clone()]).await;
    let c = start("c", 3, vec![boot.clone()]).await;
    let bob = Address::parse("bob@b").unwrap();
    b.mesh.publish_user(UserName::parse("bob").unwrap()).await;
    until("bob@b resolvable from c", || async { c.mesh.resolve(&bob).await.is_ok() }).await;
    let (peer, _) = c.mesh.resolve(&bob).await.unwrap();
    assert_eq!(peer, b.mesh.peer_id());
    assert_eq!(a.mesh.resolve(&Address::parse("nobody@b").unwrap()).await, Err(RouteError::UnknownUser));
    assert_eq!(a.mesh.resolve(&Address::parse("x@nowhere").unwrap()).await, Err(RouteError::UnknownZone));

    // Signalling with a delivery receipt.
    let invite = NodeToNode::Invite {
        call: CallId("c1".into()),
        from: Address::parse("carol@c").unwrap(),
        to: bob.clone(),
        media: Media { audio: true, video: false },
    };
    let sender = c.mesh.clone();
    let bob2 = bob.clone();
    let inv = invite.clone();
    let carol = UserName::parse("carol").unwrap();
    let sending = tokio::spawn(async move { sender.send::<CallService>(&bob2, Some(&carol), &inv).await });
    let got = tokio::time::timeout(Duration::from_secs(10), b.inbound.recv()).await.unwrap().unwrap();
    assert_eq!((got.peer, &got.request), (c.mesh.peer_id(), &invite));
    assert_eq!(got.acting_for(), Some(Address::parse("carol@c").unwrap()));
    assert!(b.mesh.holds_zone(got.peer, &ZoneName::parse("c").unwrap()).await);
    assert!(!b.mesh.holds_zone(got.peer, &ZoneName::parse("a").unwrap()).await);
    got.reply.ok(()).await;
    assert_eq!(sending.await.unwrap(), Ok((b.mesh.peer_id(), ())));

    // A rogue node with its own key: claims b, plants bob@b, replays.
    let rogue_key = SigningKey::from_bytes(&[66; 32]);
    let rogue = start("b", 66, vec![boot.clone()]).await;
    until("rogue sees the zone taken", || async {
        matches!(rogue.mesh.status().await.claim, ClaimState::Taken { .. })
    })
    .await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let claim = ZoneClaim {
        zone: ZoneName::parse("b").unwrap(),
        node: node_hex(&rogue_key),
        addrs: vec![],
        seq: now + 1_000_000,
        issued_at_ms: now,
        expires_at_ms: now + 3_600_000,
        first_claimed_at_ms: None,
        handover: None,
    }
    .sign(&rogue_key);
    let _ = rogue.mesh.put_raw(&MeshRecord::Zone(claim.clone())).await;
    let planted = UserRecord {
        user: bob.clone(),
        node: node_hex(&rogue_key),
        addrs: vec![],
        seq: now + 1_000_000,
        issued_at_ms: now,
        expires_at_ms: now + 3_600_000,
    }
    .sign(&rogue_key, claim);
    let _ = rogue.mesh.put_raw(&MeshRecord::User(planted)).await;
    until("honest nodes count the refusals", || async {
        let (sa, sc) = (a.mesh.status().await.rejected, c.mesh.status().await.rejected);
        sa.zone_taken + sc.zone_taken > 0 && sa.wrong_zone_key + sc.wrong_zone_key > 0
    })
    .await;
    // Fresh lookups still find the real bob.
    let fresh = start("d", 4, vec![boot]).await;
    until("d resolves bob", || async { fresh.mesh.resolve(&bob).await.is_ok() }).await;
    assert_eq!(fresh.mesh.resolve(&bob).await.unwrap().0, b.mesh.peer_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_scale_stretches_record_lifetimes_and_bad_scales_are_refused() {
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1000.0] {
        let dir = tempfile::tempdir().unwrap();
        let tree = sled::open(dir.path()).unwrap().open_tree("mesh").unwrap();
        let mut c = config(vec![]);
        c.time_scale = bad;
        let err = Mesh::start(SigningKey::from_bytes(&[9; 32]), tree, ZoneName::parse("s").unwrap(), c).await.err();
        assert!(matches!(err, Some(dht::MeshError::Config { .. })), "time_scale {bad}: {err:?}");
    }
    // A node on a clock stretched 3 times signs its claim for 3 times the
    // configured lifetime (in wall-clock time); another node finds it.
    let a = start("a", 1, vec![]).await;
    let boot = addr_of(&a).await;
    let dir = tempfile::tempdir().unwrap();
    let tree = sled::open(dir.path()).unwrap().open_tree("mesh").unwrap();
    let mut c = config(vec![boot]);
    c.claim_ttl = Duration::from_secs(100);
    c.time_scale = 3.0;
    assert_eq!(c.stretch(Duration::from_secs(2)), Duration::from_secs(6));
    let zone = ZoneName::parse("s").unwrap();
    let _mesh = Mesh::start(SigningKey::from_bytes(&[9; 32]), tree, zone.clone(), c).await.unwrap();
    until("the zone is claimed", || async { a.mesh.zone_claim(&zone).await.is_some() }).await;
    let claim = a.mesh.zone_claim(&zone).await.unwrap().claim;
    assert_eq!(claim.expires_at_ms - claim.issued_at_ms, 300_000);
}

/// Records outlive the nodes they were first put on: nodes that join later
/// are handed the records they are now among the closest to, so once the
/// first holders are gone (and long before anyone renews), a lookup still
/// finds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomers_are_handed_records_and_keep_them_when_the_first_holders_leave() {
    // Nobody renews during the test: whatever the newcomers hold, they were handed.
    let quiet = |boot: Vec<Multiaddr>| MeshConfig { republish: Duration::from_secs(3600), ..config(boot) };
    let a = start_with("a", 1, quiet(vec![])).await;
    let boot = addr_of(&a).await;
    let b = start_with("b", 2, quiet(vec![boot.clone()])).await;
    let bob = Address::parse("bob@b").unwrap();
    b.mesh.publish_user(UserName::parse("bob").unwrap()).await;
    until("bob@b resolvable from a", || async { a.mesh.resolve(&bob).await.is_ok() }).await;

    let d = start_with("d", 4, quiet(vec![boot.clone()])).await;
    let d_addr = addr_of(&d).await;
    let e = start_with("e", 5, quiet(vec![d_addr])).await;
    // d holds its own claim, and was handed a's and b's claims and bob's record.
    until("the newcomers are handed the records", || async {
        d.mesh.status().await.stored_records >= 4 && e.mesh.status().await.stored_records >= 4
    })
    .await;
    let handed = a.mesh.status().await.handed_over + b.mesh.status().await.handed_over;
    assert!(handed >= 3, "the first holders counted what they handed: {handed}");

    a.mesh.stop().await;
    b.mesh.stop().await;
    until("e resolves bob@b from the newcomers alone", || async {
        e.mesh.forget(&bob);
        e.mesh.resolve(&bob).await.map(|(peer, _)| peer) == Ok(b.mesh.peer_id())
    })
    .await;
    let status = d.mesh.status().await;
    assert_eq!(status.rejected.replayed, 0, "handing over is not mistaken for a replay: {:?}", status.rejected);
}

/// A lookup that ends before the closest nodes answered says so
/// (`Incomplete`) and is not mistaken for "no such zone": the only peer
/// this node knows accepts TCP connections and never says a word, so the
/// walk gives up on it after Kademlia's 10 s with no answer at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_that_no_node_answered_says_so() {
    let (silent, held) = common::silent_peer().await;
    let a = start("a", 21, vec![silent]).await;
    let started = std::time::Instant::now();
    let got = a.mesh.resolve(&Address::parse("x@nowhere").unwrap()).await;
    assert_eq!(got, Err(RouteError::Incomplete), "after {:?}", started.elapsed());
    assert_eq!(RouteError::Incomplete.end_reason(), signalling::EndReason::UnreachableZone);
    held.abort();

    // A node that left cleanly refuses the walk's dial: that is an answer
    // of sorts, and a small mesh still says "no such zone", not
    // "incomplete".
    let b = start("b", 22, vec![]).await;
    let boot = addr_of(&b).await;
    let c = start("c", 23, vec![boot.clone()]).await;
    let d = start("d", 24, vec![boot]).await;
    until("d knows c", || async {
        d.mesh.resolve(&Address::parse("x@c").unwrap()).await == Err(RouteError::UnknownUser)
    })
    .await;
    c.mesh.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(d.mesh.resolve(&Address::parse("x@nowhere").unwrap()).await, Err(RouteError::UnknownZone));
    assert_eq!(b.mesh.resolve(&Address::parse("x@nowhere").unwrap()).await, Err(RouteError::UnknownZone));

    // A node that knows no peer at all (cut off from the mesh) has asked
    // nobody: it cannot say the zone does not exist.
    let lone = start("lone", 25, vec![]).await;
    assert_eq!(lone.mesh.resolve(&Address::parse("x@nowhere").unwrap()).await, Err(RouteError::Incomplete));

    // A stopped mesh says so; a lookup it cut off is no verdict either.
    d.mesh.stop().await;
    assert_eq!(d.mesh.resolve(&Address::parse("x@nowhere").unwrap()).await, Err(RouteError::Stopped));
}

/// A throw-away service, defined here and nowhere else: a new service is a
/// [`Service`] type and a handler, with no change to the mesh.
struct Echo;

impl Service for Echo {
    const NAME: &'static str = "echo";
    const MAX_BYTES: usize = 64;
    type Request = String;
    type Reply = String;
}

/// The service layer answers a new service's requests, and refuses — by
/// stable cause, counted — what is not for it: a service the node does not
/// run, a body over the service's size, a sender that does not hold the
/// zone it speaks for, and a sender over its request rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_service_needs_no_change_to_the_mesh_and_the_layer_refuses_by_cause() {
    let a = start("a", 31, vec![]).await;
    let boot = addr_of(&a).await;
    let b = start_with("b", 32, MeshConfig { peer_requests_per_second: 5, ..config(vec![boot.clone()]) }).await;
    let c = start("c", 33, vec![boot.clone()]).await;
    let mut echo = b.mesh.serve::<Echo>(16).unwrap();
    assert!(matches!(b.mesh.serve::<Echo>(16), Err(dht::MeshError::ServiceTaken("echo"))));
    let server = tokio::spawn(async move {
        while let Some(req) = echo.recv().await {
            let said = format!("{} says {}", req.zone, req.request);
            req.reply.ok(said).await;
        }
    });
    b.mesh.publish_user(UserName::parse("bob").unwrap()).await;
    let bob = Address::parse("bob@b").unwrap();
    until("bob@b resolvable from c", || async { c.mesh.resolve(&bob).await.is_ok() }).await;
    let (peer, said) = c.mesh.send::<Echo>(&bob, None, &"hi".to_string()).await.unwrap();
    assert_eq!((peer, said.as_str()), (b.mesh.peer_id(), "c says hi"));

    let refused = |r: Result<String, RouteError>| match r {
        Err(RouteError::Refused { code, .. }) => Some(code),
        _ => None,
    };
    // Only a does not run echo.
    let to_a = c.mesh.send_to::<Echo>(a.mesh.peer_id(), None, &"hi".to_string()).await;
    assert_eq!(refused(to_a), Some(Refusal::UnknownService));
    let big = "x".repeat(100);
    assert_eq!(refused(c.mesh.send_to::<Echo>(peer, None, &big).await), Some(Refusal::TooLarge));
    // A rogue speaking for b, whose claim b holds.
    let rogue = start("b", 34, vec![boot]).await;
    until("rogue sees the zone taken", || async {
        matches!(rogue.mesh.status().await.claim, ClaimState::Taken { .. })
    })
    .await;
    assert_eq!(refused(rogue.mesh.send_to::<Echo>(peer, None, &"hi".to_string()).await), Some(Refusal::Unauthorised));
    // Refused again at once: no lookup per request for a peer that keeps
    // naming a zone it does not hold.
    let lookups = b.mesh.status().await.lookups;
    for _ in 0..3 {
        let again = rogue.mesh.send_to::<Echo>(peer, None, &"hi".to_string()).await;
        assert_eq!(refused(again), Some(Refusal::Unauthorised));
    }
    assert_eq!(b.mesh.status().await.lookups, lookups, "the refusal was remembered");
    // c's burst of twice 5 per second is spent well within these 30.
    let mut limited = 0u64;
    for _ in 0..30 {
        limited += u64::from(
            refused(c.mesh.send_to::<Echo>(peer, None, &"hi".to_string()).await) == Some(Refusal::RateLimited),
        );
    }
    assert!(limited > 0, "no request of 30 was rate-limited");
    let counts = b.mesh.status().await.refused_requests;
    assert_eq!(counts.get(&Refusal::TooLarge), Some(&1));
    assert_eq!(counts.get(&Refusal::Unauthorised), Some(&4));
    assert_eq!(counts.get(&Refusal::RateLimited), Some(&limited));
    assert_eq!(a.mesh.status().await.refused_requests.get(&Refusal::UnknownService), Some(&1));
    server.abort();
}

/// A process that identified under a key, was asked for its claim and
/// went silent (a setup check's lookup-only mesh over QUIC, killed, say).
#[derive(libp2p::swarm::NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
struct Mute {
    identify: libp2p::identify::Behaviour,
    kad: libp2p::kad::Behaviour<libp2p::kad::store::MemoryStore>,
    claim: libp2p::request_response::json::Behaviour<dht::behaviour::ClaimAsk, dht::behaviour::ClaimShown>,
}

/// Starts [`Mute`] under key `[seed; 32]`, dialling `to`; resolves once
/// it has been asked for its claim (the question it never answers).
async fn mute_peer(seed: u8, to: Multiaddr) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    use libp2p::{identify, identity, kad, request_response};
    let key = identity::Keypair::ed25519_from_bytes([seed; 32]).unwrap();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(Default::default(), libp2p::noise::Config::new, libp2p::yamux::Config::default)
        .unwrap()
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(
                peer,
                kad::store::MemoryStore::new(peer),
                kad::Config::new(dht::behaviour::KAD_PROTOCOL),
            );
            kad.set_mode(Some(kad::Mode::Server));
            Mute {
                identify: identify::Behaviour::new(identify::Config::new(
                    dht::behaviour::IDENTIFY_VERSION.into(),
                    key.public(),
                )),
                kad,
                claim: request_response::json::Behaviour::new(
                    [(dht::behaviour::CLAIM_PROTOCOL, request_response::ProtocolSupport::Full)],
                    request_response::Config::default(),
                ),
            }
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    swarm.dial(to).unwrap();
    let (asked_tx, asked) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut asked_tx = Some(asked_tx);
        let mut unanswered = Vec::new();
        loop {
            if let SwarmEvent::Behaviour(MuteEvent::Claim(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            })) = swarm.select_next_some().await
            {
                unanswered.push(channel);
                if let Some(tx) = asked_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), asked).await.unwrap().unwrap();
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_back_in_a_new_process_is_admitted_while_its_old_connection_hangs() {
    // The first zone of a mesh, with a user, and a long question timeout
    // (the old connection hangs that long).
    let a = start_with("a", 1, MeshConfig { request_timeout: Duration::from_secs(8), ..config(vec![]) }).await;
    a.mesh.publish_user(UserName::parse("alice").unwrap()).await;
    let boot = addr_of(&a).await;
    let mute = mute_peer(2, boot.clone()).await;
    // The same key, a real node now, given a's address.
    let b = start("b", 2, vec![boot]).await;
    let alice = Address::parse("alice@a").unwrap();
    until("b resolves alice@a", || async { b.mesh.resolve(&alice).await.is_ok() }).await;
    until("a admits b to its routing table", || async { a.mesh.status().await.routing_table == 1 }).await;
    until("a's claim reaches the mesh", || async { a.mesh.status().await.published_at_ms.is_some() }).await;
    mute.abort();
}
