//! The mesh's record store: Kademlia's in-memory store, written through to
//! a sled tree so that records survive a restart.
//!
//! Only records that passed [`crate::record::validate`] reach it (inbound
//! puts are filtered by the swarm task). Provider records are not used by
//! Xarxa and stay in memory.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::PeerId;
use tracing::warn;

use crate::record::{MeshRecord, MAX_RECORD_BYTES};

/// Most records a node holds.
pub const MAX_RECORDS: usize = 100_000;

/// A Kademlia record store persisted in sled.
pub struct PersistentStore {
    mem: MemoryStore,
    tree: sled::Tree,
    /// The keys of the zone claims held, by the node key that signed them
    /// (to bound the zones one key may hold).
    zones_by_node: HashMap<String, BTreeSet<Vec<u8>>>,
    /// The other way: which node key signed the claim held under a key.
    node_of_zone: HashMap<Vec<u8>, String>,
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The local monotonic instant at which a wall-clock expiry falls.
pub fn expiry_instant(expires_at_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(expires_at_ms.saturating_sub(wall_ms()))
}

impl PersistentStore {
    /// Opens the store over `tree`, loading every unexpired record in it.
    pub fn open(local: PeerId, tree: sled::Tree) -> Self {
        let config =
            MemoryStoreConfig { max_records: MAX_RECORDS, max_value_bytes: MAX_RECORD_BYTES, ..Default::default() };
        let mem = MemoryStore::with_config(local, config);
        let mut store = Self { mem, tree, zones_by_node: HashMap::new(), node_of_zone: HashMap::new() };
        let now = wall_ms();
        let mut stale = Vec::new();
        let mut live = Vec::new();
        for (k, v) in store.tree.iter().flatten() {
            match MeshRecord::decode(&v) {
                Ok(rec) if rec.expires_at_ms() > now => {
                    let mut r = Record::new(RecordKey::new(&k.to_vec()), v.to_vec());
                    r.expires = Some(expiry_instant(rec.expires_at_ms()));
                    live.push((r, rec));
                }
                _ => stale.push(k),
            }
        }
        for (r, rec) in live {
            store.index(&r.key, Some(&rec));
            let _ = store.mem.put(r);
        }
        for k in stale {
            let _ = store.tree.remove(k);
        }
        store
    }

    /// Keeps [`PersistentStore::zones_by_node`] true for `key`, now holding
    /// `rec` (or nothing).
    fn index(&mut self, key: &RecordKey, rec: Option<&MeshRecord>) {
        let k = key.to_vec();
        if let Some(old) = self.node_of_zone.remove(&k) {
            if let Some(keys) = self.zones_by_node.get_mut(&old) {
                keys.remove(&k);
                if keys.is_empty() {
                    self.zones_by_node.remove(&old);
                }
            }
        }
        if let Some(MeshRecord::Zone(c)) = rec {
            self.zones_by_node.entry(c.claim.node.clone()).or_default().insert(k.clone());
            self.node_of_zone.insert(k, c.claim.node.clone());
        }
    }

    /// How many live zone claims signed by `node` (hex key) are held,
    /// other than the one under `except`.
    pub fn live_zones_of(&self, node: &str, except: &[u8]) -> usize {
        let Some(keys) = self.zones_by_node.get(node) else { return 0 };
        keys.iter()
            .filter(|k| k.as_slice() != except)
            .filter(|k| matches!(self.mesh_record(k), Some(MeshRecord::Zone(c)) if c.claim.node == node))
            .count()
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.mem.records().count()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The decoded record under `key`, if held and unexpired.
    pub fn mesh_record(&self, key: &[u8]) -> Option<MeshRecord> {
        let rec = self.mem.get(&RecordKey::new(&key))?;
        let decoded = MeshRecord::decode(&rec.value).ok()?;
        (decoded.expires_at_ms() > wall_ms()).then_some(decoded)
    }
}

impl RecordStore for PersistentStore {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.mem.get(k)
    }

    fn put(&mut self, r: Record) -> Result<()> {
        let key = r.key.to_vec();
        let value = r.value.clone();
        let rec_key = r.key.clone();
        self.mem.put(r)?;
        self.index(&rec_key, MeshRecord::decode(&value).ok().as_ref());
        if let Err(e) = self.tree.insert(key, value) {
            warn!(error = %e, "persisting a mesh record failed");
        }
        Ok(())
    }

    fn remove(&mut self, k: &RecordKey) {
        self.mem.remove(k);
        self.index(k, None);
        let _ = self.tree.remove(k.to_vec());
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.mem.records()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        self.mem.add_provider(record)
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.mem.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.mem.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.mem.remove_provider(k, p)
    }
}
