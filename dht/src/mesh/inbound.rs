//! Records other nodes offer (Kademlia inbound puts): validated before
//! they are stored, and a zone's first claim checked with the mesh first,
//! so a rogue that is quick cannot take a newcomer's store.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, RecordKey};
use libp2p::PeerId;
use tracing::{debug, warn};

use super::lookup::{Enough, GetDone, PendingGet, CLAIM_QUORUM};
use super::swarm::SwarmTask;
use super::wall_ms;
use crate::record::{validate, zone_key, MeshRecord, RecordError};
use crate::store::expiry_instant;

/// Zone claims being checked against the mesh at once; more are refused
/// (the sender's next renewal offers them again).
const MAX_VERIFYING: usize = 64;

impl SwarmTask {
    /// Validates a record another node asks us to store.
    pub(super) fn inbound_put(&mut self, source: PeerId, record: kad::Record) {
        let now = wall_ms();
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let key = record.key.to_vec();
        // The very bytes already held (a hand-over or a second holder's
        // copy of what this node has checked before): nothing to check or
        // store again, as long as that copy is live.
        let same = store.get(&record.key).is_some_and(|r| r.value == record.value && !r.is_expired(Instant::now()));
        if same {
            return;
        }
        let existing = store.mesh_record(&key);
        let zone_claim = match MeshRecord::decode(&record.value) {
            Ok(MeshRecord::User(u)) => match store.mesh_record(&zone_key(&u.record.user.zone)) {
                Some(MeshRecord::Zone(c)) => Some(c),
                _ => None,
            },
            _ => None,
        };
        match validate(&key, &record.value, now, existing.as_ref(), zone_claim.as_ref()) {
            Ok(MeshRecord::Zone(_)) if existing.is_none() => self.verify_first_claim(source, key, record),
            Ok(rec) => self.store(record, &rec),
            Err(e) => {
                warn!(peer = %source, key = %String::from_utf8_lossy(&key), error = %e, "refused a record");
                self.shared.rejections.count(&e);
            }
        }
    }

    /// A claim for a zone this node has no record of: a new node would
    /// otherwise take whichever claim reached it first, and a rogue that
    /// is quick can be first. Ask the mesh before storing it.
    fn verify_first_claim(&mut self, source: PeerId, key: Vec<u8>, record: kad::Record) {
        if self.verifying.len() >= MAX_VERIFYING || !self.verifying.insert(key.clone()) {
            debug!(peer = %source, "a zone claim is already being checked; dropped this offer");
            return;
        }
        let id = self.swarm.behaviour_mut().kad.get_record(RecordKey::new(&key));
        let done = GetDone::VerifyClaim { source, record: Box::new(record) };
        self.gets.insert(id, PendingGet::new(key, Enough::Agree(CLAIM_QUORUM), done));
    }

    /// Stores an offered first claim unless the mesh named another holder
    /// (`votes`: valid claims other nodes returned, per holder) at least as
    /// often as the offered one.
    pub(super) fn verified(&mut self, source: PeerId, record: kad::Record, votes: &HashMap<String, usize>) {
        let key = record.key.to_vec();
        self.verifying.remove(&key);
        let now = wall_ms();
        let Ok(offered) = validate(&key, &record.value, now, None, None) else { return };
        let mine = votes.get(offered.node()).copied().unwrap_or(0);
        let other = votes.iter().filter(|(n, _)| *n != offered.node()).map(|(_, v)| *v).max().unwrap_or(0);
        if other > 0 && other >= mine {
            warn!(peer = %source, key = %String::from_utf8_lossy(&key), "refused a record: the mesh names another holder");
            self.shared.rejections.count(&RecordError::ZoneTaken);
            return;
        }
        // Judged again against what arrived meanwhile.
        let existing = self.swarm.behaviour_mut().kad.store_mut().mesh_record(&key);
        match validate(&key, &record.value, now, existing.as_ref(), None) {
            Ok(rec) => self.store(record, &rec),
            Err(e) => self.shared.rejections.count(&e),
        }
    }

    /// Puts a record that passed [`validate`] (`rec`, decoded) in the
    /// store, expiring when it does.
    fn store(&mut self, mut record: kad::Record, rec: &MeshRecord) {
        record.expires = Some(expiry_instant(rec.expires_at_ms()));
        if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put(record) {
            warn!(error = %e, "storing a record failed");
        }
    }
}
