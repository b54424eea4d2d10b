//! The node's STUN/TURN server (issue 5, point 6), driven by independent
//! clients: raw requests built with webrtc-rs's `stun` crate (to see the
//! exact error codes) and webrtc-rs's `turn` client (as an application would
//! use a relay).
//!
//! - `GET /api/v1/ice` gives logged-in users time-limited credentials, and
//!   they work; a tampered or expired one is refused with 401.
//! - Peers on loopback, link-local, private ranges not configured, and the
//!   node's own service ports are refused (403) and get no data; a
//!   configured private range (guifi.net's 10.0.0.0/8) is allowed.
//! - Relaying works (peer ↔ client, and client ↔ client through two relays
//!   of the same node) where allowed.
//! - Quotas: allocations per user (486), bandwidth per allocation.
//!
//! Nodes: `strict` has the default peer policy; `open` allows loopback
//! peers (as the benchmark does) and 10.0.0.0/8; `slow` has a 64 kbit/s
//! allocation bandwidth.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM};
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    Getter, Message, MessageType, Setter, BINDING_REQUEST, CLASS_INDICATION, CLASS_REQUEST, METHOD_ALLOCATE,
    METHOD_CHANNEL_BIND, METHOD_CREATE_PERMISSION, METHOD_REFRESH, METHOD_SEND,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tokio::net::UdpSocket;
use turn::proto::channum::ChannelNumber;
use turn::proto::data::Data;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;
use turn::proto::PROTO_UDP;
use webrtc_util::Conn as _;
use xarxa_tests::{now_ms, unique, Node};

const SECRET: &str = "turn-test-secret-0123456789";
const QUIET: Duration = Duration::from_millis(1500);

fn strict() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        Node::start(
            "turn-strict",
            &[
                ("XARXA_TURN__SECRET", SECRET),
                ("XARXA_TURN__MAX_ALLOCATIONS_PER_USER", "2"),
                ("XARXA_LIMITS__REGISTRATIONS_PER_ADDRESS", "100000"),
            ],
        )
        .expect("starting the strict TURN node")
    })
}

fn open() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        Node::start(
            "turn-open",
            &[
                ("XARXA_TURN__ALLOW_LOOPBACK_PEERS", "true"),
                ("XARXA_TURN__ALLOWED_PEER_RANGES", "[\"10.0.0.0/8\"]"),
                ("XARXA_LIMITS__REGISTRATIONS_PER_ADDRESS", "100000"),
            ],
        )
        .expect("starting the open TURN node")
    })
}

fn turn_addr(node: &Node) -> SocketAddr {
    node.info().turn.as_deref().expect("node.json names the TURN address").parse().expect("a socket address")
}

/// What `GET /api/v1/ice` gave.
struct Ice {
    urls: Vec<String>,
    username: String,
    credential: String,
    ttl_s: u64,
}

async fn ice(node: &Node, token: &str) -> Result<Ice> {
    let r = node.get("/api/v1/ice", Some(token)).await?.expect_status(200)?;
    let server = &r.body["ice_servers"][0];
    let urls = server["urls"].as_array().context("urls")?.iter().filter_map(|u| u.as_str().map(str::to_owned));
    Ok(Ice {
        urls: urls.collect(),
        username: server["username"].as_str().context("username")?.to_owned(),
        credential: server["credential"].as_str().context("credential")?.to_owned(),
        ttl_s: r.body["ttl_s"].as_u64().context("ttl_s")?,
    })
}

/// A fresh user's TURN credentials on `node`.
async fn creds(node: &Node, prefix: &str) -> Result<(String, String)> {
    let user = node.user(&unique(prefix)).await?;
    let ice = ice(node, &user.token).await?;
    Ok((ice.username, ice.credential))
}

/// REST credentials computed the way coturn's `use-auth-secret` does.
fn rest_password(secret: &str, username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, username.as_bytes()).as_ref())
}

fn error_code(m: &Message) -> Option<u16> {
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|()| e.code.0)
}

fn addr_of(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// A raw TURN client: one UDP socket (one 5-tuple, so one allocation),
/// long-term credentials learnt from the first challenge.
struct Raw {
    sock: UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    realm: String,
    nonce: String,
}

type Attrs = Vec<Box<dyn Setter>>;

impl Raw {
    async fn new(server: SocketAddr, username: &str, password: &str) -> Result<Self> {
        Ok(Self {
            sock: UdpSocket::bind("127.0.0.1:0").await?,
            server,
            username: username.to_owned(),
            password: password.to_owned(),
            realm: String::new(),
            nonce: String::new(),
        })
    }

    /// Sends `m` and waits for the response with its transaction id
    /// (three tries, 700 ms each).
    async fn roundtrip(&self, m: &Message) -> Result<Message> {
        let mut buf = vec![0u8; 2048];
        for _ in 0..3 {
            self.sock.send_to(&m.raw, self.server).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(700);
            while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf)).await {
                let mut r = Message::new();
                if r.unmarshal_binary(&buf[..n]).is_ok() && r.transaction_id == m.transaction_id {
                    return Ok(r);
                }
            }
        }
        bail!("no response from {} to {}", self.server, m.typ)
    }

    fn key(&self) -> MessageIntegrity {
        MessageIntegrity::new_long_term_integrity(self.username.clone(), self.realm.clone(), self.password.clone())
    }

    /// An authenticated request of `method`: learns realm and nonce from
    /// a 401 or 438 challenge and tries again. Returns the final response,
    /// success or error; a success must carry a valid MESSAGE-INTEGRITY.
    async fn request(&mut self, method: stun::message::Method, attrs: impl Fn() -> Attrs) -> Result<Message> {
        for _ in 0..3 {
            let mut setters: Attrs =
                vec![Box::new(TransactionId::new()), Box::new(MessageType::new(method, CLASS_REQUEST))];
            setters.extend(attrs());
            if !self.nonce.is_empty() {
                setters.push(Box::new(TextAttribute::new(stun::attributes::ATTR_USERNAME, self.username.clone())));
                setters.push(Box::new(TextAttribute::new(ATTR_REALM, self.realm.clone())));
                setters.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone())));
                setters.push(Box::new(self.key()));
            }
            setters.push(Box::new(FINGERPRINT));
            let mut m = Message::new();
            m.build(&setters).map_err(|e| anyhow!("building {method}: {e}"))?;
            let mut r = self.roundtrip(&m).await?;
            let code = error_code(&r);
            let had_nonce = !self.nonce.is_empty();
            if code == Some(438) || (code == Some(401) && !had_nonce) {
                self.realm = TextAttribute::get_from_as(&r, ATTR_REALM).map_err(|e| anyhow!("realm: {e}"))?.text;
                self.nonce = TextAttribute::get_from_as(&r, ATTR_NONCE).map_err(|e| anyhow!("nonce: {e}"))?.text;
                continue;
            }
            if code.is_none() {
                self.key().check(&mut r).map_err(|e| anyhow!("the success response is not signed right: {e}"))?;
            }
            return Ok(r);
        }
        bail!("{method}: still challenged after three tries")
    }

    async fn allocate(&mut self) -> Result<Message> {
        self.request(METHOD_ALLOCATE, || vec![Box::new(RequestedTransport { protocol: PROTO_UDP })]).await
    }

    /// Allocates and returns the relayed address.
    async fn relay(&mut self) -> Result<SocketAddr> {
        let r = self.allocate().await?;
        if let Some(code) = error_code(&r) {
            bail!("allocate refused with {code}");
        }
        let mut relayed = RelayedAddress::default();
        relayed.get_from(&r).map_err(|e| anyhow!("XOR-RELAYED-ADDRESS: {e}"))?;
        Ok(addr_of(relayed.ip, relayed.port))
    }

    async fn permission(&mut self, peer: SocketAddr) -> Result<Option<u16>> {
        let r = self
            .request(METHOD_CREATE_PERMISSION, || vec![Box::new(PeerAddress { ip: peer.ip(), port: peer.port() })])
            .await?;
        Ok(error_code(&r))
    }

    async fn bind_channel(&mut self, number: u16, peer: SocketAddr) -> Result<Option<u16>> {
        let r = self
            .request(METHOD_CHANNEL_BIND, || {
                vec![Box::new(ChannelNumber(number)), Box::new(PeerAddress { ip: peer.ip(), port: peer.port() })]
            })
            .await?;
        Ok(error_code(&r))
    }

    async fn release(&mut self) -> Result<Option<u16>> {
        let r = self.request(METHOD_REFRESH, || vec![Box::new(Lifetime(Duration::ZERO))]).await?;
        Ok(error_code(&r))
    }

    async fn send_indication(&self, peer: SocketAddr, data: &[u8]) -> Result<()> {
        let mut m = Message::new();
        m.build(&[
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
            Box::new(PeerAddress { ip: peer.ip(), port: peer.port() }),
            Box::new(Data(data.to_vec())),
        ])
        .map_err(|e| anyhow!("{e}"))?;
        self.sock.send_to(&m.raw, self.server).await?;
        Ok(())
    }

    async fn send_channel(&self, number: u16, data: &[u8]) -> Result<()> {
        let mut pkt = number.to_be_bytes().to_vec();
        pkt.extend_from_slice(&u16::try_from(data.len())?.to_be_bytes());
        pkt.extend_from_slice(data);
        self.sock.send_to(&pkt, self.server).await?;
        Ok(())
    }

    /// The next relayed payload (ChannelData or Data indication) within
    /// `wait`, with its channel number or peer address.
    async fn recv_relayed(&self, wait: Duration) -> Result<Option<(Vec<u8>, String)>> {
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(r) = tokio::time::timeout_at(deadline, self.sock.recv_from(&mut buf)).await {
            let (n, _) = r?;
            let pkt = &buf[..n];
            if pkt[0] & 0xC0 == 0x40 && n >= 4 {
                let len = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
                let number = u16::from_be_bytes([pkt[0], pkt[1]]);
                return Ok(Some((pkt[4..4 + len].to_vec(), format!("channel {number:#x}"))));
            }
            let mut m = Message::new();
            if m.unmarshal_binary(pkt).is_ok() && m.typ.method == stun::message::METHOD_DATA {
                let mut data = Data::default();
                let mut peer = PeerAddress::default();
                data.get_from(&m).map_err(|e| anyhow!("{e}"))?;
                peer.get_from(&m).map_err(|e| anyhow!("{e}"))?;
                return Ok(Some((data.0, format!("peer {}:{}", peer.ip, peer.port))));
            }
        }
        Ok(None)
    }
}

/// Fails if anything arrives on `sock` within [`QUIET`].
async fn expect_nothing(sock: &UdpSocket, what: &str) -> Result<()> {
    let mut buf = [0u8; 2048];
    match tokio::time::timeout(QUIET, sock.recv_from(&mut buf)).await {
        Err(_) => Ok(()),
        Ok(r) => bail!("{what}: a datagram arrived from {:?}", r.map(|(_, from)| from)),
    }
}

async fn expect_datagram(sock: &UdpSocket, what: &str) -> Result<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .map_err(|_| anyhow!("{what}: nothing arrived"))??;
    Ok((buf[..n].to_vec(), from))
}

/// webrtc-rs's TURN client on its own loopback socket, listening.
async fn webrtc_client(turn: SocketAddr, username: String, password: String) -> Result<turn::client::Client> {
    let conn = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let c = turn::client::Client::new(turn::client::ClientConfig {
        stun_serv_addr: turn.to_string(),
        turn_serv_addr: turn.to_string(),
        username,
        password,
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn,
        vnet: None,
    })
    .await?;
    c.listen().await?;
    Ok(c)
}

#[tokio::test]
async fn logged_in_users_get_working_time_limited_credentials() -> Result<()> {
    let n = strict();
    let turn = turn_addr(n);
    n.get("/api/v1/ice", None).await?.expect_error(401, "invalid_token")?;
    n.get("/api/v1/ice", Some("xt_not-a-token")).await?.expect_error(401, "invalid_token")?;

    let user = n.user(&unique("ice")).await?;
    let ice = ice(n, &user.token).await?;
    let port = turn.port();
    assert_eq!(ice.urls, [format!("stun:127.0.0.1:{port}"), format!("turn:127.0.0.1:{port}?transport=udp")]);
    // REST style: "<expiry>:<user>", expiring after the default 24 hours.
    let (expiry, name) = ice.username.split_once(':').context("username is expiry:user")?;
    assert_eq!(name, user.name);
    assert_eq!(ice.ttl_s, 24 * 3600);
    let expiry: u64 = expiry.parse()?;
    let now_s = now_ms() / 1000;
    assert!(expiry.abs_diff(now_s + ice.ttl_s) < 60, "expiry {expiry} should be about now + ttl ({now_s})");
    assert_eq!(ice.credential, rest_password(SECRET, &ice.username), "HMAC-SHA1 of the username");
    assert!(!ice.credential.contains(SECRET) && !ice.username.contains(SECRET), "the secret is never handed out");

    // STUN needs no credentials.
    let raw = Raw::new(turn, "", "").await?;
    let mut m = Message::new();
    m.build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST), Box::new(FINGERPRINT)])
        .map_err(|e| anyhow!("{e}"))?;
    let r = raw.roundtrip(&m).await?;
    let mut mapped = XorMappedAddress::default();
    mapped.get_from(&r).map_err(|e| anyhow!("XOR-MAPPED-ADDRESS: {e}"))?;
    assert_eq!(addr_of(mapped.ip, mapped.port), raw.sock.local_addr()?);

    // TURN with the credentials: a relayed address on the node, in the relay port range.
    let mut client = Raw::new(turn, &ice.username, &ice.credential).await?;
    let relayed = client.relay().await?;
    assert_eq!(relayed.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(relayed.port() >= 49152, "relay port {relayed}");
    assert_eq!(client.realm, "turn-strict", "the realm is the zone");
    // A second Allocate on the same 5-tuple is a mismatch.
    assert_eq!(error_code(&client.allocate().await?), Some(437));
    assert_eq!(client.release().await?, None);

    // Tampered credentials are refused.
    let mut wrong = Raw::new(turn, &ice.username, "bm90IHRoZSByaWdodCBwYXNzd29yZA==").await?;
    assert_eq!(error_code(&wrong.allocate().await?), Some(401));
    let other_user = ice.username.replace(name, "mallory");
    let mut stolen = Raw::new(turn, &other_user, &ice.credential).await?;
    assert_eq!(error_code(&stolen.allocate().await?), Some(401), "a credential is bound to its username");
    Ok(())
}

#[tokio::test]
async fn expired_credentials_are_refused() -> Result<()> {
    let n = strict();
    let turn = turn_addr(n);
    let now_s = now_ms() / 1000;
    // Correctly signed, but expired ten seconds ago.
    let expired = format!("{}:alice", now_s - 10);
    let mut client = Raw::new(turn, &expired, &rest_password(SECRET, &expired)).await?;
    let r = client.allocate().await?;
    assert_eq!(error_code(&r), Some(401), "an expired credential must be refused: {r}");
    // The same signature scheme with an expiry ahead is accepted, so it is
    // the expiry that was refused.
    let fresh = format!("{}:alice", now_s + 60);
    let mut client = Raw::new(turn, &fresh, &rest_password(SECRET, &fresh)).await?;
    client.relay().await?;
    // webrtc-rs's client gives up too.
    let c = webrtc_client(turn, expired.clone(), rest_password(SECRET, &expired)).await?;
    assert!(c.allocate().await.is_err(), "webrtc-rs allocated with an expired credential");
    c.close().await?;
    Ok(())
}

#[tokio::test]
async fn relay_to_loopback_and_other_forbidden_peers_is_refused() -> Result<()> {
    let n = strict();
    let turn = turn_addr(n);
    let (username, password) = creds(n, "lo").await?;
    let peer = UdpSocket::bind("127.0.0.1:0").await?;
    let peer_addr = peer.local_addr()?;

    let mut client = Raw::new(turn, &username, &password).await?;
    client.relay().await?;
    assert_eq!(client.permission(peer_addr).await?, Some(403), "CreatePermission to 127.0.0.1");
    assert_eq!(client.bind_channel(0x4000, peer_addr).await?, Some(403), "ChannelBind to 127.0.0.1");
    for forbidden in ["127.1.2.3:9", "169.254.10.10:9", "10.1.2.3:9", "192.168.1.1:9", "0.0.0.0:9", "224.0.0.1:9"] {
        let a: SocketAddr = forbidden.parse()?;
        assert_eq!(client.permission(a).await?, Some(403), "CreatePermission to {a}");
    }
    assert_eq!(client.permission("[::1]:9".parse()?).await?, Some(443), "IPv6 peer on an IPv4 relay");
    // Public addresses are fine (nothing is sent to it).
    assert_eq!(client.permission("192.0.2.10:9".parse()?).await?, None);
    // Data without a permission goes nowhere.
    client.send_indication(peer_addr, b"let me in").await?;
    client.send_channel(0x4000, b"let me in").await?;
    expect_nothing(&peer, "the loopback peer of a raw client").await?;

    // An application using webrtc-rs's TURN client cannot reach 127.0.0.1 either.
    let (username, password) = creds(n, "lo-webrtc").await?;
    let c = webrtc_client(turn, username, password).await?;
    let relay = c.allocate().await?;
    assert!(relay.send_to(b"hello loopback", peer_addr).await.is_err(), "webrtc-rs sent to 127.0.0.1");
    expect_nothing(&peer, "the loopback peer of webrtc-rs").await?;
    relay.close().await?;
    c.close().await?;
    Ok(())
}

#[tokio::test]
async fn relays_where_allowed_but_never_to_the_nodes_own_ports() -> Result<()> {
    let n = open();
    let turn = turn_addr(n);
    let https: SocketAddr = n.info().https.parse()?;
    let peer = UdpSocket::bind("127.0.0.1:0").await?;
    let peer_addr = peer.local_addr()?;

    // webrtc-rs client ↔ peer, both ways.
    let (username, password) = creds(n, "relay").await?;
    let c = webrtc_client(turn, username, password).await?;
    let relay = c.allocate().await?;
    let relayed = relay.local_addr()?;
    relay.send_to(b"ping through the relay", peer_addr).await?;
    let (got, from) = expect_datagram(&peer, "client to peer").await?;
    assert_eq!((got.as_slice(), from), (&b"ping through the relay"[..], relayed));
    peer.send_to(b"pong", relayed).await?;
    let mut buf = [0u8; 64];
    let (len, from) = tokio::time::timeout(Duration::from_secs(5), relay.recv_from(&mut buf)).await??;
    assert_eq!((&buf[..len], from), (&b"pong"[..], peer_addr));

    // The configured private range is allowed; others are not.
    let (username, password) = creds(n, "ranges").await?;
    let mut raw = Raw::new(turn, &username, &password).await?;
    let raw_relayed = raw.relay().await?;
    assert_eq!(raw.permission("10.1.2.3:9".parse()?).await?, None, "10.0.0.0/8 is configured");
    assert_eq!(raw.permission("192.168.1.1:9".parse()?).await?, Some(403));
    assert_eq!(raw.permission("169.254.1.1:9".parse()?).await?, Some(403), "link-local is never allowed");

    // Loopback is allowed here, but never the node's own service ports.
    for (number, port, what) in [(0x4001, turn.port(), "TURN"), (0x4002, https.port(), "HTTPS")] {
        let a = addr_of(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        assert_eq!(raw.bind_channel(number, a).await?, Some(403), "ChannelBind to the {what} port");
    }

    // Client ↔ client through two relays of the same node.
    let (username, password) = creds(n, "relay2").await?;
    let mut other = Raw::new(turn, &username, &password).await?;
    let other_relayed = other.relay().await?;
    assert_eq!(raw.bind_channel(0x4100, other_relayed).await?, None);
    assert_eq!(other.permission(raw_relayed).await?, None);
    raw.send_channel(0x4100, b"relay to relay").await?;
    let (data, via) = other.recv_relayed(Duration::from_secs(5)).await?.context("nothing relayed to relay")?;
    assert_eq!(data, b"relay to relay");
    assert_eq!(via, format!("peer {}:{}", raw_relayed.ip(), raw_relayed.port()));
    relay.close().await?;
    c.close().await?;
    Ok(())
}

#[tokio::test]
async fn allocations_per_user_are_limited() -> Result<()> {
    let n = strict();
    let turn = turn_addr(n);
    let (username, password) = creds(n, "quota").await?;
    let mut first = Raw::new(turn, &username, &password).await?;
    let mut second = Raw::new(turn, &username, &password).await?;
    let mut third = Raw::new(turn, &username, &password).await?;
    first.relay().await?;
    second.relay().await?;
    assert_eq!(error_code(&third.allocate().await?), Some(486), "a third allocation past the quota of 2");
    // Another user is not affected.
    let (u2, p2) = creds(n, "quota-other").await?;
    Raw::new(turn, &u2, &p2).await?.relay().await?;
    // Releasing one makes room.
    assert_eq!(first.release().await?, None);
    third.relay().await?;
    Ok(())
}

#[tokio::test]
async fn bandwidth_per_allocation_is_limited() -> Result<()> {
    let n = Node::start(
        "turn-slow",
        &[("XARXA_TURN__ALLOW_LOOPBACK_PEERS", "true"), ("XARXA_TURN__MAX_KBPS_PER_ALLOCATION", "64")],
    )?;
    let turn = turn_addr(&n);
    let (username, password) = creds(&n, "slow").await?;
    let peer = UdpSocket::bind("127.0.0.1:0").await?;
    let mut client = Raw::new(turn, &username, &password).await?;
    client.relay().await?;
    assert_eq!(client.bind_channel(0x4000, peer.local_addr()?).await?, None);
    // 200 KB at once; 64 kbit/s is 8 KB/s, with a burst of 64 KiB.
    let payload = vec![7u8; 1000];
    for _ in 0..200 {
        client.send_channel(0x4000, &payload).await?;
        tokio::task::yield_now().await;
    }
    let mut got = 0usize;
    let mut buf = [0u8; 2048];
    while let Ok(Ok((len, _))) = tokio::time::timeout(QUIET, peer.recv_from(&mut buf)).await {
        got += len;
    }
    assert!(got >= 30_000, "the burst should pass: {got} bytes");
    assert!(got <= 80_000, "a 64 kbit/s allocation relayed {got} bytes at once");
    Ok(())
}

#[tokio::test]
async fn garbage_does_not_hurt_the_server() -> Result<()> {
    let n = strict();
    let turn = turn_addr(n);
    let sock = UdpSocket::bind("127.0.0.1:0").await?;
    let mut junk: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0x40, 0, 0xff, 0xff], vec![0; 20], vec![0xff; 1500]];
    let mut header = vec![0, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42];
    header.extend_from_slice(&[1; 12]);
    header.extend_from_slice(&[0x00, 0x08, 0x00, 0x40, 1, 2, 3, 4]); // an attribute longer than the message
    junk.push(header);
    let mut seed = 0x2545_f491_u32;
    for len in (0..600).step_by(7) {
        let mut v = Vec::with_capacity(len);
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            v.push(seed.to_le_bytes()[0]);
        }
        if len > 8 {
            v[0] &= 0x3f;
            v[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        }
        junk.push(v);
    }
    for j in &junk {
        sock.send_to(j, turn).await?;
    }
    // Still answering.
    let (username, password) = creds(n, "after-junk").await?;
    Raw::new(turn, &username, &password).await?.relay().await?;
    n.assert_alive().await?;
    Ok(())
}
