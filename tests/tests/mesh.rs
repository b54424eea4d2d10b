//! The mesh across real processes: five zone nodes on loopback joined from
//! one bootstrap address call each other; a rogue node's forged records are
//! refused; nodes that cannot dial each other talk through a relay.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dht::record::user_key;
use dht::{MeshRecord, RouteError};
use serde_json::Value;
use signalling::service::{CallService, Refusal};
use signalling::{Address, CallId, EndReason, HistoryKind, NodeToClient, NodeToNode, Outcome, Signal};
use xarxa_tests::rogue::{forged_claim, forged_user, rogue_mesh};
use xarxa_tests::{xarxa_bin, Device, Node, User, AUDIO, WAIT};

/// Settings every mesh node in these tests runs with.
const MESH_ENV: [(&str, &str); 3] =
    [("XARXA_TIMEOUTS__RING", "3s"), ("XARXA_TIMEOUTS__GRACE", "1s"), ("XARXA_MESH__REPUBLISH", "2s")];

fn start(zone: &str, bootstrap: &[&Node], extra: &[(&str, &str)]) -> Result<Node> {
    let boots: Vec<String> = bootstrap.iter().flat_map(|n| n.info().mesh.clone()).map(|a| format!("\"{a}\"")).collect();
    let boot_env = format!("[{}]", boots.join(","));
    let mut env: Vec<(&str, &str)> = MESH_ENV.to_vec();
    if !bootstrap.is_empty() {
        env.push(("XARXA_MESH__BOOTSTRAP", &boot_env));
    }
    env.extend_from_slice(extra);
    Node::start(zone, &env)
}

/// `xarxa mesh status` of a running node, through its admin socket.
fn mesh_status(node: &Node) -> Result<Value> {
    mesh_status_in(node.data_dir())
}

fn mesh_status_in(data: &Path) -> Result<Value> {
    let out = Command::new(xarxa_bin()?).args(["mesh", "status", "--data"]).arg(data).output()?;
    if !out.status.success() {
        bail!("mesh status failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `xarxa mesh ARGS…` against a running node.
fn mesh_admin(node: &Node, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(xarxa_bin()?).arg("mesh").args(args).arg("--data").arg(node.data_dir()).output()?)
}

fn rejected(node: &Node, what: &str) -> u64 {
    mesh_status(node).ok().and_then(|s| s["rejected"][what].as_u64()).unwrap_or(0)
}

/// Calls `to` until the mesh knows the way (records still propagating at
/// start-up give unknown zone / unknown user for a moment), then returns
/// the ringing call.
async fn call_when_reachable(caller: &mut Device, to: &str) -> Result<CallId> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let call = caller.call_with(to, AUDIO).await?;
        let what = format!("ringing or ended for {}", call.0);
        let ev = caller
            .expect_event(
                &what,
                WAIT,
                |e| matches!(e, NodeToClient::Ringing { call: c } | NodeToClient::Ended { call: c, .. } if *c == call),
            )
            .await?;
        match ev {
            NodeToClient::Ringing { .. } => return Ok(call),
            NodeToClient::Ended {
                reason: EndReason::UnknownZone | EndReason::UnknownUser | EndReason::UnreachableZone,
                ..
            } if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            other => bail!("calling {to}: {other:?}"),
        }
    }
}

/// A whole call: ring, accept, an offer and an answer relayed, hang-up by
/// the callee, and history on both sides.
async fn full_call(a: (&Node, &User, &mut Device), b: (&Node, &User, &mut Device)) -> Result<()> {
    let (an, au, ad) = a;
    let (bn, bu, bd) = b;
    let call = call_when_reachable(ad, &bu.address).await?;
    bd.expect_incoming(&call, &au.address, WAIT).await?;
    bd.accept(&call).await?;
    ad.expect_accepted(&call, WAIT).await?;
    ad.signal(&call, Signal::Offer { sdp: "v=0 offer".into() }).await?;
    assert_eq!(bd.expect_signal(&call, WAIT).await?, Signal::Offer { sdp: "v=0 offer".into() });
    bd.signal(&call, Signal::Answer { sdp: "v=0 answer".into() }).await?;
    assert_eq!(ad.expect_signal(&call, WAIT).await?, Signal::Answer { sdp: "v=0 answer".into() });
    bd.hangup(&call).await?;
    ad.expect_ended(&call, EndReason::HungUp, WAIT).await?;
    let sent = an.history_entry(&au.token, &call, WAIT).await?;
    assert_eq!(
        (sent.kind, sent.peer.to_string(), sent.outcome),
        (HistoryKind::Sent, bu.address.clone(), Outcome::HungUpByCallee)
    );
    let got = bn.history_entry(&bu.token, &call, WAIT).await?;
    assert_eq!((got.kind, got.peer.to_string()), (HistoryKind::Received, au.address.clone()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_zones_call_each_other_and_outlive_the_bootstrap() -> Result<()> {
    let n0 = start("z0", &[], &[])?;
    let n1 = start("z1", &[&n0], &[])?;
    let mut nodes = vec![n0, n1];
    for i in 2..5 {
        let n = start(&format!("z{i}"), &[&nodes[0], &nodes[1]], &[])?;
        nodes.push(n);
    }
    for n in &nodes {
        let listed = &n.info().mesh;
        let once: std::collections::HashSet<&String> = listed.iter().collect();
        assert_eq!(once.len(), listed.len(), "node.json lists each mesh address once: {listed:?}");
    }
    let mut users = Vec::new();
    let mut devices = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let u = n.user(&format!("u{i}")).await?;
        devices.push(n.device(&u.token, &format!("u{i}")).await?);
        users.push(u);
    }

    // Every ordered pair of zones.
    for i in 0..5 {
        for j in 0..5 {
            if i == j {
                continue;
            }
            let (lo, hi) = devices.split_at_mut(i.max(j));
            let (di, dj) = if i < j { (&mut lo[i], &mut hi[0]) } else { (&mut hi[0], &mut lo[j]) };
            full_call((&nodes[i], &users[i], di), (&nodes[j], &users[j], dj))
                .await
                .with_context(|| format!("call z{i} -> z{j}"))?;
        }
    }

    // Every outcome across zones, z1 calling z2.
    let (n1, n2) = (&nodes[1], &nodes[2]);
    let u1 = users[1].clone();
    let u2 = users[2].clone();
    let mut d1 = n1.device(&u1.token, "u1-b").await?;
    let mut d2a = n2.device(&u2.token, "u2-a").await?;
    let mut d2b = n2.device(&u2.token, "u2-b").await?;
    // Ring-all and first-accept-wins (u2 now has three devices).
    let call = call_when_reachable(&mut d1, &u2.address).await?;
    for d in [&mut devices[2], &mut d2a, &mut d2b] {
        d.expect_incoming(&call, &u1.address, WAIT).await?;
    }
    d2b.accept(&call).await?;
    d1.expect_accepted(&call, WAIT).await?;
    devices[2].expect_ended(&call, EndReason::AnsweredElsewhere, WAIT).await?;
    d2a.expect_ended(&call, EndReason::AnsweredElsewhere, WAIT).await?;
    // Busy: u3 calls u2 while u2 talks to u1; u2 gets the missed call.
    let call_busy = devices[3].call_with(&u2.address, AUDIO).await?;
    devices[3].expect_ended(&call_busy, EndReason::Busy, WAIT).await?;
    d2a.expect_missed_call(&call_busy, WAIT).await?;
    // Hang-up from the caller's side.
    d1.hangup(&call).await?;
    d2b.expect_ended(&call, EndReason::HungUp, WAIT).await?;
    // Reject by every device: declined.
    let call = d1.call_with(&u2.address, AUDIO).await?;
    for d in [&mut devices[2], &mut d2a, &mut d2b] {
        d.expect_incoming(&call, &u1.address, WAIT).await?;
        d.reject(&call).await?;
    }
    d1.expect_ended(&call, EndReason::Declined, WAIT).await?;
    // Cancel while ringing.
    let call = d1.call_with(&u2.address, AUDIO).await?;
    d2a.expect_incoming(&call, &u1.address, WAIT).await?;
    d1.hangup(&call).await?;
    for d in [&mut devices[2], &mut d2a, &mut d2b] {
        d.expect_ended(&call, EndReason::Cancelled, WAIT).await?;
    }
    n2.notice_for(&u2.token, &call, WAIT).await?;
    // No answer within the ring timeout.
    let call = d1.call_with(&u2.address, AUDIO).await?;
    d1.expect_ended(&call, EndReason::NoAnswer, WAIT).await?;
    d2b.expect_ended(&call, EndReason::NoAnswer, WAIT).await?;
    let missed = n2.history_entry(&u2.token, &call, WAIT).await?;
    assert_eq!((missed.kind, missed.outcome), (HistoryKind::Missed, Outcome::NoAnswer));
    let sent = n1.history_entry(&u1.token, &call, WAIT).await?;
    assert_eq!((sent.kind, sent.outcome), (HistoryKind::Sent, Outcome::NoAnswer));
    // Offline: a user of z2 with no device; the notice waits for them.
    let ghost = n2.user("ghost").await?;
    let call = d1.call_with(&ghost.address, AUDIO).await?;
    d1.expect_ended(&call, EndReason::Offline, WAIT).await?;
    let mut gd = n2.device(&ghost.token, "ghost").await?;
    gd.expect_missed_call(&call, WAIT).await?;
    // Unknown user, unknown zone.
    let call = d1.call_with("nobody@z2", AUDIO).await?;
    d1.expect_ended(&call, EndReason::UnknownUser, WAIT).await?;
    let call = d1.call_with("someone@nowhere", AUDIO).await?;
    d1.expect_ended(&call, EndReason::UnknownZone, WAIT).await?;

    // `xarxa mesh ping`: the node service of another zone answers, with
    // its clock; a zone nobody holds is said to be so.
    let ping = mesh_admin(&nodes[1], &["ping", "z3"])?;
    let pong: Value = serde_json::from_slice(&ping.stdout)?;
    assert!(ping.status.success(), "mesh ping failed: {}", String::from_utf8_lossy(&ping.stderr));
    assert_eq!(pong["zone"], "z3");
    assert_eq!(pong["peer_id"].as_str(), nodes[3].info().peer_id.as_deref());
    assert!(pong["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{pong}");
    assert!(pong["clock_offset_ms"].as_f64().is_some_and(|ms| ms.abs() < 1000.0), "one machine's clock: {pong}");
    let nowhere = mesh_admin(&nodes[1], &["ping", "nowhere"])?;
    assert!(!nowhere.status.success() && String::from_utf8_lossy(&nowhere.stderr).contains("no node holds zone"));

    // The bootstrap node dies: the others still call each other, and a
    // call to its zone is "unreachable zone".
    nodes[0].kill9()?;
    let (lo, hi) = devices.split_at_mut(3);
    full_call((&nodes[1], &users[1], &mut lo[1]), (&nodes[3], &users[3], &mut hi[0]))
        .await
        .context("z1 -> z3 without z0")?;
    full_call((&nodes[4], &users[4], &mut hi[1]), (&nodes[2], &users[2], &mut lo[2]))
        .await
        .context("z4 -> z2 without z0")?;
    let call = devices[1].call_with(&users[0].address, AUDIO).await?;
    devices[1].expect_ended(&call, EndReason::UnreachableZone, Duration::from_secs(30)).await?;

    // A node restarts: its records are still in its store, and it is found again.
    drop(devices.pop());
    nodes[4].stop()?;
    nodes[4].start_again()?;
    let stored = mesh_status(&nodes[4])?["stored_records"].as_u64().unwrap_or(0);
    assert!(stored > 0, "records persisted across the restart");
    let mut d4 = nodes[4].device(&users[4].token, "u4-again").await?;
    let (lo, _) = devices.split_at_mut(2);
    full_call((&nodes[1], &users[1], &mut lo[1]), (&nodes[4], &users[4], &mut d4))
        .await
        .context("z1 -> restarted z4")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rogue_records_are_refused_and_calls_reach_the_real_user() -> Result<()> {
    let n0 = start("r0", &[], &[])?;
    let n1 = start("r1", &[&n0], &[])?;
    let n2 = start("r2", &[&n0], &[])?;
    let bob = n1.user("bob").await?;
    let alice = n2.user("alice").await?;
    let mut bd = n1.device(&bob.token, "bob").await?;
    let mut ad = n2.device(&alice.token, "alice").await?;
    full_call((&n2, &alice, &mut ad), (&n1, &bob, &mut bd)).await?;

    // The rogue: same crates, its own key, wants zone r1 and bob.
    let (rogue, rogue_key, _dir) = rogue_mesh(0x66, "r1", &n0).await?;
    let bob_addr = Address::parse(&bob.address)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let forged_claim = forged_claim(&rogue_key, "r1")?;
    // (a) claim the taken zone.
    let _ = rogue.put_raw(&MeshRecord::Zone(forged_claim.clone())).await;
    // (b) a record for bob@r1 pointing at the rogue.
    let planted = forged_user(&rogue_key, &bob_addr, forged_claim);
    let _ = rogue.put_raw(&MeshRecord::User(planted)).await;
    // (c) replay bob's real record once a newer one is out.
    let old =
        rogue.get_raw(user_key(&bob_addr)).await.into_iter().min_by_key(MeshRecord::seq).context("bob's record")?;
    let real = old.node().to_string();
    loop {
        let records = rogue.get_raw(user_key(&bob_addr)).await;
        let newest = records.iter().filter(|r| r.node() == real).map(MeshRecord::seq).max().unwrap_or(0);
        if newest > old.seq() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline + Duration::from_secs(20), "bob's record was never renewed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let _ = rogue.put_raw(&old).await;
    // (d) speak for bob's zone on the mesh: invite alice as bob@r1. Her
    // node's service layer refuses it (the rogue does not hold r1's
    // claim) before the calls service sees it: nothing rings.
    let spoof = NodeToNode::Invite {
        call: CallId("spoofed".into()),
        from: bob_addr.clone(),
        to: Address::parse(&alice.address)?,
        media: AUDIO,
    };
    let got = rogue.send::<CallService>(&Address::parse(&alice.address)?, Some(&bob_addr.name), &spoof).await;
    assert!(
        matches!(got, Err(RouteError::Refused { code: Refusal::Unauthorised, .. })),
        "the spoofed invite was not refused as unauthorised: {got:?}"
    );
    assert_eq!(mesh_status(&n2)?["refused_requests"]["unauthorised"].as_u64(), Some(1));
    ad.expect_no_event_matching("a spoofed call", Duration::from_millis(500), |ev| {
        matches!(ev, NodeToClient::Incoming { .. })
    })
    .await?;

    let honest = [&n0, &n1, &n2];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sum = |what| honest.iter().map(|n| rejected(n, what)).sum::<u64>();
        let (taken, wrong, replayed) = (sum("zone_taken"), sum("wrong_zone_key"), sum("replayed"));
        if taken > 0 && wrong > 0 && replayed > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rejections not counted: zone_taken {taken}, wrong_zone_key {wrong}, replayed {replayed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The real bob still gets the call, from a node that never cached him.
    let n3 = start("r3", &[&n0], &[])?;
    let carol = n3.user("carol").await?;
    let mut cd = n3.device(&carol.token, "carol").await?;
    full_call((&n3, &carol, &mut cd), (&n1, &bob, &mut bd)).await?;
    full_call((&n2, &alice, &mut ad), (&n1, &bob, &mut bd)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_cannot_dial_each_other_call_through_a_relay() -> Result<()> {
    // A fixed port, so that the relay comes back where the others dial it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let relay_listen = format!("[\"/ip4/127.0.0.1/tcp/{port}\"]");
    let mut relay = start("relay", &[], &[("XARXA_MESH__LISTEN", relay_listen.as_str())])?;
    let relay_addr = relay.info().mesh.first().context("relay address")?.clone();
    let via = format!("[\"{relay_addr}\"]");
    // Neither listens anywhere: each only dials out to the relay.
    let behind = [("XARXA_MESH__LISTEN", "[]"), ("XARXA_MESH__RELAYS", via.as_str())];
    let x = start("natx", &[&relay], &behind)?;
    let y = start("naty", &[&relay], &behind)?;
    for n in [&x, &y] {
        let listen: Vec<String> =
            serde_json::from_value(mesh_status(n)?["listen"].clone()).context("listen addresses")?;
        assert!(listen.iter().all(|a| a.contains("/p2p-circuit")), "{} listens directly: {listen:?}", n.zone());
    }
    let xu = x.user("xena").await?;
    let yu = y.user("yuri").await?;
    let mut xd = x.device(&xu.token, "xena").await?;
    let mut yd = y.device(&yu.token, "yuri").await?;
    full_call((&y, &yu, &mut yd), (&x, &xu, &mut xd)).await?;
    full_call((&x, &xu, &mut xd), (&y, &yu, &mut yd)).await?;
    let x_peer = x.info().peer_id.clone().context("x peer id")?;
    let relayed: Vec<String> = serde_json::from_value(mesh_status(&y)?["relayed_peers"].clone())?;
    assert!(relayed.contains(&x_peer), "y reaches x only through the relay: {relayed:?}");

    // The relay goes away and comes back: both dial it again, listen
    // through it again, and call each other again.
    relay.stop()?;
    relay.start_again()?;
    let call = call_when_reachable(&mut xd, &yu.address).await.context("x -> y after the relay came back")?;
    yd.expect_incoming(&call, &xu.address, WAIT).await?;
    xd.hangup(&call).await?;
    yd.expect_ended(&call, EndReason::Cancelled, WAIT).await?;
    Ok(())
}
