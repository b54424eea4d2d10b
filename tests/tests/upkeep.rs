//! Keeping a node for years: a backup taken while a call runs, restored
//! into a new data directory, every account, session and history entry
//! there and the zone back in the mesh; a database of the previous schema
//! migrated with a backup left beside it, a newer one refused; and the
//! zone handed to a new key, which the mesh then routes calls to while it
//! refuses the old key's claims.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use dht::MeshRecord;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use signalling::EndReason;
use xarxa_tests::node::cli;
use xarxa_tests::rogue::forged_claim;
use xarxa_tests::{connect_call, Node, WAIT};

/// Short ring and republish times, and a short route cache, so a moved
/// zone is looked up again soon.
const ENV: [(&str, &str); 4] = [
    ("XARXA_TIMEOUTS__RING", "5s"),
    ("XARXA_TIMEOUTS__GRACE", "1s"),
    ("XARXA_MESH__REPUBLISH", "2s"),
    ("XARXA_MESH__CACHE_TTL", "1s"),
];

fn with_bootstrap(boot: &Node) -> (Vec<(&'static str, String)>, String) {
    let boots = format!("[{}]", boot.info().mesh.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(","));
    (ENV.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(), boots)
}

fn env_of<'a>(base: &'a [(&'static str, String)], boots: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut env: Vec<(&str, &str)> = base.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("XARXA_MESH__BOOTSTRAP", boots));
    env
}

/// `xarxa ARGS` that must succeed; its stdout.
fn ok(out: std::process::Output, what: &str) -> Result<String> {
    if !out.status.success() {
        bail!("{what} failed: {}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Names in `xarxa user list`.
fn user_names(node: &Node) -> Result<Vec<String>> {
    let out: serde_json::Value = serde_json::from_str(&ok(node.cli(&["user", "list"])?, "user list")?)?;
    Ok(out["users"].as_array().context("users")?.iter().filter_map(|u| u["name"].as_str().map(str::to_owned)).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_a_call_restores_into_a_new_data_directory() -> Result<()> {
    let peer = Node::start("bk0", &ENV)?;
    let (base, boots) = with_bootstrap(&peer);
    let mut home = Node::start("bk1", &env_of(&base, &boots))?;
    let users = home.users("u", &["alice", "bob", "carol"]).await?;
    let (alice, bob, carol) = (&users[0], &users[1], &users[2]);
    let dave = peer.user("dave").await?;
    // Two calls in the history, a third running while the backup is taken.
    let mut ad = home.device(&alice.token, "alice").await?;
    let mut bd = home.device(&bob.token, "bob").await?;
    for _ in 0..2 {
        let call = connect_call(&mut ad, &mut bd, &bob.address).await?;
        ad.hangup(&call).await?;
        bd.expect_ended(&call, EndReason::HungUp, WAIT).await?;
        home.history_entry(&alice.token, &call, WAIT).await?;
        home.history_entry(&bob.token, &call, WAIT).await?;
    }
    let running = connect_call(&mut ad, &mut bd, &bob.address).await?;
    let histories = [home.history(&alice.token).await?, home.history(&bob.token).await?];
    let file = home.root().join("home.xarxa-backup");
    let out = ok(home.cli(&["backup", file.to_str().context("path")?])?, "backup")?;
    let summary: serde_json::Value = serde_json::from_str(&out)?;
    assert!(summary["summary"]["trees"].to_string().contains("history"), "{summary}");
    // The call went on through the backup.
    ad.ping().await?;
    bd.ping().await?;
    ad.hangup(&running).await?;
    bd.expect_ended(&running, EndReason::HungUp, WAIT).await?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file)?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a backup holds the node key: only its owner may read it");
    }
    // A second backup to the same name is refused, not overwritten.
    assert!(!home.cli(&["backup", file.to_str().context("path")?])?.status.success());
    let names = user_names(&home)?;
    home.stop()?;
    drop((ad, bd));

    let restored = Node::start_with("bk1", &env_of(&base, &boots), |data| {
        ok(cli(data, "bk1", &["restore", file.to_str().context("path")?])?, "restore")?;
        Ok(())
    })?;
    assert_eq!(user_names(&restored)?, names, "every account");
    // Every session: the old tokens open the restored node, and the
    // history is what it was when the backup was taken.
    for (user, before) in [(alice, &histories[0]), (bob, &histories[1])] {
        assert_eq!(&restored.history(&user.token).await?, before, "{}'s history", user.name);
    }
    restored.device(&carol.token, "carol").await?;
    // The restored node is the zone again: a call from the other zone
    // reaches alice there.
    let mut dd = peer.device(&dave.token, "dave").await?;
    let mut ad = restored.device(&alice.token, "alice").await?;
    let call = dd.call_until_ringing(&alice.address, Duration::from_secs(40)).await?;
    ad.expect_incoming(&call, &dave.address, WAIT).await?;
    let status: serde_json::Value = serde_json::from_str(&ok(restored.cli(&["mesh", "status"])?, "mesh status")?)?;
    assert_eq!(status["claim"], "held", "{status}");
    // Restoring into a running node's data directory is refused.
    let again = restored.cli(&["restore", file.to_str().context("path")?])?;
    assert!(!again.status.success());
    Ok(())
}

/// Rewrites a stopped node's database into schema 1's form: version 1, and
/// no id counter in `meta` (schema 1 took ids from sled's generator).
fn make_schema_1(data: &Path) -> Result<()> {
    let db = sled::open(data.join("db"))?;
    let meta = db.open_tree("meta")?;
    meta.insert("schema_version", &1u32.to_be_bytes())?;
    meta.remove("next_id")?;
    db.flush()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_schema_migrates_with_a_backup_and_a_newer_one_is_refused() -> Result<()> {
    let mut n = Node::start("up0", &ENV)?;
    let users = n.users("u", &["alice", "bob"]).await?;
    let (alice, bob) = (&users[0], &users[1]);
    let mut ad = n.device(&alice.token, "alice").await?;
    let mut bd = n.device(&bob.token, "bob").await?;
    let call = connect_call(&mut ad, &mut bd, &bob.address).await?;
    ad.hangup(&call).await?;
    bd.expect_ended(&call, EndReason::HungUp, WAIT).await?;
    n.history_entry(&alice.token, &call, WAIT).await?;
    let before = n.history(&alice.token).await?;
    n.stop()?;
    drop((ad, bd));

    make_schema_1(n.data_dir())?;
    n.start_again()?;
    let log = std::fs::read_to_string(n.log_path())?;
    ensure!(log.contains("database migrated"), "the log says so:\n{}", n.log_tail(20));
    let backups: Vec<_> = std::fs::read_dir(n.data_dir())?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with("db.before-schema-2.") && f.ends_with(".xarxa-backup"))
        .collect();
    assert_eq!(backups.len(), 1, "one backup beside the database: {backups:?}");
    // The backup beside it is a whole one, of schema 1: it restores.
    let beside = n.data_dir().join(&backups[0]);
    let copy = tempfile::tempdir()?;
    ok(cli(&copy.path().join("data"), "up0", &["restore", beside.to_str().context("path")?])?, "restore")?;

    // Everything is there, and the next entry's id does not clash.
    assert_eq!(n.history(&alice.token).await?, before);
    n.login(&bob.name, &bob.password).await?;
    let mut ad = n.device(&alice.token, "alice").await?;
    let mut bd = n.device(&bob.token, "bob").await?;
    let call = connect_call(&mut ad, &mut bd, &bob.address).await?;
    ad.hangup(&call).await?;
    bd.expect_ended(&call, EndReason::HungUp, WAIT).await?;
    let newest = n.history_entry(&alice.token, &call, WAIT).await?;
    let after = n.history(&alice.token).await?;
    assert_eq!(after.len(), before.len() + 1);
    assert!(before.iter().all(|e| e.id < newest.id), "ids go on past the old ones");
    n.stop()?;
    drop((ad, bd));

    // A database of a newer Xarxa is refused, with the reason.
    {
        let db = sled::open(n.data_dir().join("db"))?;
        db.open_tree("meta")?.insert("schema_version", &3u32.to_be_bytes())?;
        db.flush()?;
    }
    let refused = n.start_again().err().context("a newer schema must not open")?;
    assert!(format!("{refused:#}").contains("schema version 3, newer than this build's 2"), "{refused:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_handed_to_a_new_key_is_routed_there_and_the_old_key_is_retired() -> Result<()> {
    let observer = Node::start("kr0", &ENV)?;
    let (base, boots) = with_bootstrap(&observer);
    let mut old = Node::start("kr1", &env_of(&base, &boots))?;
    let bob = observer.user("bob").await?;
    let alice = old.user("alice").await?;
    let mut bd = observer.device(&bob.token, "bob").await?;
    {
        let mut ad = old.device(&alice.token, "alice").await?;
        let call = bd.call_until_ringing(&alice.address, Duration::from_secs(40)).await?;
        ad.expect_incoming(&call, &bob.address, WAIT).await?;
        bd.hangup(&call).await?;
    }
    let file = old.root().join("move.xarxa-backup");
    ok(old.cli(&["backup", file.to_str().context("path")?])?, "backup")?;
    // Handing over needs the old node stopped.
    let handover = old.root().join("handover.json");
    let h = handover.to_str().context("path")?;
    assert!(!old.cli(&["mesh", "hand-over", "--to", &"ab".repeat(32), "--out", h])?.status.success());
    old.stop()?;
    let old_key = ed25519_dalek::SigningKey::read_pkcs8_pem_file(old.data_dir().join("node.key"))
        .map_err(|e| anyhow::anyhow!("old node key: {e}"))?;

    // The new machine: its own key, the old node's accounts.
    let new = Node::start_with("kr1", &env_of(&base, &boots), |data| {
        let conf = data.parent().context("root")?.join("new.toml");
        let init =
            ok(cli(data, "kr1", &["--config", conf.to_str().context("path")?, "init", "--zone", "kr1"])?, "init")?;
        let key = init.split("node key ").nth(1).and_then(|s| s.split_whitespace().next()).context("init's key")?;
        ok(cli(data, "kr1", &["restore", "--without-node-key", file.to_str().context("path")?])?, "restore")?;
        ok(old.cli(&["mesh", "hand-over", "--to", key, "--out", h])?, "hand-over")?;
        ok(cli(data, "kr1", &["mesh", "take-over", h])?, "take-over")?;
        Ok(())
    })?;
    // The old node will not claim the zone again.
    let refused = old.start_again().err().context("the old node must not start under its zone")?;
    assert!(format!("{refused:#}").contains("handed zone kr1 over"), "{refused:#}");

    // Calls to the zone reach the new key, with alice's session restored.
    let mut ad = new.device(&alice.token, "alice").await?;
    let call = bd.call_until_ringing(&alice.address, Duration::from_secs(40)).await?;
    ad.expect_incoming(&call, &bob.address, WAIT).await?;
    bd.hangup(&call).await?;
    ad.expect_ended(&call, EndReason::Cancelled, WAIT).await?;

    // The old key renews its claim: the holders refuse it as retired.
    let (rogue, _, _dir) = xarxa_tests::rogue::rogue_mesh(0x52, "kr1", &observer).await?;
    let renewal = forged_claim(&old_key, "kr1")?;
    let retired = |s: &serde_json::Value| s["rejected"]["key_retired"].as_u64().unwrap_or(0);
    let status = |n: &Node| -> Result<serde_json::Value> {
        Ok(serde_json::from_str(&ok(n.cli(&["mesh", "status"])?, "mesh status")?)?)
    };
    let before = retired(&status(&observer)?) + retired(&status(&new)?);
    let _ = rogue.put_raw(&MeshRecord::Zone(renewal)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while retired(&status(&observer)?) + retired(&status(&new)?) <= before {
        assert!(tokio::time::Instant::now() < deadline, "the old key's renewal was not refused as retired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rogue.stop().await;
    let claim = observer.cli(&["mesh", "ping", "kr1"])?;
    let answer: serde_json::Value = serde_json::from_str(&ok(claim, "mesh ping")?)?;
    assert_eq!(answer["peer_id"], new.info().peer_id.clone().unwrap_or_default(), "{answer}");
    // And calls still go to the new key.
    let call = bd.call_until_ringing(&alice.address, Duration::from_secs(40)).await?;
    ad.expect_incoming(&call, &bob.address, WAIT).await?;
    Ok(())
}
