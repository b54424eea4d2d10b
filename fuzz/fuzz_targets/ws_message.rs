//! The WebSocket frames a device sends its node (`ClientToNode::parse`, the
//! function `node::api::ws` calls on every text frame), what the edge does
//! next with a parsed frame (the callee's address, the signal's size), and
//! the frames a node sends a browser (`NodeToClient::parse`, what the web
//! client reads).
//!
//! Checks: nothing panics; a frame that parses re-serialises to a frame
//! that parses to the same message; every error reply the edge would send
//! is itself a frame the client can read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signalling::{Address, ClientToNode, NodeToClient, ZoneName};

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 (the socket layer refuses others).
    let Ok(frame) = std::str::from_utf8(data) else { return };

    match ClientToNode::parse(frame) {
        Ok(msg) => {
            let id = msg.id();
            let json = msg.to_json();
            let again = ClientToNode::parse(&json)
                .unwrap_or_else(|e| panic!("{frame:?} parsed, but its re-serialisation {json:?} does not: {e}"));
            assert_eq!(again, msg, "{frame:?} -> {json:?} parsed to another message");
            assert_eq!(again.id(), id);
            match &msg {
                ClientToNode::Call { to, .. } => {
                    let zone = ZoneName::parse("gracia").expect("a valid zone");
                    if let Ok(a) = Address::parse_with_default_zone(to, &zone) {
                        // An address that parsed prints as one that parses to itself.
                        assert_eq!(Address::parse(&a.to_string()).as_ref(), Ok(&a));
                    }
                }
                ClientToNode::Signal { signal, .. } => {
                    let _ = (signal.payload_len(), signal.is_sdp());
                }
                _ => {}
            }
        }
        Err(e) => {
            // The reply the edge sends for an unreadable frame.
            let reply = NodeToClient::error(e.id, e.code, e.message);
            let wire = reply.to_json();
            let back = NodeToClient::parse(&wire).unwrap_or_else(|e| panic!("error reply {wire:?} unreadable: {e}"));
            assert_eq!(back, reply);
        }
    }

    // The other direction: what the browser client parses from its node.
    if let Ok(msg) = NodeToClient::parse(frame) {
        let json = msg.to_json();
        let again = NodeToClient::parse(&json)
            .unwrap_or_else(|e| panic!("{frame:?} parsed, but its re-serialisation {json:?} does not: {e}"));
        assert_eq!(again, msg, "{frame:?} -> {json:?} parsed to another message");
    }
});
