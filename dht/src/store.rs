//! The mesh's record store: Kademlia's in-memory store, written through to
//! a sled tree so that records survive a restart.
//!
//! Only records that passed [`crate::record::validate`] reach it (inbound
//! puts are filtered by the swarm task). Provider records are not used by
//! Xarxa and stay in memory.

use std::borrow::Cow;
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
        let mut mem = MemoryStore::with_config(local, config);
        let now = wall_ms();
        let mut stale = Vec::new();
        for (k, v) in tree.iter().flatten() {
            match MeshRecord::decode(&v) {
                Ok(rec) if rec.expires_at_ms() > now => {
                    let mut r = Record::new(RecordKey::new(&k.to_vec()), v.to_vec());
                    r.expires = Some(expiry_instant(rec.expires_at_ms()));
                    let _ = mem.put(r);
                }
                _ => stale.push(k),
            }
        }
        for k in stale {
            let _ = tree.remove(k);
        }
        Self { mem, tree }
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
        self.mem.put(r)?;
        if let Err(e) = self.tree.insert(key, value) {
            warn!(error = %e, "persisting a mesh record failed");
        }
        Ok(())
    }

    fn remove(&mut self, k: &RecordKey) {
        self.mem.remove(k);
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
