//! Publishing: this zone's claim and its users' records, put when the
//! node first meets the mesh and renewed every `republish`; puts whose
//! walk timed out are settled here (done once a holder acknowledged,
//! otherwise put once more straight to the closest peers known).

use std::sync::atomic::Ordering;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, Quorum, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::PeerId;
use signalling::{Address, UserName, ZoneName};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::handover::REPLICATION;
use super::swarm::{Cmd, SwarmTask};
use super::{lock, peer_of, wall_ms, ClaimState, Mesh};
use crate::record::{node_hex, MeshRecord, SignedZoneClaim, SignedZoneHandover, UserRecord, ZoneClaim};
use crate::store::expiry_instant;

/// User records put at once when publishing.
const PARALLEL_PUTS: usize = 8;
/// How soon a publication with provisional puts is made again.
const PROVISIONAL_AGAIN: Duration = Duration::from_secs(60);

impl Mesh {
    /// Publishes (and keeps renewing) the record of a local user.
    pub async fn publish_user(&self, name: UserName) {
        lock(&self.shared.users).insert(name.clone());
        let held = matches!(*lock(&self.shared.claim), Some(ClaimState::Held));
        if held || self.holds_locally() {
            if let Some(claim) = self.own_claim().await {
                self.put_user(&name, &claim).await;
            }
        }
    }

    /// Stops renewing a removed user's record (it lapses at its expiry).
    pub fn unpublish_user(&self, name: &UserName) {
        lock(&self.shared.users).remove(name);
    }

    /// Puts a record exactly as given, bypassing this node's own checks:
    /// for tests and tools. Receiving nodes validate it as any other.
    pub async fn put_raw(&self, record: &MeshRecord) -> Result<(), String> {
        self.put(record.key(), record.encode(), record.expires_at_ms()).await
    }

    async fn put(&self, key: Vec<u8>, value: Vec<u8>, expires_at_ms: u64) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.cmd.send(Cmd::Put { key, value, expires_at_ms, reply }).await.map_err(|_| "mesh stopped".to_string())?;
        rx.await.map_err(|_| "mesh stopped".to_string())?
    }

    fn sign_claim(&self, addrs: Vec<String>) -> SignedZoneClaim {
        let first = self.shared.first_claimed_at_ms.load(Ordering::Relaxed);
        sign_claim(&self.key, &self.zone, addrs, self.config.claim_ttl, first, self.config.handover.as_ref())
    }

    async fn own_claim(&self) -> Option<SignedZoneClaim> {
        let addrs = self.advertised().await;
        Some(self.sign_claim(addrs))
    }

    /// Addresses to put in records: listen and external addresses, with
    /// unspecified ones left out.
    async fn advertised(&self) -> Vec<String> {
        let status = self.swarm_status().await;
        let mut out: Vec<String> = status
            .listen
            .iter()
            .filter(|a| !a.iter().any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_unspecified())))
            .map(|a| a.to_string())
            .collect();
        out.extend(self.config.external.iter().map(|a| a.to_string()));
        out.sort();
        out.dedup();
        out.truncate(crate::record::MAX_ADDRS);
        out
    }

    async fn put_user(&self, name: &UserName, claim: &SignedZoneClaim) -> bool {
        let now = wall_ms();
        let rec = UserRecord {
            user: Address::new(name.clone(), self.zone.clone()),
            node: claim.claim.node.clone(),
            addrs: claim.claim.addrs.clone(),
            seq: now,
            issued_at_ms: now,
            expires_at_ms: now + self.config.user_ttl.as_millis() as u64,
        }
        .sign(&self.key, claim.clone());
        let rec = MeshRecord::User(rec);
        match self.put(rec.key(), rec.encode(), rec.expires_at_ms()).await {
            Ok(()) => true,
            Err(e) => {
                debug!(user = %name, error = %e, "publishing user record failed");
                false
            }
        }
    }

    /// Claims the zone and publishes every user; renews before expiry.
    pub(super) async fn publisher(self) {
        let first = self.config.stretch(Duration::from_millis(500));
        let most = self.config.stretch(Duration::from_secs(30));
        let mut backoff = first;
        loop {
            // A node with no mesh peer yet (still dialling its bootstrap
            // peers, or the first of its mesh) would fail every put at once
            // and back off further each time; it waits for its first peer
            // instead.
            self.until_routable().await;
            let wait = match self.publish_all().await {
                Ok(()) => {
                    self.shared.published_at_ms.store(wall_ms(), Ordering::Relaxed);
                    backoff = first;
                    // A put that fell back reached only the closest peers a
                    // thin routing table knew: once the table has filled
                    // (a minute on), put everything again.
                    if self.shared.provisional.swap(false, Ordering::Relaxed) {
                        self.config.republish.min(self.config.stretch(PROVISIONAL_AGAIN))
                    } else {
                        self.config.republish
                    }
                }
                Err(why) => {
                    debug!(%why, "publishing records failed; retrying");
                    backoff = (backoff * 2).min(most);
                    backoff
                }
            };
            tokio::time::sleep(wait).await;
            if self.cmd.is_closed() {
                return;
            }
        }
    }

    /// Returns once a connected mesh peer has been identified. Meanwhile a
    /// node given no peer to join through (the first zone of a mesh) holds
    /// its own claim and its users' records in its own store, renewed as
    /// often as it republishes,
    /// so that a newcomer asking it finds the zone taken. A node given
    /// bootstrap peers or relays waits for them instead: the mesh may hold
    /// its name already, and a claim held here first would refuse the
    /// holder.
    async fn until_routable(&self) {
        let mut held_locally: Option<tokio::time::Instant> = None;
        loop {
            let changed = self.shared.routable_changed.notified();
            if self.shared.routable.load(Ordering::Acquire) || self.cmd.is_closed() {
                return;
            }
            if self.holds_locally() && held_locally.is_none_or(|at| at.elapsed() >= self.config.republish) {
                held_locally = Some(tokio::time::Instant::now());
                let _ = self.shared.first_claimed_at_ms.compare_exchange(
                    0,
                    wall_ms(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                if let Some(claim) = self.own_claim().await {
                    let rec = MeshRecord::Zone(claim.clone());
                    // With no peer the put ends at once, stored here only;
                    // its users' records too, so that a newcomer asking it
                    // before it has admitted one finds them.
                    let _ = self.put(rec.key(), rec.encode(), rec.expires_at_ms()).await;
                    let users: Vec<UserName> = lock(&self.shared.users).iter().cloned().collect();
                    for user in users {
                        self.put_user(&user, &claim).await;
                    }
                }
            }
            // Bounded, so a stopped mesh is noticed.
            let _ = tokio::time::timeout(self.config.stretch(Duration::from_secs(5)), changed).await;
        }
    }

    /// Whether this node holds its records in its own store only: the
    /// first zone of a mesh (no bootstrap peer or relay given), with no
    /// peer in its routing table yet and no other key holding its zone.
    fn holds_locally(&self) -> bool {
        let first_of_mesh = self.config.bootstrap.is_empty() && self.config.relays.is_empty();
        let taken = matches!(*lock(&self.shared.claim), Some(ClaimState::Taken { .. }));
        first_of_mesh && !taken && !self.shared.routable.load(Ordering::Acquire)
    }

    async fn publish_all(&self) -> Result<(), String> {
        // First claim wins: if a live claim by another key exists, keep off.
        // Once this node holds its zone it keeps renewing it: honest nodes
        // refuse any later claim, so another claim can only come from a
        // rogue answering lookups, and must not talk the holder out of it.
        let held = matches!(*lock(&self.shared.claim), Some(ClaimState::Held));
        let holder = if held { None } else { self.resolve_claim_fresh().await };
        // The key this one took the zone from by a hand-over holds it only
        // until this claim reaches its holders.
        let from = self.config.handover.as_ref().map(|h| h.handover.from.as_str());
        if let Some(h) = holder.filter(|h| h.claim.node != node_hex(&self.key) && Some(h.claim.node.as_str()) != from) {
            let by = peer_of(&h.claim.node).map(|p| p.to_string()).unwrap_or_default();
            if *lock(&self.shared.claim) != Some(ClaimState::Taken { by: by.clone() }) {
                warn!(zone = %self.zone, %by, "zone name is held by another node; not claiming it");
            }
            *lock(&self.shared.claim) = Some(ClaimState::Taken { by });
            return Err("zone taken".into());
        }
        // The zone's history starts with this node's first claim of it.
        let _ = self.shared.first_claimed_at_ms.compare_exchange(0, wall_ms(), Ordering::Relaxed, Ordering::Relaxed);
        let claim = self.own_claim().await.ok_or("mesh stopped")?;
        let rec = MeshRecord::Zone(claim.clone());
        self.put(rec.key(), rec.encode(), rec.expires_at_ms()).await?;
        if *lock(&self.shared.claim) != Some(ClaimState::Held) {
            info!(zone = %self.zone, "zone claimed");
        }
        *lock(&self.shared.claim) = Some(ClaimState::Held);
        let users: Vec<UserName> = lock(&self.shared.users).iter().cloned().collect();
        // A few puts at a time: a zone of hundreds of users renews in a
        // fraction of the time one after another would take.
        let puts: Vec<_> = users.iter().map(|u| self.put_user(u, &claim)).collect();
        let done: Vec<bool> = futures::stream::iter(puts).buffer_unordered(PARALLEL_PUTS).collect().await;
        let failed = done.iter().filter(|ok| !**ok).count();
        if failed > 0 {
            return Err(format!("{failed} user records not published"));
        }
        Ok(())
    }

    /// Looks the zone's claim up in the mesh (no cache), choosing among
    /// conflicting valid claims the one most nodes hold.
    async fn resolve_claim_fresh(&self) -> Option<SignedZoneClaim> {
        let zone = self.zone.clone();
        self.lookup_claim(&zone).await
    }
}

/// This node's claim of `zone`, signed now with `key`, listing `addrs`,
/// lasting `ttl`; `first_claimed_at_ms` is when this key first claimed the
/// zone (0: now). A claim made under a hand-over carries it, and the
/// zone's first claim as the hand-over states it.
pub(super) fn sign_claim(
    key: &SigningKey,
    zone: &ZoneName,
    addrs: Vec<String>,
    ttl: Duration,
    first_claimed_at_ms: u64,
    handover: Option<&SignedZoneHandover>,
) -> SignedZoneClaim {
    let now = wall_ms();
    let first = match handover {
        Some(h) => h.handover.first_claimed_at_ms,
        None if first_claimed_at_ms == 0 => now,
        None => first_claimed_at_ms.min(now),
    };
    ZoneClaim {
        zone: zone.clone(),
        node: node_hex(key),
        addrs,
        seq: now,
        issued_at_ms: now,
        expires_at_ms: now + ttl.as_millis() as u64,
        first_claimed_at_ms: Some(first),
        handover: handover.cloned(),
    }
    .sign(key)
}

impl SwarmTask {
    /// Starts a put of `value` under `key` to the closest peers.
    pub(super) fn start_put(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
        expires_at_ms: u64,
        reply: oneshot::Sender<Result<(), String>>,
    ) {
        let mut record = kad::Record::new(RecordKey::new(&key), value);
        record.expires = Some(expiry_instant(expires_at_ms));
        record.publisher = Some(*self.swarm.local_peer_id());
        match self.swarm.behaviour_mut().kad.put_record(record, Quorum::One) {
            Ok(id) => {
                self.puts.insert(id, (reply, false));
            }
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }

    /// Ends one of this node's puts. A put whose walk to the closest peers
    /// timed out (a busy mesh, a few slow peers on the way) fails in libp2p
    /// even when it reached a holder, or before it reached any: the first
    /// counts as done; the second is put once more, straight to the
    /// closest peers this node knows, and hand-overs carry it on as those
    /// meet closer nodes.
    pub(super) fn put_done(
        &mut self,
        r: kad::PutRecordResult,
        reply: oneshot::Sender<Result<(), String>>,
        fallen_back: bool,
    ) {
        let err = match r {
            Err(kad::PutRecordError::Timeout { success, .. }) if !success.is_empty() => None,
            Ok(_) => None,
            Err(e) => Some(e),
        };
        let Some(err) = err else {
            if fallen_back {
                // Stored, but only where this node's thin view of the mesh
                // pointed: provisional, to be put again soon.
                self.shared.provisional_puts.fetch_add(1, Ordering::Relaxed);
                self.shared.provisional.store(true, Ordering::Relaxed);
            }
            let _ = reply.send(Ok(()));
            return;
        };
        let kad = &mut self.swarm.behaviour_mut().kad;
        let record = kad.store_mut().get(err.key()).map(|r| r.into_owned());
        let target = kad::KBucketKey::new(err.key().clone());
        let peers: Vec<PeerId> =
            kad.get_closest_local_peers(&target).take(REPLICATION).map(|k| *k.preimage()).collect();
        match record {
            Some(record) if !fallen_back && !peers.is_empty() => {
                debug!(error = %err, peers = peers.len(), "put timed out; putting to the closest peers known");
                let id = kad.put_record_to(record, peers.into_iter(), Quorum::One);
                self.puts.insert(id, (reply, true));
            }
            _ => {
                let _ = reply.send(Err(err.to_string()));
            }
        }
    }
}
