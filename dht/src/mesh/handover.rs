//! Hand-over on join: records handed to newly met peers that are now among
//! the closest to their keys (Kademlia's transfer on join, which libp2p
//! leaves to the application), batched on a pass every few seconds and
//! bounded in flight and in queue.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, Quorum, RecordKey};
use libp2p::PeerId;
use tracing::debug;

use super::swarm::SwarmTask;
use super::{peer_of, wall_ms};
use crate::record::MeshRecord;

/// Kademlia's replication factor: a record lives on this many nodes
/// closest to its key (libp2p's `K_VALUE`).
pub(crate) const REPLICATION: usize = 20;

/// How often the peers met in the meantime are handed their records.
pub(super) const HANDOFF_EVERY: Duration = Duration::from_secs(5);
/// Hand-over puts under way at once; the rest wait in the queue.
const HANDOFF_IN_FLIGHT: usize = 32;
/// Hand-overs waiting to be sent; past this the rest are left to the
/// records' renewals.
const HANDOFF_QUEUE: usize = 4096;
/// Peers met between two hand-over passes that are remembered.
const MAX_MET: usize = 1024;

/// Which of the peers `met` should be handed a record under `target`:
/// those among the [`REPLICATION`] closest nodes this node knows to it
/// (`closest`: the routing table's nearest peers, nearest first; this
/// node, `local`, takes its own place among them), provided this node is
/// among them too or is farther from the key than the peer (a holder the
/// mesh has grown past hands its copy inwards).
fn recipients(
    local: &kad::KBucketKey<PeerId>,
    target: &kad::KBucketKey<RecordKey>,
    closest: &[kad::KBucketKey<PeerId>],
    met: &BTreeSet<PeerId>,
) -> Vec<PeerId> {
    let mine = local.distance(target);
    let my_rank = closest.iter().filter(|p| p.distance(target) < mine).count();
    closest
        .iter()
        .take(REPLICATION)
        .enumerate()
        .filter(|(_, p)| met.contains(p.preimage()))
        .filter_map(|(i, p)| {
            let theirs = p.distance(target);
            let rank = i + usize::from(mine < theirs);
            (rank < REPLICATION && (my_rank < REPLICATION || theirs < mine)).then(|| *p.preimage())
        })
        .collect()
}

impl SwarmTask {
    /// Remembers a peer newly added to the routing table for the next
    /// pass (up to [`MAX_MET`] between passes).
    pub(super) fn peer_met(&mut self, peer: PeerId) {
        if self.met.len() < MAX_MET {
            self.met.insert(peer);
        }
    }

    /// A put has ended: if it was a hand-over, counts it and sends the
    /// next queued one.
    pub(super) fn handoff_done(&mut self, id: kad::QueryId, ok: bool) {
        if self.handoffs.remove(&id) {
            if ok {
                self.shared.handed_over.fetch_add(1, Ordering::Relaxed);
            }
            self.pump_handoffs();
        }
    }

    /// Queues the records that the peers met since the last pass should
    /// hold, then sends what the in-flight limit allows.
    ///
    /// A record lives on the nodes closest to its key *when it is put*;
    /// nodes that join later and come closer would not hold it until its
    /// next renewal, and lookups, which ask the nodes closest now, would
    /// miss it. So a node hands a newly met peer each record it holds that
    /// the peer is now among the [`REPLICATION`] closest nodes to (as far
    /// as this node knows), when this node is among them too or farther
    /// than the peer: the Kademlia paper's transfer on join, which libp2p
    /// leaves to the application. Only copies renewed within the last
    /// republish interval go (an older copy has been superseded, or its
    /// node has gone; the receiver would refuse it as a replay or keep a
    /// dead route alive). One pass over the store serves every peer met
    /// in the meantime; the receiver validates what it is handed like any
    /// other put.
    pub(super) fn hand_over(&mut self) {
        if !self.joined || self.met.is_empty() {
            return;
        }
        let met = std::mem::take(&mut self.met);
        let now = Instant::now();
        let fresh_after = wall_ms().saturating_sub(self.republish.as_millis() as u64 * 5 / 4);
        let local = kad::KBucketKey::from(*self.swarm.local_peer_id());
        let kad = &mut self.swarm.behaviour_mut().kad;
        let keys: Vec<RecordKey> =
            kad.store_mut().records().filter(|r| !r.is_expired(now)).map(|r| r.key.clone()).collect();
        for key in keys {
            if self.handoff_queue.len() >= HANDOFF_QUEUE {
                debug!("hand-over queue full; the rest wait for their renewals");
                break;
            }
            let target = kad::KBucketKey::new(key.clone());
            let closest: Vec<kad::KBucketKey<PeerId>> =
                kad.get_closest_local_peers(&target).take(REPLICATION).collect();
            let to = recipients(&local, &target, &closest, &met);
            if to.is_empty() {
                continue;
            }
            let Some(rec) = kad.store_mut().get(&key).and_then(|r| MeshRecord::decode(&r.value).ok()) else { continue };
            if rec.issued_at_ms() < fresh_after {
                continue;
            }
            // A peer has its own records, and newer ones.
            let publisher = peer_of(rec.node());
            for peer in to.into_iter().filter(|p| Some(*p) != publisher) {
                self.handoff_queue.push_back((peer, key.clone()));
            }
        }
        self.pump_handoffs();
    }

    /// Sends queued hand-overs while fewer than [`HANDOFF_IN_FLIGHT`] are
    /// under way.
    fn pump_handoffs(&mut self) {
        while self.handoffs.len() < HANDOFF_IN_FLIGHT {
            let Some((peer, key)) = self.handoff_queue.pop_front() else { return };
            let kad = &mut self.swarm.behaviour_mut().kad;
            let Some(record) = kad.store_mut().get(&key).map(|r| r.into_owned()) else { continue };
            let id = kad.put_record_to(record, std::iter::once(peer), Quorum::One);
            self.handoffs.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` peers sorted by distance to `target`, nearest first.
    fn sorted_peers(n: usize, target: &kad::KBucketKey<RecordKey>) -> Vec<kad::KBucketKey<PeerId>> {
        let mut peers: Vec<kad::KBucketKey<PeerId>> = (0..n).map(|_| PeerId::random().into()).collect();
        peers.sort_by_key(|p| p.distance(target));
        peers
    }

    #[test]
    fn a_new_peer_is_handed_a_record_only_among_the_closest() {
        let target = kad::KBucketKey::new(RecordKey::new(&b"user/bob@sants".to_vec()));
        for my_rank in [0, 1, 10, 19, 20, 21, 35] {
            let all = sorted_peers(41, &target);
            let local = all[my_rank];
            // What the routing table gives: everyone else, nearest first, 20 of them.
            let closest: Vec<_> = all.iter().filter(|p| **p != local).take(REPLICATION).cloned().collect();
            let met: BTreeSet<PeerId> = all.iter().map(|p| *p.preimage()).collect();
            let got = recipients(&local, &target, &closest, &met);
            let want: Vec<PeerId> = if my_rank < REPLICATION {
                // This node holds one of the 20 places: the 20th table peer is out.
                closest[..REPLICATION - 1].iter().map(|p| *p.preimage()).collect()
            } else {
                // Grown past: all 20 are closer than this node, and get its copy.
                closest.iter().map(|p| *p.preimage()).collect()
            };
            assert_eq!(got, want, "this node ranked {my_rank}");
        }
    }

    #[test]
    fn only_peers_met_since_the_last_pass_are_handed_records() {
        let target = kad::KBucketKey::new(RecordKey::new(&b"zone/gracia".to_vec()));
        let all = sorted_peers(30, &target);
        let local = all[3];
        let closest: Vec<_> = all.iter().filter(|p| **p != local).take(REPLICATION).cloned().collect();
        let met: BTreeSet<PeerId> =
            [&closest[0], &closest[18], &closest[19], &all[25]].iter().map(|p| *p.preimage()).collect();
        // closest[19] is ranked 20th once this node takes its place; all[25] is far.
        assert_eq!(recipients(&local, &target, &closest, &met), vec![*closest[0].preimage(), *closest[18].preimage()]);
        assert!(recipients(&local, &target, &closest, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_small_mesh_hands_everyone_everything() {
        let target = kad::KBucketKey::new(RecordKey::new(&b"zone/clot".to_vec()));
        let all = sorted_peers(6, &target);
        let met: BTreeSet<PeerId> = all.iter().map(|p| *p.preimage()).collect();
        for local in &all {
            let closest: Vec<_> = all.iter().filter(|p| *p != local).cloned().collect();
            assert_eq!(recipients(local, &target, &closest, &met).len(), 5);
        }
    }
}
