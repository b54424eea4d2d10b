//! Admission to the routing table: only zone nodes shape it.
//!
//! Kademlia here inserts no peer by itself (`BucketInserts::Manual`). A
//! peer that identify shows speaking the mesh's Kademlia protocol is asked
//! for the zone claim of its own key (`/xarxa/claim/1`), and enters the
//! routing table — and so the answers this node gives to FIND_NODE —
//! only if that claim is valid, names the peer's own key, does not
//! contradict a live claim this node holds for the zone, leaves the key
//! within `max_zones_per_key`, and the network it connects from (/24 or
//! /48, as this node sees it) has fewer than `max_peers_per_prefix` peers
//! in its bucket. The bootstrap
//! peers and relays the operator configured are admitted as they are.
//! A peer that stops answering (its ping timed out, or it cannot be
//! dialled) leaves the table, unless the operator configured it. A
//! foreign peer may still ask questions.

use std::collections::HashSet;
use std::net::IpAddr;

use libp2p::core::Multiaddr;
use libp2p::kad::RoutingUpdate;
use libp2p::request_response::{self, ResponseChannel};
use libp2p::PeerId;
use tracing::debug;

use super::limits::prefix_of_ip;
use super::swarm::SwarmTask;
use super::{lock, peer_of, wall_ms, ClaimState};
use crate::behaviour::{ClaimAsk, ClaimShown};
use crate::record::{zone_key, MeshRecord, SignedZoneClaim};

/// Peers being asked for their claim at once; more wait for their next
/// identify.
const MAX_ADMITTING: usize = 256;
/// Admitted peers whose network is remembered (a routing table holds at
/// most a few hundred).
const MAX_ADMITTED_FROM: usize = 4096;

/// Times in a row a connected peer is asked for its claim when the
/// question fails (not when it answers with none).
const MAX_ASKS: u8 = 4;

/// A peer asked for its claim.
pub(super) struct Admitting {
    /// The addresses identify gave.
    addrs: Vec<Multiaddr>,
    /// The latest question asked (answers to earlier ones are ignored).
    asked: request_response::OutboundRequestId,
    /// Questions asked in a row.
    asks: u8,
}

/// Why a peer was kept out of the routing table (`mesh status`
/// `refused_peers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerRefusal {
    /// It showed no claim, or did not answer.
    NoClaim,
    /// Its claim does not verify or is not of its own key.
    BadClaim,
    /// Another key holds the zone it claims.
    ZoneTaken,
    /// Its key holds as many zones as a key may.
    TooManyZones,
    /// Its bucket holds as many peers of its network as it may.
    PrefixFull,
}

impl PeerRefusal {
    fn name(self) -> &'static str {
        match self {
            Self::NoClaim => "no_claim",
            Self::BadClaim => "bad_claim",
            Self::ZoneTaken => "zone_taken",
            Self::TooManyZones => "too_many_zones",
            Self::PrefixFull => "prefix_full",
        }
    }
}

/// Whether a bucket whose entries are on networks `held` (one item per
/// entry and network) has room for one more peer of each network in
/// `candidate`, at most `max` per network.
fn prefix_room(held: &[IpAddr], candidate: &HashSet<IpAddr>, max: usize) -> bool {
    candidate.iter().all(|p| held.iter().filter(|h| *h == p).count() < max)
}

impl SwarmTask {
    /// Identify says `peer` speaks the mesh's Kademlia protocol and listens
    /// on `addrs`: update it if it is in the table, admit it if trusted,
    /// otherwise ask for its claim.
    pub(super) fn mesh_peer_identified(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let known = kad.kbucket(peer).is_some_and(|b| b.iter().any(|e| *e.node.key.preimage() == peer));
        if known || self.trusted.contains(&peer) {
            self.admit(peer, addrs);
            return;
        }
        // A peer identified again while its question is open (a new
        // connection: a restarted process under the same key, whose old
        // connection may take a while to be seen dead) is asked again, and
        // only the latest answer counts.
        if self.admitting.len() >= MAX_ADMITTING && !self.admitting.contains_key(&peer) {
            return;
        }
        self.ask_claim(peer, addrs, 1);
    }

    /// Asks `peer` for its claim (the `asks`th time in a row).
    fn ask_claim(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, asks: u8) {
        let asked = self.swarm.behaviour_mut().claim.send_request(&peer, ClaimAsk {});
        self.admitting.insert(peer, Admitting { addrs, asked, asks });
    }

    /// Takes `peer` out of the peers being admitted if `request` is the
    /// latest question it was asked.
    fn answered(&mut self, peer: PeerId, request: request_response::OutboundRequestId) -> Option<Admitting> {
        match self.admitting.get(&peer) {
            Some(a) if a.asked == request => self.admitting.remove(&peer),
            _ => None,
        }
    }

    /// Events of the admission protocol: questions to answer, answers to
    /// judge.
    pub(super) fn claim_event(&mut self, event: request_response::Event<ClaimAsk, ClaimShown>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { channel, .. } => self.show_claim(channel),
                request_response::Message::Response { request_id, response } => {
                    let Some(admitting) = self.answered(peer, request_id) else { return };
                    match self.judge(peer, response.claim) {
                        Ok(()) => {
                            self.note_admitted_from(peer);
                            self.admit(peer, admitting.addrs);
                        }
                        Err(why) => self.refuse_peer(peer, why),
                    }
                }
            },
            request_response::Event::OutboundFailure { peer, connection_id, request_id, error } => {
                let Some(admitting) = self.answered(peer, request_id) else { return };
                // The question went unanswered on one connection while
                // another to the peer is up (a process gone silently, its
                // key back in a new one): that connection is stale; close
                // it and ask on the other.
                let other = self.connections.iter().any(|(c, (p, _, _))| *p == peer && *c != connection_id);
                if admitting.asks < MAX_ASKS && other {
                    if matches!(error, request_response::OutboundFailure::Timeout) {
                        self.swarm.close_connection(connection_id);
                    }
                    self.ask_claim(peer, admitting.addrs, admitting.asks + 1);
                } else {
                    self.refuse_peer(peer, PeerRefusal::NoClaim);
                }
            }
            _ => {}
        }
    }

    /// Answers a peer's question with this node's claim, signed now (none
    /// while another key holds the zone).
    fn show_claim(&mut self, channel: ResponseChannel<ClaimShown>) {
        let taken = self.signer.lookup_only || matches!(*lock(&self.shared.claim), Some(ClaimState::Taken { .. }));
        let claim = (!taken).then(|| {
            let addrs: Vec<String> =
                self.swarm.listeners().map(|a| a.to_string()).take(crate::record::MAX_ADDRS).collect();
            let first = self.shared.first_claimed_at_ms.load(std::sync::atomic::Ordering::Relaxed);
            let s = &self.signer;
            super::publish::sign_claim(&s.key, &s.zone, addrs, s.claim_ttl, first, s.handover.as_ref())
        });
        let _ = self.swarm.behaviour_mut().claim.send_response(channel, ClaimShown { claim });
    }

    /// Whether `peer` may enter the routing table on the strength of
    /// `claim`.
    fn judge(&mut self, peer: PeerId, claim: Option<SignedZoneClaim>) -> Result<(), PeerRefusal> {
        let claim = claim.ok_or(PeerRefusal::NoClaim)?;
        claim.verify(wall_ms()).map_err(|_| PeerRefusal::BadClaim)?;
        if peer_of(&claim.claim.node) != Some(peer) {
            return Err(PeerRefusal::BadClaim);
        }
        let key = zone_key(&claim.claim.zone);
        let kad = &mut self.swarm.behaviour_mut().kad;
        let store = kad.store_mut();
        // Another key holds the zone, and did not hand it to this one.
        if matches!(store.mesh_record(&key), Some(MeshRecord::Zone(held))
            if held.claim.node != claim.claim.node && claim.handed_from() != Some(held.claim.node.as_str()))
        {
            return Err(PeerRefusal::ZoneTaken);
        }
        if store.live_zones_of(&claim.claim.node, &key) >= self.limits.max_zones_per_key as usize {
            return Err(PeerRefusal::TooManyZones);
        }
        // The network it connects from, as this node sees it (not the
        // addresses it reports, which it chooses).
        let candidate: HashSet<IpAddr> = self
            .connections
            .values()
            .filter(|(p, _, _)| *p == peer)
            .filter_map(|(_, _, ip)| ip.and_then(prefix_of_ip))
            .collect();
        if !candidate.is_empty() {
            let held: Vec<IpAddr> = kad
                .kbucket(peer)
                .map(|b| {
                    b.iter()
                        .filter(|e| *e.node.key.preimage() != peer)
                        .filter_map(|e| self.admitted_from.get(e.node.key.preimage()).copied())
                        .collect()
                })
                .unwrap_or_default();
            if !prefix_room(&held, &candidate, self.limits.max_peers_per_prefix as usize) {
                return Err(PeerRefusal::PrefixFull);
            }
        }
        Ok(())
    }

    /// Remembers the network `peer` was admitted from (for the bound per
    /// bucket); forgets peers no longer in the table when the map is full.
    fn note_admitted_from(&mut self, peer: PeerId) {
        let Some(prefix) = self
            .connections
            .values()
            .find(|(p, _, ip)| *p == peer && ip.and_then(prefix_of_ip).is_some())
            .and_then(|(_, _, ip)| ip.and_then(prefix_of_ip))
        else {
            return;
        };
        if self.admitted_from.len() >= MAX_ADMITTED_FROM {
            let kad = &mut self.swarm.behaviour_mut().kad;
            let present: HashSet<PeerId> =
                kad.kbuckets().flat_map(|b| b.iter().map(|e| *e.node.key.preimage()).collect::<Vec<_>>()).collect();
            self.admitted_from.retain(|p, _| present.contains(p));
        }
        self.admitted_from.insert(peer, prefix);
    }

    /// Puts `peer` in the routing table at `addrs`; the publisher has
    /// someone to ask once the first peer is in.
    fn admit(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let mut added = false;
        for addr in addrs {
            added |= matches!(kad.add_address(&peer, addr), RoutingUpdate::Success);
        }
        if added && !self.shared.routable.swap(true, std::sync::atomic::Ordering::AcqRel) {
            self.shared.routable_changed.notify_waiters();
        }
    }

    fn refuse_peer(&mut self, peer: PeerId, why: PeerRefusal) {
        debug!(%peer, why = why.name(), "kept a peer out of the routing table");
        *lock(&self.shared.refused_peers).entry(why.name().to_string()).or_default() += 1;
    }

    /// A peer that stopped answering leaves the routing table (it comes
    /// back through admission when it next connects). The configured
    /// bootstrap peers and relays stay: Kademlia's periodic refresh dials
    /// them again, so a node that started before them still finds them.
    pub(super) fn peer_unresponsive(&mut self, peer: PeerId) {
        if self.trusted.contains(&peer) {
            return;
        }
        if self.swarm.behaviour_mut().kad.remove_peer(&peer).is_some() {
            debug!(%peer, "removed an unresponsive peer from the routing table");
        }
    }
}

/// The key and zone a node signs the claims it shows with.
pub(super) struct ClaimSigner {
    pub(super) key: std::sync::Arc<ed25519_dalek::SigningKey>,
    pub(super) zone: signalling::ZoneName,
    pub(super) claim_ttl: std::time::Duration,
    pub(super) handover: Option<crate::record::SignedZoneHandover>,
    /// Shows no claim (see `MeshConfig::lookup_only`).
    pub(super) lookup_only: bool,
}

/// The limits admission and offered records apply.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_zones_per_key: u32,
    pub(super) max_peers_per_prefix: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_takes_a_bounded_number_of_peers_from_one_network() {
        let net = |s: &str| s.parse::<IpAddr>().unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (net("10.1.2.0"), net("10.9.9.0"));
        let one: HashSet<IpAddr> = [a].into();
        assert!(prefix_room(&[], &one, 2));
        assert!(prefix_room(&[a, b], &one, 2));
        assert!(!prefix_room(&[a, a, b], &one, 2), "a third peer of 10.1.2.0/24");
        assert!(prefix_room(&[b, b, b], &one, 2), "other networks do not count");
    }
}
