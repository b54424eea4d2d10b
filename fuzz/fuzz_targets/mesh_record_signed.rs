//! Mesh records built from structured input and signed by fixed keys, so
//! that `dht::record::validate` is fuzzed past its signature check: times
//! around the skew and lifetime bounds, sequence numbers against the record
//! held, first-claim-wins, user records whose claim is another key's or
//! another zone's, forged signers.
//!
//! Checks: nothing panics, and the invariants of ARCHITECTURE.md hold for
//! every record accepted: it is not forged, not expired, not a replay of a
//! lower sequence, not a claim of a zone another key holds, not a user
//! record signed by a key that does not hold its zone; and its encoding is
//! accepted again as the same record.
#![no_main]

use std::sync::LazyLock;

use arbitrary::Arbitrary;
use dht::record::{
    self, MeshRecord, RecordError, SignedZoneClaim, UserRecord, ZoneClaim, MAX_LIFETIME_MS, MAX_SKEW_MS,
};
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use signalling::{Address, UserName, ZoneName};

/// The validating node's clock, ms since the epoch.
const NOW: u64 = 1_800_000_000_000;

/// Three nodes' keys: records are signed by one of them.
static KEYS: LazyLock<[SigningKey; 3]> = LazyLock::new(|| [1u8, 2, 3].map(|s| SigningKey::from_bytes(&[s; 32])));

const ZONES: [&str; 3] = ["sants", "gracia", "poblenou"];
const USERS: [&str; 3] = ["bob", "alice", "carme"];

/// A name: one of a few known ones (so records meet each other), or any
/// string that parses.
#[derive(Debug, Arbitrary)]
enum Name {
    Known(u8),
    Raw(String),
}

/// A time relative to `NOW`, in seconds, or exactly on a bound.
#[derive(Debug, Arbitrary)]
enum When {
    Secs(i32),
    Ms(i64),
    Raw(u64),
}

#[derive(Debug, Arbitrary)]
struct Claim {
    /// Which key signs.
    signer: u8,
    /// Which key the claim names (`None`: the signer's; another: a forgery).
    named: Option<u8>,
    zone: Name,
    addrs: Vec<String>,
    seq: u64,
    issued: When,
    expires: When,
    /// When the key first claimed the zone (claims of the second format).
    first_claimed: Option<When>,
}

#[derive(Debug, Arbitrary)]
struct User {
    signer: u8,
    named: Option<u8>,
    name: Name,
    /// The user's zone (`None`: the claim's).
    zone: Option<Name>,
    addrs: Vec<String>,
    seq: u64,
    issued: When,
    expires: When,
    claim: Claim,
}

#[derive(Debug, Arbitrary)]
enum Rec {
    Zone(Claim),
    User(User),
}

#[derive(Debug, Arbitrary)]
struct Input {
    offered: Rec,
    /// What this node already holds under the offered record's key.
    existing: Option<Rec>,
    /// The claim this node holds for the user's zone.
    zone_claim: Option<Claim>,
    /// Store the offered record under another key.
    wrong_key: bool,
}

fn key(i: u8) -> &'static SigningKey {
    &KEYS[usize::from(i) % 3]
}

fn time(w: &When) -> u64 {
    match *w {
        When::Secs(s) => NOW.saturating_add_signed(i64::from(s) * 1000),
        When::Ms(ms) => NOW.saturating_add_signed(ms),
        When::Raw(t) => t,
    }
}

fn zone(n: &Name) -> ZoneName {
    let known = |i: u8| ZoneName::parse(ZONES[usize::from(i) % 3]).expect("a valid zone");
    match n {
        Name::Known(i) => known(*i),
        Name::Raw(s) => ZoneName::parse(s).unwrap_or_else(|_| known(s.len() as u8)),
    }
}

fn user_name(n: &Name) -> UserName {
    let known = |i: u8| UserName::parse(USERS[usize::from(i) % 3]).expect("a valid name");
    match n {
        Name::Known(i) => known(*i),
        Name::Raw(s) => UserName::parse(s).unwrap_or_else(|_| known(s.len() as u8)),
    }
}

/// Whether a spec is forged: signed by one key, naming another.
fn forged(signer: u8, named: Option<u8>) -> bool {
    named.is_some_and(|n| n % 3 != signer % 3)
}

/// A record body from its JSON fields. Built through serde rather than a
/// struct literal, so that a field added with a serde default (a new
/// record format) needs no change here.
fn body<T: serde::de::DeserializeOwned>(fields: serde_json::Value) -> T {
    serde_json::from_value(fields).unwrap_or_else(|e| panic!("a record body the fuzz target built: {e}"))
}

fn claim(c: &Claim) -> SignedZoneClaim {
    let mut fields = json!({
        "zone": zone(&c.zone),
        "node": record::node_hex(key(c.named.unwrap_or(c.signer))),
        "addrs": c.addrs,
        "seq": c.seq,
        "issued_at_ms": time(&c.issued),
        "expires_at_ms": time(&c.expires),
    });
    if let Some(first) = &c.first_claimed {
        fields["first_claimed_at_ms"] = json!(time(first));
    }
    body::<ZoneClaim>(fields).sign(key(c.signer))
}

fn build(r: &Rec) -> MeshRecord {
    match r {
        Rec::Zone(c) => MeshRecord::Zone(claim(c)),
        Rec::User(u) => {
            let claim = claim(&u.claim);
            let zone = u.zone.as_ref().map_or_else(|| claim.claim.zone.clone(), zone);
            let record: UserRecord = body(json!({
                "user": Address::new(user_name(&u.name), zone),
                "node": record::node_hex(key(u.named.unwrap_or(u.signer))),
                "addrs": u.addrs,
                "seq": u.seq,
                "issued_at_ms": time(&u.issued),
                "expires_at_ms": time(&u.expires),
            }));
            MeshRecord::User(record.sign(key(u.signer), claim))
        }
    }
}

fn is_forged(r: &Rec) -> bool {
    match r {
        Rec::Zone(c) => forged(c.signer, c.named),
        Rec::User(u) => forged(u.signer, u.named) || forged(u.claim.signer, u.claim.named),
    }
}

/// Whether a record (or the claim it carries) lists too many or too long
/// addresses.
fn over_limits(rec: &MeshRecord) -> bool {
    let over =
        |addrs: &[String]| addrs.len() > record::MAX_ADDRS || addrs.iter().any(|a| a.len() > record::MAX_ADDR_LEN);
    over(rec.addrs()) || matches!(rec, MeshRecord::User(u) if over(&u.claim.claim.addrs))
}

fn live_times(issued: u64, expires: u64) -> bool {
    expires > NOW && issued <= NOW + MAX_SKEW_MS && expires.saturating_sub(issued) <= MAX_LIFETIME_MS
}

fn live(rec: &MeshRecord) -> bool {
    live_times(rec.issued_at_ms(), rec.expires_at_ms())
}

fuzz_target!(|input: Input| {
    let offered = build(&input.offered);
    let existing = input.existing.as_ref().map(build);
    let zone_claim = input.zone_claim.as_ref().map(claim);
    let key = if input.wrong_key { b"/xarxa/zone/elsewhere".to_vec() } else { offered.key() };
    let value = offered.encode();

    let rec = match record::validate(&key, &value, NOW, existing.as_ref(), zone_claim.as_ref()) {
        Ok(rec) => rec,
        Err(e) => {
            // Only over-long values and address lists are malformed here.
            if let RecordError::Malformed(_) = e {
                assert!(value.len() > record::MAX_RECORD_BYTES || over_limits(&offered), "refused as malformed: {e}");
            }
            return;
        }
    };

    // What was accepted is what was offered, under its own key.
    assert_eq!(rec, offered);
    assert_eq!(rec.key(), key, "accepted under another record's key");
    // Never forged, never expired.
    assert!(!is_forged(&input.offered), "accepted a forged record: {rec:?}");
    assert!(live(&rec), "accepted a record outside its lifetime: {rec:?}");
    if let MeshRecord::User(u) = &rec {
        assert_eq!(u.claim.claim.node, u.record.node, "user record signed by a key that is not its claim's");
        assert_eq!(u.claim.claim.zone, u.record.user.zone, "user record relying on another zone's claim");
        assert!(live_times(u.claim.claim.issued_at_ms, u.claim.claim.expires_at_ms), "relies on a dead claim");
    }
    // First claim wins; user records follow the zone's holder.
    let holder = match (&rec, &existing) {
        (MeshRecord::Zone(_), Some(MeshRecord::Zone(old))) => Some(old),
        (MeshRecord::User(_), _) => zone_claim.as_ref(),
        _ => None,
    };
    if let Some(h) = holder.filter(|h| h.claim.expires_at_ms > NOW) {
        assert_eq!(h.claim.node, rec.node(), "accepted a record of a zone another key holds: {rec:?}");
    }
    // No replays of a lower sequence from the same node.
    if let Some(old) = existing.as_ref().filter(|o| o.expires_at_ms() > NOW && o.node() == rec.node()) {
        assert!(rec.seq() >= old.seq(), "accepted sequence {} over {}", rec.seq(), old.seq());
    }

    // What a node stores, it can hand on.
    let again = record::validate(&key, &rec.encode(), NOW, existing.as_ref(), zone_claim.as_ref())
        .unwrap_or_else(|e| panic!("accepted {rec:?}, but not its re-encoding: {e}"));
    assert_eq!(again, rec);
});
