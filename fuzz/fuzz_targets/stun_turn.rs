//! Datagrams anyone can send the node's STUN/TURN port
//! (`xarxa_node::media::turn::wire`): `Message::parse` and every accessor
//! the server uses on a parsed message, `channel_data`, and the credential
//! checks on what a client puts in USERNAME and NONCE
//! (`turn::auth::check_username`, `Nonces::valid`).
//!
//! Checks: nothing panics; a ChannelData payload lies inside the datagram;
//! the attributes of a parsed message, written again by `Builder` (with
//! MESSAGE-INTEGRITY and FINGERPRINT), parse back to the same attributes,
//! and the integrity verifies with the key it was made with.
#![no_main]

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use xarxa_node::media::turn::auth::{self, Nonces};
use xarxa_node::media::turn::wire::{self, attr, Builder, Message};

/// The server's clock, Unix seconds.
const NOW_S: u64 = 1_800_000_000;

/// Every attribute the server reads.
const KNOWN: &[u16] = &[
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::ERROR_CODE,
    attr::UNKNOWN_ATTRIBUTES,
    attr::CHANNEL_NUMBER,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::REALM,
    attr::NONCE,
    attr::XOR_RELAYED_ADDRESS,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::EVEN_PORT,
    attr::REQUESTED_TRANSPORT,
    attr::DONT_FRAGMENT,
    attr::XOR_MAPPED_ADDRESS,
    attr::RESERVATION_TOKEN,
    attr::SOFTWARE,
    attr::FINGERPRINT,
];

static NONCES: LazyLock<Nonces> = LazyLock::new(|| Nonces::new(Duration::from_secs(600)));

fn client() -> SocketAddr {
    SocketAddr::from(([198, 51, 100, 7], 50_000))
}

fuzz_target!(|data: &[u8]| {
    if let Some((channel, payload)) = wire::channel_data(data) {
        assert!((0x4000..=0x7FFF).contains(&channel));
        assert!(payload.len() + wire::CHANNEL_HEADER <= data.len());
    }

    let Ok(m) = Message::parse(data) else { return };
    let _ = (m.method, m.class, m.txn, m.has_fingerprint, m.has_integrity());
    let attrs: Vec<(u16, &[u8])> = m.attrs().collect();
    for &t in KNOWN {
        let _ = m.get(t);
    }
    for t in [attr::USERNAME, attr::REALM, attr::NONCE, attr::SOFTWARE] {
        let _ = m.text(t);
    }
    let _ = m.u32_attr(attr::LIFETIME);
    let _ = m.u32_attr(attr::CHANNEL_NUMBER);
    let _ = m.u32_attr(attr::REQUESTED_TRANSPORT);
    for t in [attr::XOR_PEER_ADDRESS, attr::XOR_RELAYED_ADDRESS, attr::XOR_MAPPED_ADDRESS] {
        let _ = m.xor_addrs(t).count();
        let _ = m.xor_addr(t);
    }
    let _ = m.unknown_required(KNOWN);
    let _ = m.integrity_ok(b"key");
    let _ = m.integrity_ok(&auth::long_term_key("1800000600:bob", "sants", "password"));

    // What the server does with the credentials a client sends.
    if let Ok(Some(username)) = m.text(attr::USERNAME) {
        if let Ok(user) = auth::check_username(username, NOW_S) {
            assert!(!user.is_empty() && user.len() <= 128);
            let password = auth::password("a secret of sixteen+", username);
            let _ = auth::long_term_key(username, "sants", &password);
        }
    }
    if let Ok(Some(nonce)) = m.text(attr::NONCE) {
        let _ = NONCES.valid(nonce, client(), NOW_S);
    }

    // Written again, the attributes read the same (when the 32 bytes of
    // MESSAGE-INTEGRITY and FINGERPRINT still fit STUN's 16-bit length).
    if data.len() + 32 > wire::HEADER + usize::from(u16::MAX) {
        return;
    }
    let mut buf = Vec::new();
    let mut b = Builder::new(&mut buf, m.method, m.class, m.txn);
    let kept: Vec<(u16, &[u8])> =
        attrs.iter().copied().filter(|(t, _)| *t != attr::FINGERPRINT && *t != attr::MESSAGE_INTEGRITY).collect();
    for (t, v) in &kept {
        b.attr(*t, v);
    }
    b.integrity(b"key").fingerprint();
    let rebuilt = Message::parse(b.bytes()).unwrap_or_else(|e| panic!("a rebuilt message does not parse: {e}"));
    assert_eq!((rebuilt.method, rebuilt.class, rebuilt.txn), (m.method, m.class, m.txn));
    assert_eq!(rebuilt.attrs().collect::<Vec<_>>(), kept);
    assert!(rebuilt.integrity_ok(b"key") && rebuilt.has_fingerprint);
});
