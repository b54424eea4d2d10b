//! What `xarxa mesh status` shows: the claim's state, the swarm's view
//! and the counters the handle keeps.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use libp2p::core::Multiaddr;
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use signalling::service::Refusal;
use tokio::sync::oneshot;

use super::swarm::{Cmd, SwarmTask};
use super::{lock, Mesh};
use crate::record::RejectionCounts;

/// The state of this node's zone claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimState {
    /// Not published yet (no peers so far).
    Pending,
    /// Published and held by this node.
    Held,
    /// Another node holds the zone name.
    Taken {
        /// That node's peer id.
        by: String,
    },
}

/// What `xarxa mesh status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeshStatus {
    /// This node's peer id.
    pub peer_id: String,
    /// This node's zone.
    pub zone: String,
    /// The zone claim.
    pub claim: ClaimState,
    /// Addresses this node listens on.
    pub listen: Vec<String>,
    /// Peers connected now.
    pub peers: Vec<String>,
    /// Of those, peers reached only through a relay circuit.
    pub relayed_peers: Vec<String>,
    /// Entries in the Kademlia routing table.
    pub routing_table: usize,
    /// Records in the local store.
    pub stored_records: usize,
    /// Users whose records this node publishes.
    pub published_users: usize,
    /// Records refused, by cause.
    pub rejected: RejectionCounts,
    /// Requests delivered to other nodes' services.
    pub delivered: u64,
    /// Requests to other nodes that failed after retries or were refused.
    pub failed_deliveries: u64,
    /// Lookups made, and how many found nothing.
    pub lookups: u64,
    /// Lookups that found nothing.
    pub failed_lookups: u64,
    /// Records delivered to newly met peers that are now among the
    /// closest to their keys (see `mesh::handover`); the receivers
    /// validate them as any put.
    #[serde(default)]
    pub handed_over: u64,
    /// When this node last had its claim and every user record stored by
    /// the mesh (Unix ms); `None` before the first time.
    #[serde(default)]
    pub published_at_ms: Option<u64>,
    /// Requests of other nodes that this node's service layer or its
    /// services refused, by cause.
    #[serde(default)]
    pub refused_requests: BTreeMap<Refusal, u64>,
    /// Peers kept out of the routing table, by cause (`no_claim`,
    /// `bad_claim`, `zone_taken`, `too_many_zones`, `prefix_full`).
    #[serde(default)]
    pub refused_peers: BTreeMap<String, u64>,
    /// Puts that reached only the closest peers known when their walk
    /// timed out, and so were made again once the table had grown.
    #[serde(default)]
    pub provisional_puts: u64,
}

/// The swarm's part of the status, read inside the swarm task.
#[derive(Debug, Default)]
pub(super) struct SwarmStatus {
    pub(super) listen: Vec<Multiaddr>,
    pub(super) peers: Vec<PeerId>,
    pub(super) relayed: Vec<PeerId>,
    pub(super) routing_table: usize,
    pub(super) stored_records: usize,
}

impl Mesh {
    /// When the mesh last acknowledged this node's claim and every one of
    /// its user records (Unix ms), if it has yet.
    pub fn published_at_ms(&self) -> Option<u64> {
        Some(self.shared.published_at_ms.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// The swarm's view, or an empty one once it has stopped.
    pub(super) async fn swarm_status(&self) -> SwarmStatus {
        let (reply, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Status { reply }).await.is_err() {
            return SwarmStatus::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Counters and state for operators.
    pub async fn status(&self) -> MeshStatus {
        let swarm = self.swarm_status().await;
        let s = &self.shared;
        MeshStatus {
            peer_id: self.peer_id.to_string(),
            zone: self.zone.to_string(),
            claim: lock(&s.claim).clone().unwrap_or(ClaimState::Pending),
            listen: swarm.listen.iter().map(|a| a.to_string()).collect(),
            peers: swarm.peers.iter().map(|p| p.to_string()).collect(),
            relayed_peers: swarm.relayed.iter().map(|p| p.to_string()).collect(),
            routing_table: swarm.routing_table,
            stored_records: swarm.stored_records,
            published_users: lock(&s.users).len(),
            rejected: s.rejections.snapshot(),
            delivered: s.delivered.load(Ordering::Relaxed),
            failed_deliveries: s.failed.load(Ordering::Relaxed),
            lookups: s.lookups.load(Ordering::Relaxed),
            failed_lookups: s.failed_lookups.load(Ordering::Relaxed),
            handed_over: s.handed_over.load(Ordering::Relaxed),
            published_at_ms: self.published_at_ms(),
            refused_requests: lock(&s.refused_requests).clone(),
            refused_peers: lock(&s.refused_peers).clone(),
            provisional_puts: s.provisional_puts.load(Ordering::Relaxed),
        }
    }
}

impl SwarmTask {
    /// The swarm's part of [`MeshStatus`].
    pub(super) fn swarm_status(&mut self) -> SwarmStatus {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let routing_table = kad.kbuckets().map(|k| k.num_entries()).sum();
        let stored_records = kad.store_mut().len();
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        let relayed = peers
            .iter()
            .filter(|p| self.connections.values().filter(|(q, _, _)| q == *p).all(|(_, relayed, _)| *relayed))
            .copied()
            .collect();
        // A concrete listen address is also an external one: list each once.
        let mut listen: Vec<Multiaddr> =
            self.swarm.listeners().cloned().chain(self.swarm.external_addresses().cloned()).collect();
        listen.sort();
        listen.dedup();
        SwarmStatus { listen, peers, relayed, routing_table, stored_records }
    }
}
