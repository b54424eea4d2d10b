//! STUN (RFC 8489) and TURN (RFC 8656) on the wire: borrowed views of
//! received datagrams ([`Message::parse`], [`channel_data`]) and a writer
//! for replies ([`Builder`]). Parsing never panics and never allocates; the
//! data path (ChannelData, Data indications) appends frames to a reusable
//! buffer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The STUN magic cookie.
pub const MAGIC: u32 = 0x2112_A442;
/// Size of a STUN header.
pub const HEADER: usize = 20;
/// Size of a ChannelData header.
pub const CHANNEL_HEADER: usize = 4;

/// The methods this server speaks.
pub mod method {
    /// Binding (STUN).
    pub const BINDING: u16 = 0x001;
    /// Allocate.
    pub const ALLOCATE: u16 = 0x003;
    /// Refresh.
    pub const REFRESH: u16 = 0x004;
    /// Send (indication).
    pub const SEND: u16 = 0x006;
    /// Data (indication).
    pub const DATA: u16 = 0x007;
    /// CreatePermission.
    pub const CREATE_PERMISSION: u16 = 0x008;
    /// ChannelBind.
    pub const CHANNEL_BIND: u16 = 0x009;
}

/// Attribute types.
pub mod attr {
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (HMAC-SHA1).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// CHANNEL-NUMBER.
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME.
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS.
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA.
    pub const DATA: u16 = 0x0013;
    /// REALM.
    pub const REALM: u16 = 0x0014;
    /// NONCE.
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS.
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-ADDRESS-FAMILY.
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    /// EVEN-PORT.
    pub const EVEN_PORT: u16 = 0x0018;
    /// REQUESTED-TRANSPORT.
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// DONT-FRAGMENT.
    pub const DONT_FRAGMENT: u16 = 0x001A;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// RESERVATION-TOKEN.
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT.
    pub const FINGERPRINT: u16 = 0x8028;
}

/// The class of a STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A request (expects a response).
    Request,
    /// An indication (no response).
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0b00,
            Class::Indication => 0b01,
            Class::Success => 0b10,
            Class::Error => 0b11,
        }
    }
}

/// The 16-bit message type of `method` and `class` (the class bits are
/// interleaved with the method bits).
pub fn message_type(method: u16, class: Class) -> u16 {
    let c = class.bits();
    (method & 0x000F) | ((method & 0x0070) << 1) | ((method & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

fn split_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = match ((t >> 4) & 1) | ((t >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

fn padded(len: usize) -> usize {
    (len + 3) & !3
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Why a datagram is not a usable STUN message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Not STUN at all (too short, wrong cookie, top bits set).
    #[error("not a STUN message")]
    NotStun,
    /// The length field or an attribute does not fit the datagram.
    #[error("truncated or misaligned STUN message")]
    Malformed,
    /// FINGERPRINT is present but wrong, or not last.
    #[error("bad FINGERPRINT")]
    BadFingerprint,
    /// An attribute value has the wrong size or content.
    #[error("bad attribute {0:#06x}")]
    BadAttribute(u16),
}

/// A parsed STUN message borrowing the datagram.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The method (`method::*`).
    pub method: u16,
    /// The class.
    pub class: Class,
    /// The transaction id.
    pub txn: [u8; 12],
    raw: &'a [u8],
    /// Offset of the MESSAGE-INTEGRITY attribute header, if present.
    integrity_at: Option<usize>,
    /// Whether a valid FINGERPRINT ends the message.
    pub has_fingerprint: bool,
}

impl<'a> Message<'a> {
    /// Parses one datagram. Attributes must fit exactly; a FINGERPRINT, if
    /// present, must be last and correct.
    pub fn parse(raw: &'a [u8]) -> Result<Self, WireError> {
        if raw.len() < HEADER || raw[0] & 0xC0 != 0 {
            return Err(WireError::NotStun);
        }
        if u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) != MAGIC {
            return Err(WireError::NotStun);
        }
        let len = usize::from(u16::from_be_bytes([raw[2], raw[3]]));
        if len % 4 != 0 || HEADER + len != raw.len() {
            return Err(WireError::Malformed);
        }
        let (method, class) = split_type(u16::from_be_bytes([raw[0], raw[1]]));
        let mut txn = [0u8; 12];
        txn.copy_from_slice(&raw[8..HEADER]);
        let mut at = HEADER;
        let mut integrity_at = None;
        let mut has_fingerprint = false;
        while at < raw.len() {
            if has_fingerprint {
                return Err(WireError::BadFingerprint);
            }
            let t = be16(raw, at).ok_or(WireError::Malformed)?;
            let l = usize::from(be16(raw, at + 2).ok_or(WireError::Malformed)?);
            let end = at + 4 + padded(l);
            if end > raw.len() {
                return Err(WireError::Malformed);
            }
            match t {
                attr::MESSAGE_INTEGRITY if integrity_at.is_none() => {
                    if l != 20 {
                        return Err(WireError::BadAttribute(t));
                    }
                    integrity_at = Some(at);
                }
                attr::FINGERPRINT => {
                    if l != 4 || !fingerprint_ok(raw, at) {
                        return Err(WireError::BadFingerprint);
                    }
                    has_fingerprint = true;
                }
                _ => {}
            }
            at = end;
        }
        Ok(Self { method, class, txn, raw, integrity_at, has_fingerprint })
    }

    /// The attributes that count: those before MESSAGE-INTEGRITY (the
    /// rest, except FINGERPRINT, must be ignored).
    pub fn attrs(&self) -> impl Iterator<Item = (u16, &'a [u8])> + 'a {
        let raw = self.raw;
        let stop = self.integrity_at.unwrap_or(raw.len());
        let mut at = HEADER;
        std::iter::from_fn(move || {
            if at >= stop {
                return None;
            }
            let t = be16(raw, at)?;
            let l = usize::from(be16(raw, at + 2)?);
            let v = raw.get(at + 4..at + 4 + l)?;
            at += 4 + padded(l);
            Some((t, v))
        })
    }

    /// The first value of attribute `t` (before MESSAGE-INTEGRITY).
    pub fn get(&self, t: u16) -> Option<&'a [u8]> {
        self.attrs().find(|(at, _)| *at == t).map(|(_, v)| v)
    }

    /// A text attribute (USERNAME, REALM, NONCE) as UTF-8 of at most 763 bytes.
    pub fn text(&self, t: u16) -> Result<Option<&'a str>, WireError> {
        match self.get(t) {
            None => Ok(None),
            Some(v) if v.len() <= 763 => std::str::from_utf8(v).map(Some).map_err(|_| WireError::BadAttribute(t)),
            Some(_) => Err(WireError::BadAttribute(t)),
        }
    }

    /// A 32-bit attribute (LIFETIME).
    pub fn u32_attr(&self, t: u16) -> Result<Option<u32>, WireError> {
        match self.get(t) {
            None => Ok(None),
            Some(&[a, b, c, d]) => Ok(Some(u32::from_be_bytes([a, b, c, d]))),
            Some(_) => Err(WireError::BadAttribute(t)),
        }
    }

    /// Every XOR-encoded address of type `t`, decoded.
    pub fn xor_addrs(&self, t: u16) -> impl Iterator<Item = Result<SocketAddr, WireError>> + 'a {
        let txn = self.txn;
        self.attrs()
            .filter(move |(at, _)| *at == t)
            .map(move |(_, v)| xor_addr(v, &txn).ok_or(WireError::BadAttribute(t)))
    }

    /// The first XOR-encoded address of type `t`.
    pub fn xor_addr(&self, t: u16) -> Result<Option<SocketAddr>, WireError> {
        self.xor_addrs(t).next().transpose()
    }

    /// Whether the message carries MESSAGE-INTEGRITY.
    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some()
    }

    /// Checks MESSAGE-INTEGRITY with `key` (constant time). False when absent.
    pub fn integrity_ok(&self, key: &[u8]) -> bool {
        let Some(at) = self.integrity_at else { return false };
        let Some(got) = self.raw.get(at + 4..at + 24) else { return false };
        let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else { return false };
        hmac_prefix(&mut mac, self.raw, at);
        mac.verify_slice(got).is_ok()
    }

    /// The comprehension-required attributes this server does not know.
    pub fn unknown_required(&self, known: &[u16]) -> Vec<u16> {
        self.attrs().map(|(t, _)| t).filter(|t| *t < 0x8000 && !known.contains(t)).collect()
    }
}

/// Feeds the HMAC of MESSAGE-INTEGRITY at `at`: the message up to the
/// attribute, with the header's length covering the attribute itself.
fn hmac_prefix(mac: &mut Hmac<Sha1>, raw: &[u8], at: usize) {
    let len = u16::try_from(at - HEADER + 24).unwrap_or(u16::MAX);
    mac.update(&raw[..2]);
    mac.update(&len.to_be_bytes());
    mac.update(&raw[4..at]);
}

fn fingerprint_ok(raw: &[u8], at: usize) -> bool {
    let Some(v) = raw.get(at + 4..at + 8) else { return false };
    fingerprint_value(raw, at) == u32::from_be_bytes([v[0], v[1], v[2], v[3]])
}

/// CRC-32 of the message up to `at` (header length covering the
/// FINGERPRINT attribute) XOR 0x5354554e.
fn fingerprint_value(raw: &[u8], at: usize) -> u32 {
    let len = u16::try_from(at - HEADER + 8).unwrap_or(u16::MAX);
    let mut h = crc32fast::Hasher::new();
    h.update(&raw[..2]);
    h.update(&len.to_be_bytes());
    h.update(&raw[4..at]);
    h.finalize() ^ 0x5354_554E
}

fn xor_addr(v: &[u8], txn: &[u8; 12]) -> Option<SocketAddr> {
    let family = *v.get(1)?;
    let port = be16(v, 2)? ^ (MAGIC >> 16) as u16;
    let cookie = MAGIC.to_be_bytes();
    match (family, v.len()) {
        (0x01, 8) => {
            let mut ip = [0u8; 4];
            for i in 0..4 {
                ip[i] = v[4 + i] ^ cookie[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (0x02, 20) => {
            let mut ip = [0u8; 16];
            for i in 0..16 {
                let k = if i < 4 { cookie[i] } else { txn[i - 4] };
                ip[i] = v[4 + i] ^ k;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

/// Encodes `addr` XORed with the cookie and `txn` into `out` (8 or 20
/// bytes); returns the length written.
fn put_xor_addr(out: &mut [u8; 20], addr: SocketAddr, txn: &[u8; 12]) -> usize {
    let cookie = MAGIC.to_be_bytes();
    out[0] = 0;
    out[2..4].copy_from_slice(&(addr.port() ^ (MAGIC >> 16) as u16).to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = 0x01;
            for (i, b) in ip.octets().iter().enumerate() {
                out[4 + i] = b ^ cookie[i];
            }
            8
        }
        IpAddr::V6(ip) => {
            out[1] = 0x02;
            for (i, b) in ip.octets().iter().enumerate() {
                let k = if i < 4 { cookie[i] } else { txn[i - 4] };
                out[4 + i] = b ^ k;
            }
            20
        }
    }
}

/// Writes a STUN message into a reusable buffer.
pub struct Builder<'b> {
    buf: &'b mut Vec<u8>,
    txn: [u8; 12],
}

impl<'b> Builder<'b> {
    /// Starts a message of `method` and `class` with transaction `txn`.
    pub fn new(buf: &'b mut Vec<u8>, method: u16, class: Class, txn: [u8; 12]) -> Self {
        buf.clear();
        buf.extend_from_slice(&message_type(method, class).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC.to_be_bytes());
        buf.extend_from_slice(&txn);
        Self { buf, txn }
    }

    fn set_len(&mut self) {
        let len = u16::try_from(self.buf.len() - HEADER).unwrap_or(u16::MAX);
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
    }

    /// Appends attribute `t` with value `v` (padded to 4 bytes). Values
    /// longer than 65535 bytes are cut.
    pub fn attr(&mut self, t: u16, v: &[u8]) -> &mut Self {
        let v = &v[..v.len().min(usize::from(u16::MAX))];
        self.buf.extend_from_slice(&t.to_be_bytes());
        self.buf.extend_from_slice(&u16::try_from(v.len()).unwrap_or(u16::MAX).to_be_bytes());
        self.buf.extend_from_slice(v);
        self.buf.resize(self.buf.len() + padded(v.len()) - v.len(), 0);
        self.set_len();
        self
    }

    /// Appends a 32-bit attribute.
    pub fn u32_attr(&mut self, t: u16, v: u32) -> &mut Self {
        self.attr(t, &v.to_be_bytes())
    }

    /// Appends an XOR-encoded address attribute.
    pub fn xor_addr(&mut self, t: u16, addr: SocketAddr) -> &mut Self {
        let mut v = [0u8; 20];
        let n = put_xor_addr(&mut v, addr, &self.txn);
        self.attr(t, &v[..n])
    }

    /// Appends ERROR-CODE `code` with a reason phrase.
    pub fn error(&mut self, code: u16, reason: &str) -> &mut Self {
        let mut v = Vec::with_capacity(4 + reason.len());
        v.extend_from_slice(&[0, 0, u8::try_from(code / 100).unwrap_or(5), u8::try_from(code % 100).unwrap_or(0)]);
        v.extend_from_slice(reason.as_bytes());
        self.attr(attr::ERROR_CODE, &v)
    }

    /// Appends MESSAGE-INTEGRITY computed with `key`.
    pub fn integrity(&mut self, key: &[u8]) -> &mut Self {
        let at = self.buf.len();
        if let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) {
            hmac_prefix(&mut mac, self.buf, at);
            let tag = mac.finalize().into_bytes();
            self.attr(attr::MESSAGE_INTEGRITY, &tag);
        }
        self
    }

    /// Appends FINGERPRINT (must come last).
    pub fn fingerprint(&mut self) -> &mut Self {
        let at = self.buf.len();
        let value = fingerprint_value(self.buf, at);
        self.attr(attr::FINGERPRINT, &value.to_be_bytes())
    }

    /// The finished message.
    pub fn bytes(&self) -> &[u8] {
        self.buf
    }
}

/// The channel number and payload of a ChannelData message (RFC 8656
/// §12.4), or `None` if `buf` is not one. Padding after the payload is
/// allowed.
pub fn channel_data(buf: &[u8]) -> Option<(u16, &[u8])> {
    let channel = be16(buf, 0)?;
    if !(0x4000..=0x7FFF).contains(&channel) {
        return None;
    }
    let len = usize::from(be16(buf, 2)?);
    Some((channel, buf.get(CHANNEL_HEADER..CHANNEL_HEADER + len)?))
}

/// Appends a ChannelData message carrying `payload` on `channel` (UDP
/// needs no padding).
pub fn push_channel_data(out: &mut Vec<u8>, channel: u16, payload: &[u8]) {
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&u16::try_from(payload.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(payload);
}

/// The size of a Data indication from `peer` carrying `len` bytes.
pub fn data_indication_len(peer: SocketAddr, len: usize) -> usize {
    let addr = if peer.is_ipv4() { 8 } else { 20 };
    HEADER + 4 + addr + 4 + padded(len)
}

/// Appends a Data indication from `peer` carrying `payload`, with
/// transaction id `txn`.
pub fn push_data_indication(out: &mut Vec<u8>, peer: SocketAddr, txn: [u8; 12], payload: &[u8]) {
    let mut addr = [0u8; 20];
    let alen = put_xor_addr(&mut addr, peer, &txn);
    let body = data_indication_len(peer, payload.len()) - HEADER;
    out.extend_from_slice(&message_type(method::DATA, Class::Indication).to_be_bytes());
    out.extend_from_slice(&u16::try_from(body).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&txn);
    out.extend_from_slice(&attr::XOR_PEER_ADDRESS.to_be_bytes());
    out.extend_from_slice(&u16::try_from(alen).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&addr[..alen]);
    out.extend_from_slice(&attr::DATA.to_be_bytes());
    out.extend_from_slice(&u16::try_from(payload.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + padded(payload.len()) - payload.len(), 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn types_round_trip() {
        assert_eq!(message_type(method::BINDING, Class::Request), 0x0001);
        assert_eq!(message_type(method::BINDING, Class::Success), 0x0101);
        assert_eq!(message_type(method::ALLOCATE, Class::Error), 0x0113);
        assert_eq!(message_type(method::SEND, Class::Indication), 0x0016);
        assert_eq!(message_type(method::DATA, Class::Indication), 0x0017);
        for m in [1, 3, 4, 6, 7, 8, 9, 0xFFF] {
            for c in [Class::Request, Class::Indication, Class::Success, Class::Error] {
                assert_eq!(split_type(message_type(m, c)), (m, c));
            }
        }
    }

    /// RFC 5769 §2.1, the sample request (short-term key
    /// "VOkJxbRl1RmTxUk/WvJxBt"; SOFTWARE, PRIORITY, ICE-CONTROLLED,
    /// USERNAME, MESSAGE-INTEGRITY, FINGERPRINT).
    #[test]
    fn rfc5769_sample_request() {
        let hex = "000100582112a442b7e7a701bc34d686fa87dfae802200105354554e207465737420636c69656e74\
                   002400046e0001ff80290008932ff9b151263b36000600096576746a3a68367659202020\
                   000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a280280004e57a3bcf";
        let raw = hex::decode(hex).expect("hex");
        let m = Message::parse(&raw).expect("parses");
        assert_eq!((m.method, m.class), (method::BINDING, Class::Request));
        assert!(m.has_fingerprint);
        assert!(m.integrity_ok(b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!m.integrity_ok(b"wrong"));
        assert_eq!(m.text(attr::USERNAME).expect("utf8"), Some("evtj:h6vY"));
    }

    #[test]
    fn built_messages_parse_and_verify() {
        let mut buf = Vec::new();
        let txn = [7u8; 12];
        let peer: SocketAddr = "[2001:db8::1]:4242".parse().expect("addr");
        let mapped: SocketAddr = "192.0.2.1:32853".parse().expect("addr");
        let mut b = Builder::new(&mut buf, method::ALLOCATE, Class::Success, txn);
        b.xor_addr(attr::XOR_RELAYED_ADDRESS, peer).xor_addr(attr::XOR_MAPPED_ADDRESS, mapped);
        b.u32_attr(attr::LIFETIME, 600).attr(attr::SOFTWARE, b"xarxa").integrity(b"key").fingerprint();
        let m = Message::parse(b.bytes()).expect("parses");
        assert_eq!((m.method, m.class, m.txn), (method::ALLOCATE, Class::Success, txn));
        assert_eq!(m.xor_addr(attr::XOR_RELAYED_ADDRESS), Ok(Some(peer)));
        assert_eq!(m.xor_addr(attr::XOR_MAPPED_ADDRESS), Ok(Some(mapped)));
        assert_eq!(m.u32_attr(attr::LIFETIME), Ok(Some(600)));
        assert!(m.integrity_ok(b"key") && m.has_fingerprint);
        let mut tampered = b.bytes().to_vec();
        tampered[30] ^= 1;
        assert!(Message::parse(&tampered).is_err(), "the fingerprint catches a flipped bit");
    }

    #[test]
    fn relay_framing() {
        let payload = b"hello relay";
        let mut buf = Vec::new();
        push_channel_data(&mut buf, 0x4001, payload);
        assert_eq!(channel_data(&buf), Some((0x4001, &payload[..])));
        for peer in ["198.51.100.7:9", "[2001:db8::7]:9"] {
            let peer: SocketAddr = peer.parse().expect("addr");
            buf.clear();
            push_data_indication(&mut buf, peer, [3; 12], payload);
            assert_eq!(buf.len(), data_indication_len(peer, payload.len()));
            let m = Message::parse(&buf).expect("a data indication parses");
            assert_eq!((m.method, m.class), (method::DATA, Class::Indication));
            assert_eq!(m.xor_addr(attr::XOR_PEER_ADDRESS), Ok(Some(peer)));
            assert_eq!(m.get(attr::DATA), Some(&payload[..]));
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::parse(&bytes);
            let _ = channel_data(&bytes);
            if let Ok(m) = Message::parse(&bytes) {
                let _ = m.attrs().count();
                let _ = m.integrity_ok(b"k");
                let _ = m.xor_addr(attr::XOR_PEER_ADDRESS);
            }
        }

        #[test]
        fn stun_like_garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..120), t in 0u16..0x3FFF) {
            let mut raw = Vec::new();
            raw.extend_from_slice(&t.to_be_bytes());
            raw.extend_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_be_bytes());
            raw.extend_from_slice(&MAGIC.to_be_bytes());
            raw.extend_from_slice(&[1; 12]);
            raw.extend_from_slice(&body);
            if let Ok(m) = Message::parse(&raw) {
                let _ = m.attrs().count();
                let _ = m.integrity_ok(b"k");
                let _ = m.text(attr::USERNAME);
                let _ = m.u32_attr(attr::LIFETIME);
                let _ = m.xor_addrs(attr::XOR_PEER_ADDRESS).count();
            }
        }

        #[test]
        fn attributes_round_trip(values in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..8),
                                 port in any::<u16>(), ip in any::<[u8; 16]>()) {
            let mut buf = Vec::new();
            let txn = [9u8; 12];
            let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port);
            let mut b = Builder::new(&mut buf, method::CHANNEL_BIND, Class::Request, txn);
            for v in &values {
                b.attr(attr::DATA, v);
            }
            b.xor_addr(attr::XOR_PEER_ADDRESS, addr).integrity(b"k").fingerprint();
            let m = Message::parse(b.bytes()).expect("parses");
            let got: Vec<&[u8]> = m.attrs().filter(|(t, _)| *t == attr::DATA).map(|(_, v)| v).collect();
            prop_assert_eq!(got, values.iter().map(Vec::as_slice).collect::<Vec<_>>());
            prop_assert_eq!(m.xor_addr(attr::XOR_PEER_ADDRESS), Ok(Some(addr)));
            prop_assert!(m.integrity_ok(b"k"));
        }
    }
}
