//! A rogue zone node: the project's own mesh crate under a key the test
//! chose, joined to real nodes, and the forged records it offers them; or
//! the node of a zone of its own whose requests overstep.

use std::time::Duration;

use anyhow::{bail, Result};
use dht::record::{node_hex, SignedUserRecord, SignedZoneClaim, UserRecord, ZoneClaim};
use dht::{ClaimState, Mesh, MeshConfig};
use ed25519_dalek::SigningKey;
use signalling::{Address, ZoneName};

use crate::{now_ms, Node};

/// A mesh node with key `[seed; 32]` that wants `zone`, joined through
/// `boot`; returned once it has seen that another node holds `zone`. The
/// directory holds its records; keep it as long as the mesh.
pub async fn rogue_mesh(seed: u8, zone: &str, boot: &Node) -> Result<(Mesh, SigningKey, tempfile::TempDir)> {
    rogue_until(seed, zone, boot, "see it taken", |c| matches!(c, ClaimState::Taken { .. })).await
}

/// A mesh node with key `[seed; 32]` wanting `zone`, joined through `boot`,
/// once its claim state passes `ready`.
async fn rogue_until(
    seed: u8,
    zone: &str,
    boot: &Node,
    what: &str,
    ready: impl Fn(&ClaimState) -> bool,
) -> Result<(Mesh, SigningKey, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let tree = sled::open(dir.path())?.open_tree("mesh")?;
    let key = SigningKey::from_bytes(&[seed; 32]);
    let config = MeshConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        bootstrap: boot.info().mesh.iter().map(|a| a.parse()).collect::<Result<_, _>>()?,
        mdns: false,
        ..MeshConfig::default()
    };
    let mesh = Mesh::start(key.clone(), tree, ZoneName::parse(zone)?, config).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !ready(&mesh.status().await.claim) {
        if tokio::time::Instant::now() > deadline {
            bail!("the rogue did not {what} ({zone}) within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((mesh, key, dir))
}

/// A mesh node with key `[seed; 32]` that holds a zone of its own, `zone`,
/// joined through `boot`: the node of a zone that misbehaves in the
/// services (not in the records). Returned once its claim is held.
pub async fn rogue_zone(seed: u8, zone: &str, boot: &Node) -> Result<(Mesh, SigningKey, tempfile::TempDir)> {
    rogue_until(seed, zone, boot, "hold it", |c| matches!(c, ClaimState::Held)).await
}

/// A claim of `zone` by `key`, with a sequence number far ahead of any
/// real one, valid for an hour.
pub fn forged_claim(key: &SigningKey, zone: &str) -> Result<SignedZoneClaim> {
    let now = now_ms();
    Ok(ZoneClaim {
        zone: ZoneName::parse(zone)?,
        node: node_hex(key),
        addrs: vec![],
        seq: now + 10_000_000,
        issued_at_ms: now,
        expires_at_ms: now + 3_600_000,
        first_claimed_at_ms: None,
        handover: None,
    }
    .sign(key))
}

/// A record saying `user` is at `key`'s node, resting on `claim`.
pub fn forged_user(key: &SigningKey, user: &Address, claim: SignedZoneClaim) -> SignedUserRecord {
    let now = now_ms();
    UserRecord {
        user: user.clone(),
        node: node_hex(key),
        addrs: vec![],
        seq: now + 10_000_000,
        issued_at_ms: now,
        expires_at_ms: now + 3_600_000,
    }
    .sign(key, claim)
}
