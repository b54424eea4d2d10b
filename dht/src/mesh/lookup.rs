//! Lookups: walks of the DHT for a key, their early stops (the first
//! valid user record; three agreeing holders of a zone claim), the
//! resolution of users and zones on top of them with caching, the retry
//! of a walk cut short, and the error kinds a caller is told.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use libp2p::core::Multiaddr;
use libp2p::kad::{self, GetRecordOk, RecordKey};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use signalling::{Address, ZoneName};
use tokio::sync::oneshot;
use tracing::debug;

use super::handover::REPLICATION;
use super::swarm::{Cmd, SwarmTask};
use super::{lock, peer_of, wall_ms, Mesh, RouteError};
use crate::record::{user_key, validate, zone_key, MeshRecord, RecordError, SignedZoneClaim};

/// What one DHT lookup cost: Kademlia's statistics of the query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupStats {
    /// Requests the query sent in all (it runs until the closest peers to
    /// the key have answered).
    pub requests: u32,
    /// Requests answered.
    pub successes: u32,
    /// Requests failed or timed out.
    pub failures: u32,
    /// Requests sent before the first record arrived: `Some(0)` when this
    /// node held the record, `None` when none was found.
    pub requests_to_first: Option<u32>,
    /// Milliseconds until the first record arrived.
    pub first_ms: Option<u64>,
    /// Milliseconds the whole query took.
    pub total_ms: u64,
    /// Records returned.
    pub records: u32,
    /// Whether the query was stopped as soon as it had enough records
    /// (rather than asking every one of the closest peers).
    pub early: bool,
    /// Whether the query ended before it had answers from the peers
    /// closest to the key: it ran out of time, or fewer than the
    /// replication factor (20) of the peers it asked answered while some
    /// were still silent (past Kademlia's answer timeout; peers that
    /// refused or failed outright do not count, unless no peer answered
    /// at all or there was none to ask). Finding nothing then
    /// says the mesh was too slow or partly cut off, not that the record
    /// is absent.
    pub incomplete: bool,
    /// The zone-claim query that ran beside a user lookup: requests sent
    /// (0 when the claim came from the cache).
    #[serde(default)]
    pub claim_requests: u32,
    /// Of those, requests answered.
    #[serde(default)]
    pub claim_successes: u32,
    /// Claims the query returned, valid or not.
    #[serde(default)]
    pub claim_records: u32,
}

/// When a lookup has found enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Enough {
    /// Ask every one of the closest peers (tools, and the fallback when
    /// an early answer did not hold up).
    All,
    /// Stop at the first record that is well-formed, signed by its node
    /// and unexpired (user records: checked against the zone's claim
    /// afterwards, with a full lookup if that fails).
    FirstValid,
    /// Stop once this many valid records from other nodes name the same
    /// node (zone claims: a quorum of holders rather than the first voice;
    /// this node's own copy does not count).
    Agree(usize),
}

/// Holders of a zone claim that must agree before a lookup stops early.
pub(super) const CLAIM_QUORUM: usize = 3;

/// Zones and users cached at most; past that the cache starts afresh.
const MAX_CACHED: usize = 4096;

/// A lookup under way.
pub(super) struct PendingGet {
    key: Vec<u8>,
    /// The values found so far.
    values: Vec<Vec<u8>>,
    stats: LookupStats,
    enough: Enough,
    /// Valid records found so far, per node they name.
    votes: HashMap<String, usize>,
    done: GetDone,
}

/// What happens when a lookup ends.
pub(super) enum GetDone {
    /// Its values and statistics go to whoever asked.
    Reply(oneshot::Sender<(Vec<Vec<u8>>, LookupStats)>),
    /// It checked a zone's first claim a peer offered (see
    /// `SwarmTask::verify_first_claim`).
    VerifyClaim { source: PeerId, ip: Option<std::net::IpAddr>, record: Box<kad::Record> },
}

impl PendingGet {
    pub(super) fn new(key: Vec<u8>, enough: Enough, done: GetDone) -> Self {
        Self { key, values: Vec::new(), stats: LookupStats::default(), enough, votes: HashMap::new(), done }
    }

    /// Takes one found value; whether the lookup now has enough.
    fn found(&mut self, value: Vec<u8>) -> bool {
        let node = match self.enough {
            Enough::All => None,
            Enough::FirstValid | Enough::Agree(_) => {
                validate(&self.key, &value, wall_ms(), None, None).ok().map(|r| r.node().to_owned())
            }
        };
        if self.values.len() < 32 {
            self.values.push(value);
        }
        let Some(node) = node else { return false };
        let votes = self.votes.entry(node).or_default();
        *votes += 1;
        match self.enough {
            Enough::All => false,
            Enough::FirstValid => true,
            Enough::Agree(n) => *votes >= n,
        }
    }
}

/// The claim a lookup settles on, among the valid claims it found (per
/// node key: how many holders returned it, and its newest copy): the one
/// most holders returned; between as many, the zone's oldest claim (when
/// first claimed, which renewals keep, not when last issued, which a rogue
/// can back-date); then the lower key, so every node settles alike. A key
/// that handed the zone to another key whose claim was found is out of the
/// running: holders that have not yet seen the new claim still return the
/// old one.
fn best_claim(votes: HashMap<String, (usize, SignedZoneClaim)>) -> Option<SignedZoneClaim> {
    use std::cmp::Reverse;
    let retired: std::collections::HashSet<String> =
        votes.values().filter_map(|(_, c)| c.handed_from().map(str::to_owned)).collect();
    votes
        .into_values()
        .filter(|(_, c)| !retired.contains(&c.claim.node))
        .max_by_key(|(n, c)| (*n, Reverse(c.claim.first_claimed()), Reverse(c.claim.node.clone())))
        .map(|(_, c)| c)
}

impl Mesh {
    /// Every valid-looking record the mesh returns under `key`, decoded but
    /// not judged: for tests and tools.
    pub async fn get_raw(&self, key: Vec<u8>) -> Vec<MeshRecord> {
        self.get(key).await.iter().filter_map(|v| MeshRecord::decode(v).ok()).collect()
    }

    async fn get(&self, key: Vec<u8>) -> Vec<Vec<u8>> {
        self.get_with_stats(key, Enough::All).await.0
    }

    async fn get_with_stats(&self, key: Vec<u8>, enough: Enough) -> (Vec<Vec<u8>>, LookupStats) {
        self.shared.lookups.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        // A swarm that is gone (stopped, before or during the walk) asked
        // nobody: that is a lookup cut short, not an answer.
        let gone = || (Vec::new(), LookupStats { incomplete: true, ..LookupStats::default() });
        // Once stopped, no walk starts: a swarm winding down may still take
        // the command and never answer it.
        if self.shared.stopped.load(Ordering::Acquire) || self.cmd.send(Cmd::Get { key, enough, reply }).await.is_err()
        {
            return gone();
        }
        let found = rx.await.unwrap_or_else(|_| gone());
        if found.0.is_empty() {
            self.shared.failed_lookups.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    pub(super) async fn lookup_claim(&self, zone: &ZoneName) -> Option<SignedZoneClaim> {
        self.lookup_claim_with_stats(zone).await.0
    }

    /// [`Self::lookup_claim`], also returning the query's statistics
    /// (whose `incomplete` tells whether a lookup that found nothing was
    /// cut short).
    async fn lookup_claim_with_stats(&self, zone: &ZoneName) -> (Option<SignedZoneClaim>, LookupStats) {
        let key = zone_key(zone);
        let now = wall_ms();
        let mut votes: HashMap<String, (usize, SignedZoneClaim)> = HashMap::new();
        // Stops once CLAIM_QUORUM holders agree; otherwise the query asks
        // every one of the closest peers and the majority decides.
        let (values, stats) = self.get_with_stats(key.clone(), Enough::Agree(CLAIM_QUORUM)).await;
        for value in values {
            match validate(&key, &value, now, None, None) {
                Ok(MeshRecord::Zone(c)) => {
                    let e = votes.entry(c.claim.node.clone()).or_insert((0, c.clone()));
                    e.0 += 1;
                    if c.claim.seq > e.1.claim.seq {
                        e.1 = c;
                    }
                }
                Ok(MeshRecord::User(_)) => self.shared.rejections.count(&RecordError::KeyMismatch),
                Err(e) => self.shared.rejections.count(&e),
            }
        }
        let Some(best) = best_claim(votes) else {
            return (None, stats);
        };
        let mut cache = lock(&self.shared.claim_cache);
        // Bounded: the zones a node looks up include those other nodes'
        // requests name.
        if cache.len() >= MAX_CACHED && !cache.contains_key(zone) {
            cache.clear();
        }
        cache.insert(zone.clone(), (best.clone(), Instant::now()));
        drop(cache);
        (Some(best), LookupStats { incomplete: false, ..stats })
    }

    /// The claim of `zone`, from the cache or the mesh.
    pub async fn zone_claim(&self, zone: &ZoneName) -> Option<SignedZoneClaim> {
        self.zone_claim_with_stats(zone).await.0
    }

    /// [`Self::zone_claim`], also returning the statistics of the lookup
    /// (`None`: the claim came from the cache).
    async fn zone_claim_with_stats(&self, zone: &ZoneName) -> (Option<SignedZoneClaim>, Option<LookupStats>) {
        let ttl = self.config.cache_ttl * 5;
        let cached =
            lock(&self.shared.claim_cache).get(zone).filter(|(_, at)| at.elapsed() < ttl).map(|(c, _)| c.clone());
        match cached {
            Some(c) if c.claim.expires_at_ms > wall_ms() => (Some(c), None),
            _ => {
                let (claim, stats) = self.lookup_claim_with_stats(zone).await;
                (claim, Some(stats))
            }
        }
    }

    /// Whether `peer` is the node holding `zone` (to check who may speak
    /// for that zone's users).
    pub async fn holds_zone(&self, peer: PeerId, zone: &ZoneName) -> bool {
        let held = |c: &SignedZoneClaim| peer_of(&c.claim.node) == Some(peer);
        match self.zone_claim(zone).await {
            Some(c) if held(&c) => true,
            // A stale cache may name a previous holder: look again once.
            Some(_) => self.lookup_claim(zone).await.is_some_and(|c| held(&c)),
            None => false,
        }
    }

    /// Finds `user`'s home node: one lookup of its record (cached), checked
    /// against the zone's claim (cached longer).
    ///
    /// A lookup the closest nodes did not all answer
    /// ([`RouteError::Incomplete`]: a slow or churning mesh) is walked once
    /// more before it is given up.
    pub async fn resolve(&self, user: &Address) -> Result<(PeerId, Vec<Multiaddr>), RouteError> {
        match self.resolve_with_stats(user).await.0 {
            // A second walk that asks fewer peers (the silent ones may have
            // left the routing table meanwhile) is no more the closest
            // nodes' word than the first: "unknown" would be a guess.
            Err(RouteError::Incomplete) => match self.resolve_with_stats(user).await.0 {
                Err(RouteError::UnknownZone | RouteError::UnknownUser) => Err(RouteError::Incomplete),
                again => again,
            },
            found => found,
        }
    }

    /// [`Mesh::resolve`], also returning what the lookup of the user's
    /// record cost (`None` when it came from the cache): for the simulator
    /// and tools.
    pub async fn resolve_with_stats(
        &self,
        user: &Address,
    ) -> (Result<(PeerId, Vec<Multiaddr>), RouteError>, Option<LookupStats>) {
        match self.lookup_user(user).await {
            // A lookup that a stop cut off (its swarm gone mid-walk) ended
            // incomplete for that reason alone.
            (Err(RouteError::Incomplete), stats) if self.shared.stopped.load(Ordering::Acquire) => {
                (Err(RouteError::Stopped), stats)
            }
            found => found,
        }
    }

    async fn lookup_user(&self, user: &Address) -> (Result<(PeerId, Vec<Multiaddr>), RouteError>, Option<LookupStats>) {
        let cached = lock(&self.shared.user_cache)
            .get(user)
            .filter(|(_, _, at)| at.elapsed() < self.config.cache_ttl)
            .map(|(p, a, _)| (*p, a.clone()));
        if let Some(hit) = cached {
            return (Ok(hit), None);
        }
        let key = user_key(user);
        let ((claim, claim_stats), (values, stats)) =
            tokio::join!(self.zone_claim_with_stats(&user.zone), self.get_with_stats(key.clone(), Enough::FirstValid));
        let with_claim = |s: LookupStats| match claim_stats {
            Some(c) => {
                LookupStats { claim_requests: c.requests, claim_successes: c.successes, claim_records: c.records, ..s }
            }
            None => s,
        };
        let claim = match claim {
            Some(claim) => claim,
            None if claim_stats.is_some_and(|c| c.incomplete) => {
                return (Err(RouteError::Incomplete), Some(with_claim(LookupStats { incomplete: true, ..stats })))
            }
            None => return (Err(RouteError::UnknownZone), Some(with_claim(stats))),
        };
        let mut best = self.best_user_record(user, &key, values, &claim);
        let mut stats = with_claim(stats);
        if best.is_none() && stats.early {
            // The first answer did not hold up against the zone's claim (a
            // stale or forged record): ask every one of the closest peers.
            let (values, full) = self.get_with_stats(key.clone(), Enough::All).await;
            stats = with_claim(full);
            best = self.best_user_record(user, &key, values, &claim);
        }
        let Some(rec) = best else {
            let why = if stats.incomplete { RouteError::Incomplete } else { RouteError::UnknownUser };
            return (Err(why), Some(stats));
        };
        let Some(peer) = peer_of(&rec.record.node) else { return (Err(RouteError::UnknownUser), Some(stats)) };
        let addrs: Vec<Multiaddr> = rec.record.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        let mut cache = lock(&self.shared.user_cache);
        if cache.len() >= MAX_CACHED && !cache.contains_key(user) {
            cache.clear();
        }
        cache.insert(user.clone(), (peer, addrs.clone(), Instant::now()));
        drop(cache);
        (Ok((peer, addrs)), Some(stats))
    }

    /// The newest of `values` that is a valid record of `user` under
    /// `claim`; counts the bad ones.
    fn best_user_record(
        &self,
        user: &Address,
        key: &[u8],
        values: Vec<Vec<u8>>,
        claim: &SignedZoneClaim,
    ) -> Option<crate::record::SignedUserRecord> {
        let now = wall_ms();
        let mut best: Option<crate::record::SignedUserRecord> = None;
        for value in values {
            match validate(key, &value, now, None, Some(claim)) {
                Ok(MeshRecord::User(u)) => {
                    if best.as_ref().is_none_or(|b| u.record.seq > b.record.seq) {
                        best = Some(u);
                    }
                }
                Ok(MeshRecord::Zone(_)) => self.shared.rejections.count(&RecordError::KeyMismatch),
                Err(e) => {
                    debug!(%user, error = %e, "lookup returned a bad record");
                    self.shared.rejections.count(&e);
                }
            }
        }
        best
    }

    /// Drops what is cached about `user` and its zone, after a failure.
    pub fn forget(&self, user: &Address) {
        lock(&self.shared.user_cache).remove(user);
        lock(&self.shared.claim_cache).remove(&user.zone);
    }
}

impl SwarmTask {
    /// Starts a walk for `key`; its values go to `reply`.
    pub(super) fn start_get(
        &mut self,
        key: Vec<u8>,
        enough: Enough,
        reply: oneshot::Sender<(Vec<Vec<u8>>, LookupStats)>,
    ) {
        let id = self.swarm.behaviour_mut().kad.get_record(RecordKey::new(&key));
        self.gets.insert(id, PendingGet::new(key, enough, GetDone::Reply(reply)));
    }

    /// A step of a walk: a record found, or the walk's end.
    pub(super) fn get_progressed(
        &mut self,
        id: kad::QueryId,
        result: kad::GetRecordResult,
        step: &kad::ProgressStep,
        stats: &kad::QueryStats,
    ) {
        match result {
            Ok(GetRecordOk::FoundRecord(found)) => {
                let mut enough = false;
                if let Some(get) = self.gets.get_mut(&id) {
                    let s = &mut get.stats;
                    if s.requests_to_first.is_none() {
                        s.requests_to_first = Some(stats.num_requests());
                        s.first_ms = Some(stats.duration().map_or(0, |d| d.as_millis() as u64));
                    }
                    // A zone's holder is what other nodes answer: this
                    // node's own copy may be the first claim a rogue
                    // pushed to it when it was new.
                    let own_copy = found.peer.is_none() && matches!(get.enough, Enough::Agree(_));
                    if !own_copy {
                        enough = get.found(found.record.value);
                    }
                }
                if enough && !step.last {
                    if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        q.finish();
                    }
                    if let Some(get) = self.gets.get_mut(&id) {
                        get.stats.early = true;
                    }
                }
                if enough || step.last {
                    self.finish_get(id, stats);
                }
            }
            r if step.last => {
                if matches!(r, Err(kad::GetRecordError::Timeout { .. })) {
                    if let Some(get) = self.gets.get_mut(&id) {
                        get.stats.incomplete = true;
                    }
                }
                self.finish_get(id, stats)
            }
            _ => {}
        }
    }

    fn finish_get(&mut self, id: kad::QueryId, stats: &kad::QueryStats) {
        let Some(PendingGet { values, stats: mut s, votes, done, .. }) = self.gets.remove(&id) else { return };
        match done {
            GetDone::Reply(reply) => {
                s.requests = stats.num_requests();
                s.successes = stats.num_successes();
                s.failures = stats.num_failures();
                s.total_ms = stats.duration().map_or(0, |d| d.as_millis() as u64);
                s.records = values.len() as u32;
                // Kademlia's walk also ends when the peers it could ask ran
                // out, or when every one it waits for is past its own
                // 10 s answer timeout (not configurable): an answer from
                // fewer than REPLICATION peers while some are still silent
                // is not the closest peers' word. Peers that refused or
                // failed outright (a node that left) do not count: in a
                // small mesh the walk ends with them as a matter of course.
                // A walk stopped early found what it wanted; a walk that
                // heard from no peer (or had none to ask: a node cut off
                // from the mesh, its routing table empty) has nobody's word.
                let silent = stats.num_pending() > 0 || s.successes == 0;
                s.incomplete |= !s.early && silent && (s.successes as usize) < REPLICATION;
                let _ = reply.send((values, s));
            }
            GetDone::VerifyClaim { source, ip, record } => self.verified(source, ip, *record, &votes),
        }
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::record::{node_hex, ZoneClaim};

    fn claim(seed: u8, issued: u64, first: Option<u64>) -> SignedZoneClaim {
        let k = SigningKey::from_bytes(&[seed; 32]);
        let zone = ZoneName::parse("sants").unwrap_or_else(|e| panic!("{e}"));
        let expires_at_ms = issued + 3_600_000;
        ZoneClaim {
            zone,
            node: node_hex(&k),
            addrs: vec![],
            seq: issued,
            issued_at_ms: issued,
            expires_at_ms,
            first_claimed_at_ms: first,
            handover: None,
        }
        .sign(&k)
    }

    #[test]
    fn a_back_dated_claim_loses_a_tie_to_the_zones_first_claim() {
        const DAY: u64 = 86_400_000;
        let now = 1_800_000_000_000;
        // The real holder first claimed the zone a month ago and renewed an
        // hour ago; the rogue back-dated its claim six days (a record may
        // live seven), in the first format (issued = first claimed) and in
        // the second.
        let real = claim(1, now - DAY / 24, Some(now - 30 * DAY));
        for rogue in [claim(2, now - 6 * DAY, None), claim(3, now - 6 * DAY, Some(now - 6 * DAY))] {
            let votes = HashMap::from([
                (real.claim.node.clone(), (2, real.clone())),
                (rogue.claim.node.clone(), (2, rogue.clone())),
            ]);
            assert_eq!(best_claim(votes), Some(real.clone()), "settled by when first claimed");
            // More holders still win outright.
            let votes = HashMap::from([
                (real.claim.node.clone(), (1, real.clone())),
                (rogue.claim.node.clone(), (2, rogue.clone())),
            ]);
            assert_eq!(best_claim(votes), Some(rogue));
        }
    }

    #[test]
    fn a_key_that_handed_the_zone_over_loses_to_its_successor() {
        use crate::record::ZoneHandover;
        let now = 1_800_000_000_000;
        let first = now - 86_400_000;
        let old = claim(1, now, Some(first));
        let new_key = SigningKey::from_bytes(&[2; 32]);
        let handover = ZoneHandover {
            zone: old.claim.zone.clone(),
            from: old.claim.node.clone(),
            to: node_hex(&new_key),
            first_claimed_at_ms: first,
            issued_at_ms: now,
        }
        .sign(&SigningKey::from_bytes(&[1; 32]));
        let mut body = claim(2, now, Some(first)).claim;
        body.handover = Some(handover);
        let new = body.sign(&new_key);
        // Most holders have not seen the new claim yet: still the new one.
        let votes =
            HashMap::from([(old.claim.node.clone(), (5, old.clone())), (new.claim.node.clone(), (1, new.clone()))]);
        assert_eq!(best_claim(votes), Some(new));
    }
}
