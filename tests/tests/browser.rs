//! The web client in real headless Chromium (Debian's, driven by
//! playwright-core from tests/browser/), against real nodes: two people call
//! with audio and video, media flows both ways (asserted from getStats),
//! chat crosses the data channel, hang-up ends both sides, history shows the
//! call; the same across two zones of a mesh; a callee with three tabs;
//! and contacts with live presence across two zones, a call started from
//! the contact list (`contacts.mjs`). Screenshots land in
//! artifacts/browser/.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use signalling::{EndReason, NodeToClient};
use xarxa_tests::{Node, AUDIO, PASSWORD, WAIT};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// Runs the browser scenario; returns its measurements.
fn run_browsers(scenario: &str, caller: (&Node, &str), callee: (&Node, &str), ice: &str) -> Result<Value> {
    let artifacts = workspace().join("artifacts/browser").join(scenario);
    let cfg = json!({
        "scenario": if scenario == "tabs" { "tabs" } else { "call" },
        "caller": who(caller.0, caller.1),
        "callee": who(callee.0, callee.1),
        "ice": ice,
        "artifacts": artifacts,
    });
    let v = run_script("call.mjs", &cfg)?;
    for shot in ["in-call.png", "history.png"] {
        assert!(artifacts.join(shot).exists(), "screenshot {shot} saved");
    }
    Ok(v)
}

fn who(n: &Node, name: &str) -> Value {
    json!({"url": format!("https://{}", n.addr()), "name": name, "password": PASSWORD, "address": n.address(name)})
}

/// Runs `script` of tests/browser with `cfg`; returns its result line.
fn run_script(script: &str, cfg: &Value) -> Result<Value> {
    let dir = workspace().join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !PathBuf::from(&chromium).exists() {
        bail!("Chromium is not installed at {chromium}: run ./.ci/run (it installs Debian's chromium), or apt-get install chromium");
    }
    if !dir.join("node_modules/playwright-core").exists() {
        let st = Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir).status()?;
        if !st.success() {
            bail!("npm ci in tests/browser failed");
        }
    }
    let out = Command::new("node")
        .arg(script)
        .current_dir(&dir)
        .env("XARXA_BROWSER_TEST", cfg.to_string())
        .env("CHROMIUM", &chromium)
        .output()
        .context("running node")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("browser scenario {script} failed:\n{}\n{}", stdout, String::from_utf8_lossy(&out.stderr));
    }
    let line = stdout.lines().last().context("no result line")?;
    Ok(serde_json::from_str(line)?)
}

fn assert_media(v: &Value) {
    for side in ["caller", "callee"] {
        let s = &v[side];
        assert!(s["audio"].as_u64().unwrap_or(0) > 0, "{side} received audio: {v}");
        assert!(s["video"].as_u64().unwrap_or(0) > 0, "{side} received video: {v}");
        assert!(s["frames"].as_u64().unwrap_or(0) > 0, "{side} decoded frames: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browsers_call_with_audio_video_and_chat() -> Result<()> {
    let node = Node::start("gracia", &[])?;
    node.register("anna", PASSWORD).await?;
    node.register("biel", PASSWORD).await?;
    let v = tokio::task::spawn_blocking(move || {
        let r = run_browsers("call", (&node, "anna"), (&node, "biel"), "loopback");
        drop(node);
        r
    })
    .await??;
    assert_media(&v);
    assert_media_stays_on_this_machine(&v);
    Ok(())
}

/// Only 127.0.0.1 candidates are signalled (`?ice=loopback`), but
/// Chromium also sends checks from its other interfaces' sockets (the
/// kernel routes them to 127.0.0.1 anyway), so either side may end up on a
/// peer-reflexive remote whose address Chromium hides. What must hold: each
/// side's local candidate is shown and belongs to this machine, a remote is
/// either shown and local too or hidden and peer-reflexive (then it is the
/// other side's own socket, also of this machine) — so no media leaves it.
fn assert_media_stays_on_this_machine(v: &Value) {
    for side in ["caller", "callee"] {
        for field in ["localAddress", "remoteAddress"] {
            let addr = v[side][field].as_str().unwrap_or_default();
            if addr.is_empty() {
                assert_eq!(field, "remoteAddress", "{side}'s local address is shown: {v}");
                assert_eq!(
                    v[side]["remoteType"].as_str(),
                    Some("prflx"),
                    "only a peer-reflexive address is hidden: {v}"
                );
                continue;
            }
            let ip: std::net::IpAddr = addr.parse().unwrap_or_else(|_| panic!("{side} {field} is an IP: {v}"));
            // Binding succeeds only for loopback and this machine's own addresses.
            let local = ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok();
            assert!(local, "{side} {field} {ip} belongs to this machine: {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_goes_through_the_nodes_turn_relay() -> Result<()> {
    // Both browsers may only use relay candidates; on one machine the relay
    // must reach loopback peers (the other browser's relayed address).
    let node = Node::start("poble-sec", &[("XARXA_TURN__ALLOW_LOOPBACK_PEERS", "true")])?;
    node.register("gina", PASSWORD).await?;
    node.register("hugo", PASSWORD).await?;
    let v = tokio::task::spawn_blocking(move || {
        let r = run_browsers("relay", (&node, "gina"), (&node, "hugo"), "relay");
        drop(node);
        r
    })
    .await??;
    assert_media(&v);
    for side in ["caller", "callee"] {
        assert_eq!(v[side]["localType"].as_str(), Some("relay"), "{side} sent through TURN: {v}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tabs_ring_and_one_answers() -> Result<()> {
    let node = Node::start("sants", &[])?;
    node.register("carla", PASSWORD).await?;
    node.register("dani", PASSWORD).await?;
    let v = tokio::task::spawn_blocking(move || {
        let r = run_browsers("tabs", (&node, "carla"), (&node, "dani"), "loopback");
        drop(node);
        r
    })
    .await??;
    assert_eq!(v["tabs"].as_u64(), Some(3));
    assert_media(&v);
    assert_media_stays_on_this_machine(&v);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_on_two_zones_call_across_the_mesh() -> Result<()> {
    let env = [("XARXA_MESH__REPUBLISH", "2s")];
    let a = Node::start("horta", &env)?;
    let boot = format!("[\"{}\"]", a.info().mesh.first().context("mesh address")?);
    let b = Node::start("clot", &[("XARXA_MESH__REPUBLISH", "2s"), ("XARXA_MESH__BOOTSTRAP", boot.as_str())])?;
    a.register("emma", PASSWORD).await?;
    b.register("ferran", PASSWORD).await?;
    // Wait until horta can reach clot's users through the mesh (ferran
    // has no device yet, so clot answers "offline").
    let probe = a.user("probe").await?;
    let mut d = a.device(&probe.token, "probe").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let call = d.call_with(&b.address("ferran"), AUDIO).await?;
        let ev = d
            .expect_event(
                "ringing or ended",
                WAIT,
                |e| matches!(e, NodeToClient::Ringing { call: c } | NodeToClient::Ended { call: c, .. } if *c == call),
            )
            .await?;
        match ev {
            // Offline: clot answered for ferran, who has no device yet.
            NodeToClient::Ended { reason: EndReason::Offline, .. } => break,
            NodeToClient::Ended {
                reason: EndReason::UnknownZone | EndReason::UnknownUser | EndReason::UnreachableZone,
                ..
            } if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(300)).await,
            other => bail!("mesh not ready: {other:?}"),
        }
    }
    let v = tokio::task::spawn_blocking(move || {
        let r = run_browsers("mesh", (&a, "emma"), (&b, "ferran"), "loopback");
        drop((a, b));
        r
    })
    .await??;
    assert_media(&v);
    assert_media_stays_on_this_machine(&v);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_and_presence_in_browsers_on_two_zones() -> Result<()> {
    let env = [("XARXA_MESH__REPUBLISH", "2s"), ("XARXA_TIMEOUTS__PRESENCE_SYNC", "5s")];
    let a = Node::start("gracia", &env)?;
    let boot = format!("[\"{}\"]", a.info().mesh.first().context("mesh address")?);
    let b = Node::start("sants", &[env[0], env[1], ("XARXA_MESH__BOOTSTRAP", boot.as_str())])?;
    a.register("alba", PASSWORD).await?;
    b.register("bru", PASSWORD).await?;
    // Wait until gracia reaches sants' users: two probes become contacts.
    let probe = a.user("probe").await?;
    b.register("probe2", PASSWORD).await?;
    a.ask_contact_when_reachable(&probe.token, &b.address("probe2")).await?;
    let artifacts = workspace().join("artifacts/browser/contacts");
    let cfg = json!({ "caller": who(&a, "alba"), "callee": who(&b, "bru"), "artifacts": artifacts });
    tokio::task::spawn_blocking(move || {
        let r = run_script("contacts.mjs", &cfg);
        drop((a, b));
        r
    })
    .await??;
    for shot in ["contacts.png", "contacts-request.png", "contacts-phone.png"] {
        assert!(artifacts.join(shot).exists(), "screenshot {shot} saved");
    }
    Ok(())
}
