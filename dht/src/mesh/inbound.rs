//! Records other nodes offer (Kademlia inbound puts): validated before
//! they are stored, and a zone's first claim checked with the mesh first,
//! so a rogue that is quick cannot take a newcomer's store. Against
//! squatting, a key may hold only `max_zones_per_key` zones, and a peer or
//! an address may bring in only so many names the mesh has never seen.
//! Refusals are counted exactly and logged at most once per cause per
//! interval, so a flood of bad records cannot grow the log at will.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, RecordKey};
use libp2p::PeerId;
use tracing::{debug, warn};

use super::lookup::{Enough, GetDone, PendingGet, CLAIM_QUORUM};
use super::swarm::SwarmTask;
use super::{peer_of, wall_ms};
use crate::record::{validate, zone_key, MeshRecord, RecordError, MAX_LIFETIME_MS};
use crate::store::expiry_instant;

/// Zone claims being checked against the mesh at once; more are refused
/// (the sender's next renewal offers them again).
const MAX_VERIFYING: usize = 64;
/// Of those, checks of claims one peer offered.
const MAX_VERIFYING_PER_PEER: usize = 8;

impl SwarmTask {
    /// Counts a refused record, and logs it unless a line of that cause
    /// went out recently.
    pub(super) fn refused(&mut self, source: PeerId, key: &[u8], e: &RecordError) {
        self.shared.rejections.count(e);
        if let Some(held_back) = self.quiet.allow(e.cause(), Instant::now()) {
            let key = String::from_utf8_lossy(key);
            warn!(peer = %source, %key, error = %e, held_back, "refused a record (one line per cause per 10 s; `mesh status` counts them all)");
        }
    }

    /// Validates a record another node asks us to store; `ip` is where the
    /// connection it came on comes from.
    pub(super) fn inbound_put(&mut self, source: PeerId, ip: Option<IpAddr>, record: kad::Record) {
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
        let max_zones = self.limits.max_zones_per_key as usize;
        match validate(&key, &record.value, now, existing.as_ref(), zone_claim.as_ref()) {
            Ok(MeshRecord::Zone(c)) if existing.is_none() => {
                if store.live_zones_of(&c.claim.node, &key) >= max_zones {
                    return self.refused(source, &key, &RecordError::TooManyZones);
                }
                self.verify_first_claim(source, ip, key, record)
            }
            Ok(rec) => self.store(record, &rec),
            Err(e) => self.refused(source, &key, &e),
        }
    }

    /// A claim for a zone this node has no record of: a new node would
    /// otherwise take whichever claim reached it first, and a rogue that
    /// is quick can be first. Ask the mesh before storing it.
    ///
    /// A node's own claim counts against the new names of the peer and
    /// address it came from before the check starts, and one peer may have
    /// only [`MAX_VERIFYING_PER_PEER`] checks under way: no peer can keep
    /// the checks busy for others.
    fn verify_first_claim(&mut self, source: PeerId, ip: Option<IpAddr>, key: Vec<u8>, record: kad::Record) {
        let from_source = self.verifying_from.get(&source).copied().unwrap_or(0);
        if self.verifying.len() >= MAX_VERIFYING
            || from_source >= MAX_VERIFYING_PER_PEER
            || self.verifying.contains(&key)
        {
            debug!(peer = %source, "a zone claim is already being checked, or too many are; dropped this offer");
            return;
        }
        let own = MeshRecord::decode(&record.value).is_ok_and(|r| peer_of(r.node()) == Some(source));
        if own && !self.new_name_allowed(source, ip) {
            return self.refused(source, &key, &RecordError::ClaimRateLimited);
        }
        self.verifying.insert(key.clone());
        *self.verifying_from.entry(source).or_default() += 1;
        let id = self.swarm.behaviour_mut().kad.get_record(RecordKey::new(&key));
        let done = GetDone::VerifyClaim { source, ip, record: Box::new(record) };
        self.gets.insert(id, PendingGet::new(key, Enough::Agree(CLAIM_QUORUM), done));
    }

    /// Stores an offered first claim unless the mesh named another holder
    /// (`votes`: valid claims other nodes returned, per holder) at least as
    /// often as the offered one. A claim handed on by another peer that no
    /// other node knows counts against the share of new names of the peer
    /// that brought it (`source`) and of its address (`ip`).
    pub(super) fn verified(
        &mut self,
        source: PeerId,
        ip: Option<IpAddr>,
        record: kad::Record,
        votes: &HashMap<String, usize>,
    ) {
        let key = record.key.to_vec();
        self.verifying.remove(&key);
        if let Some(n) = self.verifying_from.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.verifying_from.remove(&source);
            }
        }
        let now = wall_ms();
        let Ok(offered) = validate(&key, &record.value, now, None, None) else { return };
        let mine = votes.get(offered.node()).copied().unwrap_or(0);
        let other = votes.iter().filter(|(n, _)| *n != offered.node()).map(|(_, v)| *v).max().unwrap_or(0);
        if other > 0 && other >= mine {
            return self.refused(source, &key, &RecordError::ZoneTaken);
        }
        // A node's own claim was counted as it came (`verify_first_claim`)
        // and says what its node knows of its history: a zone whose
        // holders have all gone gets its claim stored again. A claim handed
        // on by another peer that no node vouches for brings in a name:
        // it counts against that peer's share, and its history may reach
        // back no further than a record's lifetime (its times cannot be put
        // back further either), so a rogue relaying a back-dated claim does
        // not win ties with it.
        let own = peer_of(offered.node()) == Some(source);
        if mine == 0 && !own {
            let old = matches!(&offered, MeshRecord::Zone(c) if c.claim.first_claimed() < now.saturating_sub(MAX_LIFETIME_MS));
            if old {
                return self.refused(source, &key, &RecordError::HistoryRewritten);
            }
            if !self.new_name_allowed(source, ip) {
                return self.refused(source, &key, &RecordError::ClaimRateLimited);
            }
        }
        // Judged again against what arrived meanwhile.
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let existing = store.mesh_record(&key);
        let too_many = store.live_zones_of(offered.node(), &key) >= self.limits.max_zones_per_key as usize;
        match validate(&key, &record.value, now, existing.as_ref(), None) {
            Ok(_) if existing.is_none() && too_many => self.refused(source, &key, &RecordError::TooManyZones),
            Ok(rec) => self.store(record, &rec),
            Err(e) => self.refused(source, &key, &e),
        }
    }

    /// Takes one new name of the shares of `source` and of `ip`.
    fn new_name_allowed(&mut self, source: PeerId, ip: Option<IpAddr>) -> bool {
        let now = Instant::now();
        let by_peer = self.new_names_by_peer.allow(&source, now);
        by_peer && ip.is_none_or(|ip| self.new_names_by_ip.allow(&ip, now))
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
