//! Signed mesh records: zone claims and user records.
//!
//! A *zone claim* binds a zone name to the node key that claimed it first.
//! A *user record* binds `name@zone` to that user's home node; it carries
//! the zone claim it relies on, so a validator can check it alone: the user
//! record and the claim are signed by the same node key, and the claim names
//! the user's zone.
//!
//! Signatures are ed25519 over a domain tag and the canonical JSON of the
//! record body (fields in declaration order, as this crate serialises them).
//! Validation ([`validate`]) also enforces first-claim-wins, sequence numbers
//! (no replays) and expiry, against what the validating node already holds.
//!
//! Why one file of ~600 lines: the record formats, their signatures and
//! `validate` are one security argument, read in one place; a quarter of
//! the file is its tests.

use std::sync::atomic::{AtomicU64, Ordering};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use signalling::{Address, ZoneName};

/// Largest encoded record accepted, in bytes.
pub const MAX_RECORD_BYTES: usize = 8 * 1024;
/// Most addresses a record may list.
pub const MAX_ADDRS: usize = 8;
/// Longest address, in bytes.
pub const MAX_ADDR_LEN: usize = 256;
/// How far in the future `issued_at_ms` may be (clock skew), in ms.
pub const MAX_SKEW_MS: u64 = 5 * 60 * 1000;
/// Longest lifetime a record may claim, in ms (7 days).
pub const MAX_LIFETIME_MS: u64 = 7 * 24 * 3600 * 1000;

const ZONE_TAG: &[u8] = b"xarxa/zone-claim/v1\0";
/// Claims that carry `first_claimed_at_ms` (the second format).
const ZONE_TAG_V2: &[u8] = b"xarxa/zone-claim/v2\0";
const USER_TAG: &[u8] = b"xarxa/user-record/v1\0";
const HANDOVER_TAG: &[u8] = b"xarxa/zone-handover/v1\0";

/// The body of a zone claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneClaim {
    /// The zone.
    pub zone: ZoneName,
    /// The claiming node's ed25519 public key (32 bytes, hex).
    pub node: String,
    /// Multiaddresses where the node listens.
    pub addrs: Vec<String>,
    /// Increases with every renewal.
    pub seq: u64,
    /// When signed, ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// When it lapses, ms since the Unix epoch.
    pub expires_at_ms: u64,
    /// When this key first claimed the zone, ms since the Unix epoch: the
    /// same in every renewal, and what settles a tie between claims that
    /// as many nodes hold (the older claim wins). `None` in claims of the
    /// first format, which are signed under their own tag and still read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_claimed_at_ms: Option<u64>,
    /// The hand-over by which this key took the zone from the key that
    /// held it (zone key rotation), carried by every claim of the new key.
    /// Signed inside the claim, so it cannot be stripped or swapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<SignedZoneHandover>,
}

/// A zone's hand-over from one node key to another: what a volunteer who
/// moves to a new machine (or replaces a key) signs with the old key. Nodes
/// that hold the old key's claim accept the new key's claim carrying it,
/// and from then on refuse the old key's claims ([`RecordError::KeyRetired`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneHandover {
    /// The zone.
    pub zone: ZoneName,
    /// The key giving the zone up (hex).
    pub from: String,
    /// The key taking it (hex).
    pub to: String,
    /// When the zone was first claimed (by `from`, or before it): the new
    /// key's claims keep it, so the zone's age survives the move.
    pub first_claimed_at_ms: u64,
    /// When signed, ms since the Unix epoch.
    pub issued_at_ms: u64,
}

/// A hand-over with the old key's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedZoneHandover {
    /// The hand-over.
    pub handover: ZoneHandover,
    /// ed25519 signature by `handover.from`, hex.
    pub sig: String,
}

impl ZoneHandover {
    /// Signs this hand-over with `key` (which must be `self.from`'s key).
    pub fn sign(self, key: &SigningKey) -> SignedZoneHandover {
        let sig = sign(key, HANDOVER_TAG, &self);
        SignedZoneHandover { handover: self, sig }
    }
}

impl SignedZoneHandover {
    /// Checks the signature and that it names two keys.
    pub fn verify(&self) -> Result<(), RecordError> {
        verify(&self.handover.from, HANDOVER_TAG, &self.handover, &self.sig)?;
        hex_decode(&self.handover.to).filter(|k| k.len() == 32).ok_or(RecordError::BadSignature)?;
        if self.handover.from == self.handover.to {
            return Err(RecordError::Malformed("a hand-over to the same key".into()));
        }
        Ok(())
    }
}

/// A zone claim with its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedZoneClaim {
    /// The claim.
    pub claim: ZoneClaim,
    /// ed25519 signature by `claim.node`, hex.
    pub sig: String,
}

/// The body of a user record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user.
    pub user: Address,
    /// The home node's ed25519 public key (hex).
    pub node: String,
    /// Multiaddresses where the home node listens.
    pub addrs: Vec<String>,
    /// Increases with every renewal.
    pub seq: u64,
    /// When signed, ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// When it lapses, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

/// A user record with its signature and the zone claim it relies on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedUserRecord {
    /// The record.
    pub record: UserRecord,
    /// ed25519 signature by `record.node`, hex.
    pub sig: String,
    /// The claim of `record.user.zone` by the same node.
    pub claim: SignedZoneClaim,
}

/// Any record stored in the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MeshRecord {
    /// A zone claim.
    Zone(SignedZoneClaim),
    /// A user record.
    User(SignedUserRecord),
}

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// Not a record, or over the limits on addresses.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// A value longer than [`MAX_RECORD_BYTES`].
    #[error("record of {0} bytes is over the size limit")]
    TooLarge(usize),
    /// Stored under a key that does not match its content.
    #[error("record stored under the wrong key")]
    KeyMismatch,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Expired, or issued too far in the future, or living too long.
    #[error("expired or not yet valid")]
    Expired,
    /// A sequence number not above the one already held (a replay).
    #[error("replayed: sequence {got} is not above {have}")]
    Replayed {
        /// The record's sequence.
        got: u64,
        /// The one held.
        have: u64,
    },
    /// The zone is held by another key whose claim has not expired.
    #[error("zone is claimed by another node")]
    ZoneTaken,
    /// A user record signed by a key that does not hold its zone.
    #[error("user record not signed by the zone's node")]
    WrongZoneKey,
    /// A renewal that changes when the zone was first claimed, or a claim
    /// first made after it was issued.
    #[error("claim history rewritten")]
    HistoryRewritten,
    /// A first claim by a key that already holds as many zones as a key
    /// may.
    #[error("the key holds too many zones")]
    TooManyZones,
    /// A first claim of a new name from a peer or address that brought in
    /// more new names than its share.
    #[error("too many new zone names from one peer or address")]
    ClaimRateLimited,
    /// A record by a key that handed its zone over to another key.
    #[error("the key handed its zone over to another key")]
    KeyRetired,
}

impl RecordError {
    /// The counter this refusal is counted under (as `mesh status` names
    /// it).
    pub fn cause(&self) -> &'static str {
        match self {
            Self::Malformed(_) | Self::KeyMismatch => "malformed",
            Self::TooLarge(_) => "too_large",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::Replayed { .. } => "replayed",
            Self::ZoneTaken => "zone_taken",
            Self::WrongZoneKey => "wrong_zone_key",
            Self::HistoryRewritten => "history_rewritten",
            Self::TooManyZones => "too_many_zones",
            Self::ClaimRateLimited => "claim_rate_limited",
            Self::KeyRetired => "key_retired",
        }
    }
}

/// Counters of refused records, by cause.
#[derive(Debug, Default)]
pub struct Rejections {
    /// Malformed or wrong key.
    pub malformed: AtomicU64,
    /// Values over the size limit.
    pub too_large: AtomicU64,
    /// Bad signatures.
    pub bad_signature: AtomicU64,
    /// Expired or not yet valid.
    pub expired: AtomicU64,
    /// Replays.
    pub replayed: AtomicU64,
    /// Zone claims for a taken zone.
    pub zone_taken: AtomicU64,
    /// User records not signed by the zone's node.
    pub wrong_zone_key: AtomicU64,
    /// Renewals rewriting when the zone was first claimed.
    pub history_rewritten: AtomicU64,
    /// First claims by keys holding too many zones.
    pub too_many_zones: AtomicU64,
    /// New names past a peer's or an address's share.
    pub claim_rate_limited: AtomicU64,
    /// Records of keys that handed their zone over.
    pub key_retired: AtomicU64,
}

/// A snapshot of [`Rejections`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionCounts {
    /// Malformed or wrong key.
    pub malformed: u64,
    /// Values over the size limit (up to what a Kademlia message may
    /// carry, [`crate::behaviour::MAX_KAD_MESSAGE_BYTES`]).
    #[serde(default)]
    pub too_large: u64,
    /// Bad signatures.
    pub bad_signature: u64,
    /// Expired or not yet valid.
    pub expired: u64,
    /// Replays.
    pub replayed: u64,
    /// Zone claims for a taken zone.
    pub zone_taken: u64,
    /// User records not signed by the zone's node.
    pub wrong_zone_key: u64,
    /// Renewals rewriting when the zone was first claimed.
    #[serde(default)]
    pub history_rewritten: u64,
    /// First claims by keys holding too many zones (squatting).
    #[serde(default)]
    pub too_many_zones: u64,
    /// New zone names past a peer's or an address's share (squatting).
    #[serde(default)]
    pub claim_rate_limited: u64,
    /// Records of keys that handed their zone over (key rotation).
    #[serde(default)]
    pub key_retired: u64,
}

impl Rejections {
    /// Counts one refusal.
    pub fn count(&self, e: &RecordError) {
        let c = match e {
            RecordError::Malformed(_) | RecordError::KeyMismatch => &self.malformed,
            RecordError::TooLarge(_) => &self.too_large,
            RecordError::BadSignature => &self.bad_signature,
            RecordError::Expired => &self.expired,
            RecordError::Replayed { .. } => &self.replayed,
            RecordError::ZoneTaken => &self.zone_taken,
            RecordError::WrongZoneKey => &self.wrong_zone_key,
            RecordError::HistoryRewritten => &self.history_rewritten,
            RecordError::TooManyZones => &self.too_many_zones,
            RecordError::ClaimRateLimited => &self.claim_rate_limited,
            RecordError::KeyRetired => &self.key_retired,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The current counts.
    pub fn snapshot(&self) -> RejectionCounts {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RejectionCounts {
            malformed: g(&self.malformed),
            too_large: g(&self.too_large),
            bad_signature: g(&self.bad_signature),
            expired: g(&self.expired),
            replayed: g(&self.replayed),
            zone_taken: g(&self.zone_taken),
            wrong_zone_key: g(&self.wrong_zone_key),
            history_rewritten: g(&self.history_rewritten),
            too_many_zones: g(&self.too_many_zones),
            claim_rate_limited: g(&self.claim_rate_limited),
            key_retired: g(&self.key_retired),
        }
    }
}

/// The DHT key of a zone's claim.
pub fn zone_key(zone: &ZoneName) -> Vec<u8> {
    format!("/xarxa/zone/{zone}").into_bytes()
}

/// The DHT key of a user's record.
pub fn user_key(user: &Address) -> Vec<u8> {
    format!("/xarxa/user/{user}").into_bytes()
}

fn canonical<T: Serialize>(tag: &[u8], body: &T) -> Vec<u8> {
    let mut out = tag.to_vec();
    // Plain structs of strings and integers always serialise.
    out.extend(serde_json::to_vec(body).unwrap_or_default());
    out
}

fn sign(key: &SigningKey, tag: &[u8], body: &impl Serialize) -> String {
    hex_encode(&key.sign(&canonical(tag, body)).to_bytes())
}

fn verify(node_hex: &str, tag: &[u8], body: &impl Serialize, sig_hex: &str) -> Result<(), RecordError> {
    let key: [u8; 32] = hex_decode(node_hex).and_then(|b| b.try_into().ok()).ok_or(RecordError::BadSignature)?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| RecordError::BadSignature)?;
    let sig: [u8; 64] = hex_decode(sig_hex).and_then(|b| b.try_into().ok()).ok_or(RecordError::BadSignature)?;
    // `verify_strict` refuses the weak keys and non-canonical signatures that
    // plain `verify` lets through, so a valid record has one spelling only.
    key.verify_strict(&canonical(tag, body), &Signature::from_bytes(&sig)).map_err(|_| RecordError::BadSignature)
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Lower-case hex only, as `hex_encode` writes it: a key or a signature has
/// exactly one spelling, so a respelled copy is not a second key (which would
/// slip past the per-key zone bound) nor a second record.
fn hex_decode(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if b.len() % 2 != 0 || b.len() > 256 {
        return None;
    }
    b.chunks_exact(2).map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?)).collect()
}

/// The hex public key of a signing key, as records name it.
pub fn node_hex(key: &SigningKey) -> String {
    hex_encode(key.verifying_key().as_bytes())
}

fn check_times(issued: u64, expires: u64, now_ms: u64) -> Result<(), RecordError> {
    if expires <= now_ms || issued > now_ms + MAX_SKEW_MS || expires.saturating_sub(issued) > MAX_LIFETIME_MS {
        return Err(RecordError::Expired);
    }
    Ok(())
}

fn check_addrs(addrs: &[String]) -> Result<(), RecordError> {
    if addrs.len() > MAX_ADDRS || addrs.iter().any(|a| a.len() > MAX_ADDR_LEN) {
        return Err(RecordError::Malformed("too many or too long addresses".into()));
    }
    Ok(())
}

impl ZoneClaim {
    /// Signs this claim with `key` (which must be `self.node`'s key).
    pub fn sign(self, key: &SigningKey) -> SignedZoneClaim {
        let sig = sign(key, self.tag(), &self);
        SignedZoneClaim { claim: self, sig }
    }

    /// The signature's domain tag: one per format.
    fn tag(&self) -> &'static [u8] {
        if self.first_claimed_at_ms.is_some() {
            ZONE_TAG_V2
        } else {
            ZONE_TAG
        }
    }

    /// When the zone was first claimed by this key, as far as the claim
    /// says: `first_claimed_at_ms`, or for a claim of the first format
    /// (which does not say) when it was issued.
    pub fn first_claimed(&self) -> u64 {
        self.first_claimed_at_ms.unwrap_or(self.issued_at_ms)
    }
}

impl SignedZoneClaim {
    /// Checks the signature, times and sizes (not first-claim-wins).
    pub fn verify(&self, now_ms: u64) -> Result<(), RecordError> {
        check_addrs(&self.claim.addrs)?;
        verify(&self.claim.node, self.claim.tag(), &self.claim, &self.sig)?;
        check_times(self.claim.issued_at_ms, self.claim.expires_at_ms, now_ms)?;
        if self.claim.first_claimed() > self.claim.issued_at_ms {
            return Err(RecordError::HistoryRewritten);
        }
        if let Some(h) = &self.claim.handover {
            h.verify()?;
            if h.handover.zone != self.claim.zone || h.handover.to != self.claim.node {
                return Err(RecordError::Malformed("the hand-over is for another zone or key".into()));
            }
            if self.claim.first_claimed_at_ms != Some(h.handover.first_claimed_at_ms) {
                return Err(RecordError::HistoryRewritten);
            }
        }
        Ok(())
    }

    /// The key this claim's key took the zone from, if it took it by a
    /// hand-over.
    pub fn handed_from(&self) -> Option<&str> {
        self.claim.handover.as_ref().map(|h| h.handover.from.as_str())
    }
}

impl UserRecord {
    /// Signs this record with `key`, attaching `claim` (made by the same key).
    pub fn sign(self, key: &SigningKey, claim: SignedZoneClaim) -> SignedUserRecord {
        let sig = sign(key, USER_TAG, &self);
        SignedUserRecord { record: self, sig, claim }
    }
}

impl SignedUserRecord {
    /// Checks the record's and the claim's signatures, that one key made
    /// both, that the claim is for the user's zone, times and sizes.
    pub fn verify(&self, now_ms: u64) -> Result<(), RecordError> {
        check_addrs(&self.record.addrs)?;
        verify(&self.record.node, USER_TAG, &self.record, &self.sig)?;
        check_times(self.record.issued_at_ms, self.record.expires_at_ms, now_ms)?;
        self.claim.verify(now_ms)?;
        if self.claim.claim.node != self.record.node || self.claim.claim.zone != self.record.user.zone {
            return Err(RecordError::WrongZoneKey);
        }
        Ok(())
    }
}

impl MeshRecord {
    /// Decodes a stored value, with the size limit.
    pub fn decode(value: &[u8]) -> Result<Self, RecordError> {
        if value.len() > MAX_RECORD_BYTES {
            return Err(RecordError::TooLarge(value.len()));
        }
        serde_json::from_slice(value).map_err(|e| RecordError::Malformed(e.to_string()))
    }

    /// Encodes for storage.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The DHT key this record belongs under.
    pub fn key(&self) -> Vec<u8> {
        match self {
            Self::Zone(z) => zone_key(&z.claim.zone),
            Self::User(u) => user_key(&u.record.user),
        }
    }

    /// The node key that signed it.
    pub fn node(&self) -> &str {
        match self {
            Self::Zone(z) => &z.claim.node,
            Self::User(u) => &u.record.node,
        }
    }

    /// Its sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            Self::Zone(z) => z.claim.seq,
            Self::User(u) => u.record.seq,
        }
    }

    /// When it was signed, ms since the epoch.
    pub fn issued_at_ms(&self) -> u64 {
        match self {
            Self::Zone(z) => z.claim.issued_at_ms,
            Self::User(u) => u.record.issued_at_ms,
        }
    }

    /// When it lapses, ms since the epoch.
    pub fn expires_at_ms(&self) -> u64 {
        match self {
            Self::Zone(z) => z.claim.expires_at_ms,
            Self::User(u) => u.record.expires_at_ms,
        }
    }

    /// The addresses it lists.
    pub fn addrs(&self) -> &[String] {
        match self {
            Self::Zone(z) => &z.claim.addrs,
            Self::User(u) => &u.record.addrs,
        }
    }
}

/// Validates a record offered under `key`, against the record this node
/// already holds under that key (`existing`) and the claim it holds for the
/// record's zone (`zone_claim`, for user records). Returns the decoded
/// record if it may be stored or used.
pub fn validate(
    key: &[u8],
    value: &[u8],
    now_ms: u64,
    existing: Option<&MeshRecord>,
    zone_claim: Option<&SignedZoneClaim>,
) -> Result<MeshRecord, RecordError> {
    let rec = MeshRecord::decode(value)?;
    if rec.key() != key {
        return Err(RecordError::KeyMismatch);
    }
    match &rec {
        MeshRecord::Zone(z) => z.verify(now_ms)?,
        MeshRecord::User(u) => u.verify(now_ms)?,
    }
    // The zone's holder: the claim held for the zone (for a zone claim, the
    // existing record itself), if it is still live.
    let holder = match (&rec, existing) {
        (MeshRecord::Zone(_), Some(MeshRecord::Zone(old))) => Some(old),
        (MeshRecord::User(_), _) => zone_claim,
        _ => None,
    }
    .filter(|c| c.claim.expires_at_ms > now_ms);
    // The claim the offered record stands on: itself, or the one it carries.
    let offered = match &rec {
        MeshRecord::Zone(z) => z,
        MeshRecord::User(u) => &u.claim,
    };
    if let Some(h) = holder {
        // Another key holds the zone: refused, unless that key handed the
        // zone to this one.
        if h.claim.node != rec.node() && offered.handed_from() != Some(h.claim.node.as_str()) {
            return Err(match rec {
                _ if h.handed_from() == Some(rec.node()) => RecordError::KeyRetired,
                MeshRecord::Zone(_) => RecordError::ZoneTaken,
                MeshRecord::User(_) => RecordError::WrongZoneKey,
            });
        }
        // A hand-over passes the zone's age on as the holder's claim has
        // it: it cannot make the zone older.
        if h.claim.node != rec.node() && offered.claim.first_claimed() != h.claim.first_claimed() {
            return Err(RecordError::HistoryRewritten);
        }
    }
    if let Some(old) = existing.filter(|o| o.expires_at_ms() > now_ms && o.node() == rec.node()) {
        if rec.seq() < old.seq() || (rec.seq() == old.seq() && rec != *old) {
            return Err(RecordError::Replayed { got: rec.seq(), have: old.seq() });
        }
        // A renewal keeps the claim's history: once a claim says when the
        // zone was first claimed, every later one says the same.
        if let (MeshRecord::Zone(new), MeshRecord::Zone(old)) = (&rec, old) {
            if old.claim.first_claimed_at_ms.is_some_and(|f| new.claim.first_claimed_at_ms != Some(f)) {
                return Err(RecordError::HistoryRewritten);
            }
        }
    }
    if let (MeshRecord::User(u), Some(old)) = (&rec, existing) {
        // A live record of another node for this user stands unless the
        // offered record's claim is the one this node holds for the zone.
        if old.expires_at_ms() > now_ms
            && old.node() != u.record.node
            && holder.is_none()
            && u.claim.handed_from() != Some(old.node())
        {
            return Err(RecordError::WrongZoneKey);
        }
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn claim(k: &SigningKey, zone: &str, seq: u64) -> SignedZoneClaim {
        ZoneClaim {
            zone: ZoneName::parse(zone).expect("zone"),
            node: node_hex(k),
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
            seq,
            issued_at_ms: NOW,
            expires_at_ms: NOW + 3_600_000,
            first_claimed_at_ms: Some(NOW - 86_400_000),
            handover: None,
        }
        .sign(k)
    }

    fn user(k: &SigningKey, who: &str, seq: u64, c: SignedZoneClaim) -> SignedUserRecord {
        UserRecord {
            user: Address::parse(who).expect("addr"),
            node: node_hex(k),
            addrs: vec![],
            seq,
            issued_at_ms: NOW,
            expires_at_ms: NOW + 3_600_000,
        }
        .sign(k, c)
    }

    fn check(
        rec: &MeshRecord,
        existing: Option<&MeshRecord>,
        zc: Option<&SignedZoneClaim>,
    ) -> Result<MeshRecord, RecordError> {
        validate(&rec.key(), &rec.encode(), NOW, existing, zc)
    }

    #[test]
    fn zone_claims_first_wins_and_renew() {
        let (a, rogue) = (key(1), key(2));
        let first = MeshRecord::Zone(claim(&a, "sants", 1));
        assert!(check(&first, None, None).is_ok());
        let taken = MeshRecord::Zone(claim(&rogue, "sants", 99));
        assert_eq!(check(&taken, Some(&first), None), Err(RecordError::ZoneTaken));
        let renewal = MeshRecord::Zone(claim(&a, "sants", 2));
        assert!(check(&renewal, Some(&first), None).is_ok());
        assert_eq!(check(&first, Some(&renewal), None), Err(RecordError::Replayed { got: 1, have: 2 }));
        // Once the claim lapses, the name is free.
        let mut lapsed = claim(&a, "sants", 3);
        lapsed.claim.expires_at_ms = NOW - 1;
        assert!(check(&taken, Some(&MeshRecord::Zone(lapsed)), None).is_ok());
    }

    /// `new`'s claim of `zone` under a hand-over from `old`, signed by `signer`.
    fn handed(old: &SigningKey, new: &SigningKey, signer: &SigningKey, first: u64) -> SignedZoneClaim {
        let h = ZoneHandover {
            zone: ZoneName::parse("sants").expect("zone"),
            from: node_hex(old),
            to: node_hex(new),
            first_claimed_at_ms: first,
            issued_at_ms: NOW,
        }
        .sign(signer);
        let mut c = claim(new, "sants", 1).claim;
        c.first_claimed_at_ms = Some(first);
        c.handover = Some(h);
        c.sign(new)
    }

    #[test]
    fn a_hand_over_moves_the_zone_and_retires_the_old_key() {
        let (old, new, rogue) = (key(1), key(2), key(3));
        let first = NOW - 86_400_000;
        let held = MeshRecord::Zone(claim(&old, "sants", 5));
        let moved = MeshRecord::Zone(handed(&old, &new, &old, first));
        assert!(check(&moved, Some(&held), None).is_ok(), "the holder's hand-over is accepted");
        assert!(check(&moved, None, None).is_ok());
        let renewal = MeshRecord::Zone(claim(&old, "sants", 6));
        assert_eq!(check(&renewal, Some(&moved), None), Err(RecordError::KeyRetired));
        assert_eq!(RecordError::KeyRetired.cause(), "key_retired");
        // User records: the new key's stand on the old key's claim; the old
        // key's are refused where the new claim is held.
        let MeshRecord::Zone(moved_claim) = &moved else { unreachable!() };
        let MeshRecord::Zone(held_claim) = &held else { unreachable!() };
        let new_user = MeshRecord::User(user(&new, "bob@sants", 1, moved_claim.clone()));
        let old_user = MeshRecord::User(user(&old, "bob@sants", 9, held_claim.clone()));
        assert!(check(&new_user, Some(&old_user), Some(held_claim)).is_ok());
        assert!(check(&new_user, Some(&old_user), None).is_ok());
        assert_eq!(check(&old_user, None, Some(moved_claim)), Err(RecordError::KeyRetired));

        // A hand-over the holder did not sign, or from a key that does not
        // hold the zone, takes nothing.
        let forged = MeshRecord::Zone(handed(&old, &rogue, &rogue, first));
        assert_eq!(check(&forged, Some(&held), None), Err(RecordError::BadSignature));
        let from_rogue = MeshRecord::Zone(handed(&rogue, &new, &rogue, first));
        assert_eq!(check(&from_rogue, Some(&held), None), Err(RecordError::ZoneTaken));
        // The new claim keeps the zone's age as the hand-over states it.
        let mut younger = handed(&old, &new, &old, first).claim;
        younger.first_claimed_at_ms = Some(NOW - 1);
        let younger = MeshRecord::Zone(younger.sign(&new));
        assert_eq!(check(&younger, Some(&held), None), Err(RecordError::HistoryRewritten));
        // Stripping the hand-over breaks the claim's signature.
        let MeshRecord::Zone(mut stripped) = moved.clone() else { unreachable!() };
        stripped.claim.handover = None;
        assert_eq!(check(&MeshRecord::Zone(stripped), Some(&held), None), Err(RecordError::BadSignature));
    }

    #[test]
    fn forgeries_are_refused() {
        let (a, rogue) = (key(1), key(2));
        let mut forged = claim(&a, "sants", 1);
        forged.claim.addrs = vec!["/ip4/6.6.6.6/tcp/1".into()];
        assert_eq!(check(&MeshRecord::Zone(forged), None, None), Err(RecordError::BadSignature));
        // A rogue re-signs a real user's record pointing at itself.
        let real_claim = claim(&a, "sants", 1);
        let rogue_claim = claim(&rogue, "sants", 1);
        let planted = MeshRecord::User(user(&rogue, "bob@sants", 5, rogue_claim));
        assert_eq!(check(&planted, None, Some(&real_claim)), Err(RecordError::WrongZoneKey));
        // Mixing the real claim with the rogue's signature does not help.
        let mixed = MeshRecord::User(user(&rogue, "bob@sants", 5, real_claim.clone()));
        assert_eq!(check(&mixed, None, None), Err(RecordError::WrongZoneKey));
        // A claim for another zone does not cover the user.
        let other = MeshRecord::User(user(&a, "bob@sants", 1, claim(&a, "gracia", 1)));
        assert_eq!(check(&other, None, None), Err(RecordError::WrongZoneKey));
        let good = MeshRecord::User(user(&a, "bob@sants", 1, real_claim.clone()));
        assert!(check(&good, None, Some(&real_claim)).is_ok());
        // Without the zone claim at hand, a live record of the real node stands.
        assert_eq!(check(&planted, Some(&good), None), Err(RecordError::WrongZoneKey));
    }

    #[test]
    fn expiry_size_and_key() {
        let a = key(1);
        let mut c = claim(&a, "sants", 1).claim;
        c.expires_at_ms = NOW;
        assert_eq!(check(&MeshRecord::Zone(c.clone().sign(&a)), None, None), Err(RecordError::Expired));
        c.expires_at_ms = NOW + MAX_LIFETIME_MS + MAX_SKEW_MS;
        assert_eq!(check(&MeshRecord::Zone(c.sign(&a)), None, None), Err(RecordError::Expired));
        let rec = MeshRecord::Zone(claim(&a, "sants", 1));
        assert_eq!(validate(b"/xarxa/zone/gracia", &rec.encode(), NOW, None, None), Err(RecordError::KeyMismatch));
        assert!(matches!(
            validate(b"k", &[b'{'; MAX_RECORD_BYTES + 1], NOW, None, None),
            Err(RecordError::TooLarge(_))
        ));
        assert!(matches!(validate(b"k", b"not json", NOW, None, None), Err(RecordError::Malformed(_))));
        let r = Rejections::default();
        r.count(&RecordError::ZoneTaken);
        assert_eq!(r.snapshot().zone_taken, 1);
    }

    #[test]
    fn claims_keep_their_history_and_the_first_format_still_reads() {
        let a = key(1);
        let first = claim(&a, "sants", 1);
        // A renewal must say the same first-claim time.
        let mut rewritten = first.claim.clone();
        rewritten.seq = 2;
        rewritten.first_claimed_at_ms = Some(NOW - 1);
        let held = MeshRecord::Zone(first.clone());
        assert_eq!(check(&MeshRecord::Zone(rewritten.sign(&a)), Some(&held), None), Err(RecordError::HistoryRewritten));
        // Nor can a claim be first made after it was issued.
        let mut later = first.claim.clone();
        later.first_claimed_at_ms = Some(NOW + 1);
        assert_eq!(check(&MeshRecord::Zone(later.sign(&a)), None, None), Err(RecordError::HistoryRewritten));
        // A claim of the first format: no first-claim time, its own tag.
        let mut v1 = first.claim.clone();
        v1.first_claimed_at_ms = None;
        let v1 = v1.sign(&a);
        assert!(!String::from_utf8_lossy(&MeshRecord::Zone(v1.clone()).encode()).contains("first_claimed"));
        assert!(check(&MeshRecord::Zone(v1.clone()), None, None).is_ok());
        assert_eq!(v1.claim.first_claimed(), NOW);
        // Its renewal into the second format is fine; the signatures of the
        // two formats do not stand for each other.
        let mut renewed = first.claim.clone();
        renewed.seq = 3;
        assert!(check(&MeshRecord::Zone(renewed.sign(&a)), Some(&MeshRecord::Zone(v1.clone())), None).is_ok());
        let mut relabelled = v1;
        relabelled.claim.first_claimed_at_ms = Some(NOW - 5);
        assert_eq!(check(&MeshRecord::Zone(relabelled), None, None), Err(RecordError::BadSignature));
    }

    #[test]
    fn a_key_and_a_signature_have_one_spelling() {
        let a = key(1);
        let good = claim(&a, "sants", 1);
        assert!(check(&MeshRecord::Zone(good.clone()), None, None).is_ok());
        // The same key in capitals would be a second key to the per-key
        // bound; the same signature in capitals a second record.
        let mut upper_key = good.claim.clone();
        upper_key.node = upper_key.node.to_uppercase();
        let upper_key = SignedZoneClaim { claim: upper_key, sig: good.sig.clone() };
        assert_eq!(check(&MeshRecord::Zone(upper_key), None, None), Err(RecordError::BadSignature));
        let upper_sig = SignedZoneClaim { claim: good.claim.clone(), sig: good.sig.to_uppercase() };
        assert_eq!(check(&MeshRecord::Zone(upper_sig), None, None), Err(RecordError::BadSignature));
        // `from_str_radix` took a leading `+`; a two-digit pair may not.
        let plus = format!("+{}", &good.sig[1..]);
        let plus = SignedZoneClaim { claim: good.claim.clone(), sig: plus };
        assert_eq!(check(&MeshRecord::Zone(plus), None, None), Err(RecordError::BadSignature));
        assert_eq!(hex_decode("0a1f"), Some(vec![0x0a, 0x1f]));
        assert_eq!(hex_decode("0A"), None);
        assert_eq!(hex_decode("+a"), None);
        // A non-canonical S (S + L, the group order) verifies under plain
        // `verify` on some versions; strict verification refuses it.
        let mut sig = hex_decode(&good.sig).expect("hex");
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(sig[32 + i]) + u16::from(l[i]) + carry;
            sig[32 + i] = v as u8;
            carry = v >> 8;
        }
        let malleable = SignedZoneClaim { claim: good.claim.clone(), sig: hex_encode(&sig) };
        assert_eq!(check(&MeshRecord::Zone(malleable), None, None), Err(RecordError::BadSignature));
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = validate(b"/xarxa/zone/x", &bytes, NOW, None, None);
        }

        #[test]
        fn signed_claims_round_trip(zone in "[a-z][a-z0-9]{0,20}", seq in 0u64..1000) {
            let a = key(3);
            let rec = MeshRecord::Zone(claim(&a, &zone, seq));
            proptest::prop_assert_eq!(check(&rec, None, None), Ok(rec.clone()));
        }
    }
}
