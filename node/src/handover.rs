//! Zone key rotation: handing a zone from this node's key to another.
//!
//! The old node signs a [`ZoneHandover`] naming the new key (`xarxa mesh
//! hand-over`), and from then on refuses to start: it must never claim the
//! zone again. The new node takes the file (`xarxa mesh take-over`), keeps
//! it in its data directory, and carries it in every claim it signs; other
//! nodes then accept its claims over the old key's, and refuse the old
//! key's from then on (see `dht::record`). Accounts, sessions and history
//! move with a backup restored `--without-node-key`.

use std::path::Path;

use dht::record::{node_hex, SignedZoneHandover, ZoneHandover};
use dht::MeshRecord;
use signalling::ZoneName;

use crate::identity::write_private;
use crate::services::accounts::now_ms;
use crate::store::Store;

/// In the new node's data directory: the hand-over its key took the zone by.
pub const TAKEN_FILE: &str = "handover.json";
/// In the old node's data directory: the hand-over it signed, which keeps
/// it from starting again under the zone.
pub const GIVEN_FILE: &str = "handed-over.json";

/// Why a hand-over could not be made, taken or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandoverError {
    /// The file is not a valid hand-over for this node.
    #[error("hand-over: {0}")]
    Invalid(String),
    /// This node gave its zone away.
    #[error(
        "this node handed zone {zone} over to key {to} ({file}); it must not claim the zone again. \
         Run it under another zone, or remove {file} only if that hand-over was never used"
    )]
    GivenAway {
        /// The zone.
        zone: String,
        /// The key it went to.
        to: String,
        /// The file that says so.
        file: String,
    },
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The node key.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The database.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> HandoverError {
    move |source| HandoverError::Io { what, source }
}

fn read(path: &Path) -> Result<SignedZoneHandover, HandoverError> {
    let text = std::fs::read(path).map_err(io(format!("reading {}", path.display())))?;
    let h: SignedZoneHandover =
        serde_json::from_slice(&text).map_err(|e| HandoverError::Invalid(format!("{}: {e}", path.display())))?;
    h.verify().map_err(|e| HandoverError::Invalid(format!("{}: {e}", path.display())))?;
    Ok(h)
}

/// Signs the hand-over of `zone` from the key in `data_dir` to `to` (hex),
/// writes it to `out` and beside the key (so this node will not start under
/// the zone again). The node must not be running: the caller checks.
pub fn hand_over(data_dir: &Path, zone: &ZoneName, to: &str, out: &Path) -> Result<SignedZoneHandover, HandoverError> {
    let to_key = hex::decode(to).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
    if to_key.is_none_or(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).is_err()) || to != to.to_lowercase() {
        return Err(HandoverError::Invalid(format!("{to:?} is not a node key (64 lower-case hex digits)")));
    }
    if !data_dir.join("node.key").exists() {
        return Err(HandoverError::Invalid(format!("{} holds no node key to hand over from", data_dir.display())));
    }
    let key = crate::identity::load_or_create(data_dir)?;
    if node_hex(&key) == to {
        return Err(HandoverError::Invalid("that is this node's own key".into()));
    }
    // The zone's age, as this node's last claim of it says.
    let store = Store::open(&data_dir.join("db"))?;
    let tree = store.mesh_tree()?;
    let peer = dht::mesh::peer_of(&node_hex(&key))
        .ok_or_else(|| HandoverError::Invalid("the node key has no peer id".into()))?;
    let first_claimed_at_ms =
        match dht::store::PersistentStore::open(peer, tree).mesh_record(&dht::record::zone_key(zone)) {
            Some(MeshRecord::Zone(c)) if c.claim.node == node_hex(&key) => c.claim.first_claimed(),
            _ => now_ms(),
        };
    drop(store);
    let signed = ZoneHandover {
        zone: zone.clone(),
        from: node_hex(&key),
        to: to.to_owned(),
        first_claimed_at_ms,
        issued_at_ms: now_ms(),
    }
    .sign(&key);
    let json = serde_json::to_vec_pretty(&signed).unwrap_or_default();
    // First the mark that keeps this node from claiming the zone again,
    // then the file for the new node: never a usable hand-over without it.
    let given = data_dir.join(GIVEN_FILE);
    write_private(&given, &json).map_err(io(format!("writing {}", given.display())))?;
    std::fs::write(out, &json).map_err(io(format!("writing {}", out.display())))?;
    Ok(signed)
}

/// Checks the hand-over in `file` (signed by the zone's old key, naming the
/// key in `data_dir` and `zone`) and keeps it in `data_dir`.
pub fn take_over(data_dir: &Path, zone: &ZoneName, file: &Path) -> Result<SignedZoneHandover, HandoverError> {
    let h = read(file)?;
    let key = crate::identity::load_or_create(data_dir)?;
    check_mine(&h, zone, &node_hex(&key))?;
    let path = data_dir.join(TAKEN_FILE);
    let json = serde_json::to_vec_pretty(&h).unwrap_or_default();
    write_private(&path, &json).map_err(io(format!("writing {}", path.display())))?;
    Ok(h)
}

fn check_mine(h: &SignedZoneHandover, zone: &ZoneName, key: &str) -> Result<(), HandoverError> {
    if h.handover.to != key {
        return Err(HandoverError::Invalid(format!(
            "it names key {}, and this node's key is {key}: make it with `xarxa mesh hand-over --to {key}`",
            h.handover.to
        )));
    }
    if h.handover.zone != *zone {
        return Err(HandoverError::Invalid(format!(
            "it is for zone {}, and this node's zone is {zone}",
            h.handover.zone
        )));
    }
    Ok(())
}

/// At start: refuses a node that gave `zone` away, and returns the
/// hand-over this node's key took `zone` by, if any.
pub fn at_start(data_dir: &Path, zone: &ZoneName, key: &str) -> Result<Option<SignedZoneHandover>, HandoverError> {
    let given = data_dir.join(GIVEN_FILE);
    if given.exists() {
        let h = read(&given)?;
        if h.handover.zone == *zone && h.handover.from == key {
            return Err(HandoverError::GivenAway {
                zone: zone.to_string(),
                to: h.handover.to.clone(),
                file: given.display().to_string(),
            });
        }
    }
    let taken = data_dir.join(TAKEN_FILE);
    if !taken.exists() {
        return Ok(None);
    }
    let h = read(&taken)?;
    // A hand-over for another zone (the node was renamed) is left unused.
    if h.handover.zone != *zone {
        return Ok(None);
    }
    check_mine(&h, zone, key)?;
    Ok(Some(h))
}
