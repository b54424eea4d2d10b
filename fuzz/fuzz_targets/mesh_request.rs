//! What another zone node sends this one over `/xarxa/service/1`: the
//! request envelope (`NodeRequest`, read by libp2p's JSON codec with
//! `serde_json::from_slice` from at most 64 KiB), its body as each service
//! reads it (`decode::<CallService>()` → `NodeToNode`,
//! `decode::<NodeService>()` → `NodeQuery`), and, on the sending side, the
//! reply (`NodeReply`, whose body is read as the service's reply type).
//!
//! Checks: nothing panics; whatever parses re-serialises to bytes that parse
//! back to the same thing (the envelope and the reply compare by their
//! serialisation, as they carry their bodies raw and have no `PartialEq`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use signalling::service::{CallService, NodeAnswer, NodeQuery, NodeReply, NodeRequest, NodeService};
use signalling::NodeToNode;

/// The codec's limit on one request or response (`dht::behaviour`).
const MAX_MESSAGE: usize = 64 * 1024;

/// `value` serialises, and the result parses back to `value`.
fn round_trips<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let wire = serde_json::to_vec(value).unwrap_or_else(|e| panic!("{value:?} does not serialise: {e}"));
    let back: T = serde_json::from_slice(&wire)
        .unwrap_or_else(|e| panic!("{value:?} serialises to {:?}, which does not parse: {e}", lossy(&wire)));
    assert_eq!(&back, value);
}

/// `value` serialises to bytes that parse to something serialising the same.
fn round_trips_raw<T: Serialize + DeserializeOwned + std::fmt::Debug>(value: &T) {
    let wire = serde_json::to_vec(value).unwrap_or_else(|e| panic!("{value:?} does not serialise: {e}"));
    let back: T = serde_json::from_slice(&wire)
        .unwrap_or_else(|e| panic!("{value:?} serialises to {:?}, which does not parse: {e}", lossy(&wire)));
    let again = serde_json::to_vec(&back).unwrap_or_else(|e| panic!("{back:?} does not serialise: {e}"));
    assert_eq!(lossy(&again), lossy(&wire));
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_MESSAGE {
        return;
    }

    // Inbound: the envelope, then each service's reading of the body.
    if let Ok(req) = serde_json::from_slice::<NodeRequest>(data) {
        let _ = req.acting_for();
        round_trips_raw(&req);
        if let Ok(msg) = req.decode::<CallService>() {
            let _ = msg.call();
            round_trips::<NodeToNode>(&msg);
        }
        if let Ok(query) = req.decode::<NodeService>() {
            round_trips::<NodeQuery>(&query);
        }
    }

    // Outbound: the reply to a request this node made.
    if let Ok(reply) = serde_json::from_slice::<NodeReply>(data) {
        round_trips_raw(&reply);
        if let NodeReply::Ok { body } = &reply {
            let _ = serde_json::from_str::<()>(body.get());
            if let Ok(answer) = serde_json::from_str::<NodeAnswer>(body.get()) {
                round_trips::<NodeAnswer>(&answer);
            }
        }
    }

    // A calls-service message on its own (the body as the calls service sees it).
    if let Ok(msg) = serde_json::from_slice::<NodeToNode>(data) {
        round_trips::<NodeToNode>(&msg);
    }
});
