//! Mesh records as another node offers them, from bytes:
//! `dht::record::validate(key, value, now, existing, zone_claim)`, the check
//! every Kademlia put and every lookup result goes through.
//!
//! The first input byte picks the context (the DHT key the value comes
//! under, and what this node already holds); the rest is the value. Seeds
//! are real signed records (fuzz/seeds.py), so mutations start from records
//! that get past decoding. `mesh_record_signed` builds records from
//! structured input and signs them, to reach past the signature check.
//!
//! Checks: nothing panics; an accepted record is the one stored under the
//! key it came with, and its re-encoding is accepted again as the same
//! record (what a node stores, it can hand on).
#![no_main]

use std::sync::LazyLock;

use dht::record::{self, MeshRecord, SignedZoneClaim, ZoneClaim};
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

/// The validating node's clock (ms since the epoch), the seeds' `NOW`.
const NOW: u64 = 1_800_000_000_000;

/// The claim of `sants` by the node whose key is `[1; 32]` (the seeds'
/// signer), as a node holding it would pass it as `existing` or `zone_claim`.
static HELD: LazyLock<SignedZoneClaim> = LazyLock::new(|| {
    let key = SigningKey::from_bytes(&[1; 32]);
    // Through serde, not a struct literal: a field added with a serde
    // default (a new claim format) needs no change here.
    let claim: ZoneClaim = serde_json::from_value(serde_json::json!({
        "zone": "sants",
        "node": record::node_hex(&key),
        "addrs": ["/ip4/192.0.2.1/tcp/7447"],
        "seq": 5,
        "issued_at_ms": NOW - 60_000,
        "expires_at_ms": NOW + 3_600_000,
    }))
    .expect("a claim body");
    claim.sign(&key)
});

fuzz_target!(|data: &[u8]| {
    let Some((&ctx, value)) = data.split_first() else { return };
    // The key: the one the value's own content names (so the fuzzer gets
    // past the key check), or a fixed one.
    let key = match ctx & 3 {
        0 | 1 => MeshRecord::decode(value).map(|r| r.key()).unwrap_or_default(),
        2 => record::zone_key(&HELD.claim.zone),
        _ => b"/xarxa/user/bob@sants".to_vec(),
    };
    let held = MeshRecord::Zone(HELD.clone());
    let existing = (ctx & 4 != 0).then_some(&held);
    let zone_claim = (ctx & 8 != 0).then_some(&*HELD);

    if let Ok(rec) = record::validate(&key, value, NOW, existing, zone_claim) {
        assert_eq!(rec.key(), key, "accepted under another record's key");
        let encoded = rec.encode();
        let again = record::validate(&key, &encoded, NOW, existing, zone_claim)
            .unwrap_or_else(|e| panic!("accepted {rec:?}, but not its re-encoding: {e}"));
        assert_eq!(again, rec);
    }
});
