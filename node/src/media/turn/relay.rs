//! The TURN server proper, in coturn's shape: one thread per core, each
//! with its own single-threaded runtime and its own socket on the TURN
//! port (`SO_REUSEPORT`: the kernel keeps each client on one socket). A
//! thread's [`Listener`] task owns that socket's allocations (the control
//! plane and the client → peer data path); each allocation has one task on
//! the same thread reading its relay socket (peer → client), so a packet
//! never waits for another thread to wake. The two tasks share, per
//! allocation, a small locked table of permissions, channels and the
//! bandwidth bucket; the lock is held for a few lookups, never across an
//! await. What threads share ([`Shared`]): settings, nonces, the quota
//! counts and the host's ports.
//!
//! The data path batches system calls (quinn-udp): sockets are read up to
//! [`BATCH`] datagrams per `recvmmsg` (and GRO-coalesced datagrams are
//! split), and consecutive datagrams to one destination of one size are
//! sent with one `sendmsg` (GSO). Nothing on the data path waits to send:
//! a full socket buffer drops the datagram, as any router does.
//!
//! Why one file of ~900 lines: the listener's control plane (Allocate,
//! Refresh, CreatePermission, ChannelBind, Send) and the two data paths
//! act on the same allocation table under one lock discipline, and read
//! best side by side; the sockets (`udp`) and what an allocation grants
//! (`peers`) are apart. The next cut, if it grows, is the control plane.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng as _;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use super::auth::{self, Nonces};
pub(crate) use super::peers::HostPorts;
use super::peers::{Bucket, Channel, Peers, Permission};
use super::policy::{canonical, is_this_host, Peer, Refusal};
use super::udp::{Outbox, SCRATCH};
pub(crate) use super::udp::{Rx, Udp};
use super::wire::{self, attr, method, Builder, Class, Message};
use super::Settings;
use crate::pii::Pii;

/// Allocation lifetime when the client asks for none (RFC 8656).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// Longest allocation lifetime granted.
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Permission lifetime (RFC 8656, fixed).
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// Channel binding lifetime (RFC 8656, fixed).
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// How long a nonce stays fresh.
pub(crate) const NONCE_LIFETIME: Duration = Duration::from_secs(600);
/// Permissions and channels one allocation may hold.
const MAX_PEERS_PER_ALLOCATION: usize = 256;
/// Largest datagram relayed from a peer (WebRTC sends at most ~1.2 KB);
/// bigger ones are dropped.
const MAX_PEER_DATAGRAM: usize = 8 * 1024;
/// Socket buffer sizes asked of the kernel (it may give less).
const LISTEN_BUFFER: usize = 4 << 20;
const RELAY_BUFFER: usize = 1 << 20;
/// Datagrams read per system call.
pub(crate) const BATCH: usize = quinn_udp::BATCH_SIZE;
/// Room for one read: a datagram, or several coalesced by GRO.
pub(super) const SLOT: usize = 64 * 1024;
/// Largest datagram sent in a GSO batch (more might exceed a link's MTU,
/// and GSO does not fragment).
pub(super) const MAX_GSO_SEGMENT: usize = 1280;
/// Bytes in one GSO batch.
pub(super) const MAX_GSO_BYTES: usize = 60 * 1024;
/// Batches read in a row before other tasks get a turn.
const BATCHES_PER_TURN: usize = 8;
/// Tries at finding a free relay port.
const PORT_TRIES: usize = 64;

/// The attributes this server understands in requests (any other
/// comprehension-required attribute gets 420).
const KNOWN: &[u16] = &[
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::REALM,
    attr::NONCE,
    attr::LIFETIME,
    attr::REQUESTED_TRANSPORT,
    attr::DONT_FRAGMENT,
    attr::EVEN_PORT,
    attr::RESERVATION_TOKEN,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::CHANNEL_NUMBER,
];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

struct Allocation {
    username: String,
    user: String,
    relay: Arc<Udp>,
    port: u16,
    expires: Instant,
    peers: Arc<Mutex<Peers>>,
    task: AbortHandle,
    /// The Allocate transaction and its reply, resent on retransmission.
    txn: [u8; 12],
    reply: Vec<u8>,
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request that passed authentication.
struct Authed {
    username: String,
    user: String,
    key: [u8; 16],
}

/// How a request fails: a STUN error code, and whether the reply carries
/// the REALM and NONCE of a challenge.
#[derive(Debug, Clone, Copy)]
struct Failure {
    code: u16,
    reason: &'static str,
    challenge: bool,
}

const fn fail(code: u16, reason: &'static str) -> Failure {
    Failure { code, reason, challenge: false }
}

const BAD_REQUEST: Failure = fail(400, "Bad Request");
const FORBIDDEN: Failure = fail(403, "Forbidden");
const MISMATCH: Failure = fail(437, "Allocation Mismatch");
const WRONG_CREDENTIALS: Failure = fail(441, "Wrong Credentials");
const PEER_FAMILY: Failure = fail(443, "Peer Address Family Mismatch");
const QUOTA: Failure = fail(486, "Allocation Quota Reached");
const CAPACITY: Failure = fail(508, "Insufficient Capacity");

/// Live allocations per user and in all, across threads.
#[derive(Debug, Default)]
struct Quota {
    per_user: HashMap<String, u32>,
    total: usize,
}

/// Counters of the whole server, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Allocations granted since start.
    pub(crate) allocated: AtomicU64,
    /// Payload bytes relayed from clients to peers.
    pub(crate) to_peers: AtomicU64,
    /// Payload bytes relayed from peers to clients.
    pub(crate) to_clients: AtomicU64,
}

/// What every thread of the server shares.
pub(crate) struct Shared {
    settings: Settings,
    host: Arc<HostPorts>,
    nonces: Nonces,
    quota: Mutex<Quota>,
    pub(crate) counters: Arc<Counters>,
}

impl Shared {
    pub(crate) fn new(settings: Settings, host: Arc<HostPorts>) -> Self {
        Self {
            settings,
            host,
            nonces: Nonces::new(NONCE_LIFETIME),
            quota: Mutex::new(Quota::default()),
            counters: Arc::default(),
        }
    }

    /// Live allocations.
    pub(crate) fn allocations(&self) -> usize {
        lock(&self.quota).total
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Counts one more allocation for `user`, unless a quota forbids it.
    fn reserve(&self, user: &str) -> Result<(), Failure> {
        let mut q = lock(&self.quota);
        let used = q.per_user.get(user).copied().unwrap_or(0);
        if used >= self.settings.max_allocations_per_user {
            info!(user = %Pii(&user), allocations = used, "turn: allocation quota reached");
            return Err(QUOTA);
        }
        if q.total >= self.settings.max_allocations {
            warn!(allocations = q.total, "turn: allocation limit reached (turn.max_allocations)");
            return Err(CAPACITY);
        }
        q.total += 1;
        *q.per_user.entry(user.to_owned()).or_insert(0) += 1;
        self.counters.allocated.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn release(&self, user: &str) {
        let mut q = lock(&self.quota);
        q.total = q.total.saturating_sub(1);
        if let Some(n) = q.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                q.per_user.remove(user);
            }
        }
    }
}

/// One thread's task: its socket and its allocations.
pub(crate) struct Listener {
    socket: Arc<Udp>,
    shared: Arc<Shared>,
    settings: SettingsRef,
    host: Arc<HostPorts>,
    allocations: HashMap<SocketAddr, Allocation>,
    /// Replies.
    out: Vec<u8>,
    rx: Rx,
    /// Client → peer datagrams gathered for (client's allocation, peer).
    outbox: Outbox,
    pending: Option<(SocketAddr, SocketAddr)>,
    /// The local address the datagram being handled came to.
    dst_ip: Option<IpAddr>,
}

/// The settings, through the shared state.
#[derive(Clone)]
struct SettingsRef(Arc<Shared>);

impl std::ops::Deref for SettingsRef {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.0.settings
    }
}

/// Sets the kernel buffer sizes of `socket` (best effort).
pub(crate) fn tune(socket: &std::net::UdpSocket, bytes: usize) {
    let s = socket2::SockRef::from(socket);
    let _ = s.set_recv_buffer_size(bytes);
    let _ = s.set_send_buffer_size(bytes);
}

impl Listener {
    pub(crate) fn new(socket: Arc<Udp>, shared: Arc<Shared>) -> Self {
        Self {
            socket,
            settings: SettingsRef(shared.clone()),
            host: shared.host.clone(),
            shared,
            allocations: HashMap::new(),
            out: Vec::with_capacity(512),
            rx: Rx::new(),
            outbox: Outbox::default(),
            pending: None,
            dst_ip: None,
        }
    }

    /// The listen buffer size to ask for.
    pub(crate) const LISTEN_BUFFER: usize = LISTEN_BUFFER;

    /// Serves until `stop` turns true (or its sender goes away).
    pub(crate) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                _ = tick.tick() => self.purge(Instant::now()),
                ready = self.socket.io.readable() => match ready {
                    Ok(()) => self.drain(),
                    Err(e) => {
                        debug!(error = %e, "turn: socket not readable");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                },
            }
        }
        let n = self.allocations.len();
        for client in self.allocations.keys().copied().collect::<Vec<_>>() {
            self.remove(client);
        }
        info!(allocations = n, "turn: stopped");
    }

    fn purge(&mut self, now: Instant) {
        let expired: Vec<SocketAddr> =
            self.allocations.iter().filter(|(_, a)| a.expires < now).map(|(c, _)| *c).collect();
        for client in expired {
            debug!(client = %Pii(&client), "turn: allocation expired");
            self.remove(client);
        }
        for a in self.allocations.values() {
            lock(&a.peers).purge(now);
        }
    }

    fn remove(&mut self, client: SocketAddr) {
        if let Some(a) = self.allocations.remove(&client) {
            self.shared.release(&a.user);
            self.host.relays.write().unwrap_or_else(PoisonError::into_inner).remove(&a.port);
        }
    }

    /// Handles what is queued on the socket, a batch at a time.
    fn drain(&mut self) {
        for _ in 0..BATCHES_PER_TURN {
            let n = match self.socket.recv_batch(&mut self.rx) {
                Ok(n) => n,
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        debug!(error = %e, "turn: receive failed");
                    }
                    break;
                }
            };
            let rx = std::mem::replace(&mut self.rx, Rx::placeholder());
            for (from, dst, pkt) in rx.datagrams(n) {
                self.dst_ip = dst;
                self.on_datagram(pkt, SocketAddr::new(canonical(from.ip()), from.port()));
            }
            self.flush_data();
            self.rx = rx;
            if n < BATCH {
                break;
            }
        }
    }

    fn on_datagram(&mut self, pkt: &[u8], from: SocketAddr) {
        if pkt.first().is_some_and(|b| b & 0xC0 == 0x40) {
            return self.on_channel_data(pkt, from);
        }
        let Ok(m) = Message::parse(pkt) else { return };
        if (m.method, m.class) == (method::SEND, Class::Indication) {
            return self.on_send(&m, from);
        }
        // Control traffic: what was gathered goes out first.
        self.flush_data();
        match (m.method, m.class) {
            (method::BINDING, Class::Request) => {
                let mut b = Builder::new(&mut self.out, method::BINDING, Class::Success, m.txn);
                b.xor_addr(attr::XOR_MAPPED_ADDRESS, from);
                if m.has_fingerprint {
                    b.fingerprint();
                }
                self.send_out(from);
            }
            (method::ALLOCATE | method::REFRESH | method::CREATE_PERMISSION | method::CHANNEL_BIND, Class::Request) => {
                self.on_request(&m, from);
            }
            (_, Class::Request) => {
                self.write_error(&m, BAD_REQUEST, None);
                self.send_out(from);
            }
            _ => {}
        }
    }

    fn send_out(&self, to: SocketAddr) {
        self.socket.send(to, &self.out, None);
    }

    /// Writes an error reply; authenticated requests get it signed.
    fn write_error(&mut self, m: &Message<'_>, f: Failure, key: Option<&[u8; 16]>) {
        let mut b = Builder::new(&mut self.out, m.method, Class::Error, m.txn);
        b.error(f.code, f.reason);
        if let Some(key) = key {
            b.integrity(key);
        }
        if m.has_fingerprint {
            b.fingerprint();
        }
    }

    fn write_challenge(&mut self, m: &Message<'_>, f: Failure, from: SocketAddr) {
        let nonce = self.shared.nonces.mint(from, unix_now());
        let mut b = Builder::new(&mut self.out, m.method, Class::Error, m.txn);
        b.error(f.code, f.reason).attr(attr::REALM, self.settings.realm.as_bytes()).attr(attr::NONCE, nonce.as_bytes());
        if m.has_fingerprint {
            b.fingerprint();
        }
    }

    fn on_request(&mut self, m: &Message<'_>, from: SocketAddr) {
        let unknown = m.unknown_required(KNOWN);
        if !unknown.is_empty() {
            let list: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
            let mut b = Builder::new(&mut self.out, m.method, Class::Error, m.txn);
            b.error(420, "Unknown Attribute").attr(attr::UNKNOWN_ATTRIBUTES, &list);
            return self.send_out(from);
        }
        let authed = match self.authenticate(m, from) {
            Ok(a) => a,
            Err(f) => {
                debug!(client = %Pii(&from), code = f.code, "turn: request refused before authentication");
                if f.challenge {
                    self.write_challenge(m, f, from);
                } else {
                    self.write_error(m, f, None);
                }
                return self.send_out(from);
            }
        };
        let now = Instant::now();
        let result = match m.method {
            method::ALLOCATE => self.allocate(m, from, &authed, now),
            method::REFRESH => self.refresh(m, from, &authed, now),
            method::CREATE_PERMISSION => self.create_permission(m, from, &authed, now),
            _ => self.channel_bind(m, from, &authed, now),
        };
        if let Err(f) = result {
            debug!(client = %Pii(&from), user = %Pii(&authed.user), method = m.method, code = f.code, "turn: request refused");
            self.write_error(m, f, Some(&authed.key));
        }
        self.send_out(from);
    }

    fn authenticate(&self, m: &Message<'_>, from: SocketAddr) -> Result<Authed, Failure> {
        let challenge = |code, reason| Failure { code, reason, challenge: true };
        if !m.has_integrity() {
            return Err(challenge(401, "Unauthorized"));
        }
        let text = |t| m.text(t).ok().flatten().ok_or(BAD_REQUEST);
        let (username, realm, nonce) = (text(attr::USERNAME)?, text(attr::REALM)?, text(attr::NONCE)?);
        let now_s = unix_now();
        if !self.shared.nonces.valid(nonce, from, now_s) {
            return Err(challenge(438, "Stale Nonce"));
        }
        if realm != self.settings.realm {
            return Err(challenge(401, "Unauthorized"));
        }
        let user = match auth::check_username(username, now_s) {
            Ok(u) => u,
            Err(e) => {
                debug!(client = %Pii(&from), error = %e, "turn: credentials refused");
                return Err(challenge(401, "Unauthorized"));
            }
        };
        let password = auth::password(&self.settings.secret, username);
        let key = auth::long_term_key(username, realm, &password);
        if !m.integrity_ok(&key) {
            return Err(challenge(401, "Unauthorized"));
        }
        Ok(Authed { username: username.to_owned(), user: user.to_owned(), key })
    }

    fn relay_is_v4(&self) -> bool {
        self.settings.listen.is_ipv4()
    }

    /// The lifetime granted for a requested one.
    fn lifetime(m: &Message<'_>) -> Result<Duration, Failure> {
        let asked = m.u32_attr(attr::LIFETIME).map_err(|_| BAD_REQUEST)?;
        Ok(asked.map_or(DEFAULT_LIFETIME, |s| Duration::from_secs(u64::from(s)).clamp(DEFAULT_LIFETIME, MAX_LIFETIME)))
    }

    fn allocate(&mut self, m: &Message<'_>, from: SocketAddr, a: &Authed, now: Instant) -> Result<(), Failure> {
        if let Some(existing) = self.allocations.get(&from) {
            if existing.txn == m.txn && existing.username == a.username {
                self.out.clone_from(&existing.reply);
                return Ok(());
            }
            return Err(MISMATCH);
        }
        match m.get(attr::REQUESTED_TRANSPORT) {
            None => return Err(BAD_REQUEST),
            Some([17, _, _, _]) => {}
            Some(_) => return Err(fail(442, "Unsupported Transport Protocol")),
        }
        let even = m.get(attr::EVEN_PORT).is_some();
        if m.get(attr::RESERVATION_TOKEN).is_some() {
            // This server makes no reservations, so no token is valid.
            return Err(if even { BAD_REQUEST } else { CAPACITY });
        }
        match m.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => {}
            Some([1, _, _, _]) if self.relay_is_v4() => {}
            Some([2, _, _, _]) if !self.relay_is_v4() => {}
            Some([1 | 2, _, _, _]) => return Err(fail(440, "Address Family not Supported")),
            Some(_) => return Err(BAD_REQUEST),
        }
        let lifetime = Self::lifetime(m)?;
        self.shared.reserve(&a.user)?;
        let bound = self.relay_ip(from).ok_or(fail(500, "Server Error")).and_then(|ip| {
            let (relay, port) = self.bind_relay(even).ok_or(CAPACITY)?;
            Ok((ip, relay, port))
        });
        let (relay_ip, relay, port) = match bound {
            Ok(b) => b,
            Err(f) => {
                self.shared.release(&a.user);
                return Err(f);
            }
        };
        let relayed = SocketAddr::new(relay_ip, port);
        let peers = Arc::new(Mutex::new(Peers {
            permissions: HashMap::new(),
            channels: HashMap::new(),
            by_peer: HashMap::new(),
            bucket: Bucket::new(self.settings.bytes_per_second, now),
        }));
        let task = tokio::spawn(
            PeerToClient {
                relay: relay.clone(),
                socket: self.socket.clone(),
                client: from,
                peers: peers.clone(),
                host: self.host.clone(),
                counters: self.shared.counters.clone(),
            }
            .run(),
        )
        .abort_handle();
        self.host.relays.write().unwrap_or_else(PoisonError::into_inner).insert(port);
        let mut b = Builder::new(&mut self.out, method::ALLOCATE, Class::Success, m.txn);
        b.xor_addr(attr::XOR_RELAYED_ADDRESS, relayed)
            .u32_attr(attr::LIFETIME, u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX))
            .xor_addr(attr::XOR_MAPPED_ADDRESS, from)
            .integrity(&a.key);
        if m.has_fingerprint {
            b.fingerprint();
        }
        info!(client = %Pii(&from), user = %Pii(&a.user), relay = %Pii(&relayed), "turn: allocation created");
        self.allocations.insert(
            from,
            Allocation {
                username: a.username.clone(),
                user: a.user.clone(),
                relay,
                port,
                expires: now + lifetime,
                peers,
                task,
                txn: m.txn,
                reply: self.out.clone(),
            },
        );
        Ok(())
    }

    /// The address to advertise as relayed: the configured one, the listen
    /// address, or the local address the client's packets arrive on.
    fn relay_ip(&self, client: SocketAddr) -> Option<IpAddr> {
        if let Some(ip) = self.settings.relay_ip {
            return Some(ip);
        }
        let listen = self.settings.listen.ip();
        if !listen.is_unspecified() {
            return Some(listen);
        }
        if let Some(ip) = self.dst_ip.map(canonical).filter(|ip| !ip.is_unspecified()) {
            return Some(ip);
        }
        let probe = std::net::UdpSocket::bind(SocketAddr::new(listen, 0)).ok()?;
        probe.connect(client).ok()?;
        Some(probe.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified())
    }

    fn bind_relay(&self, even: bool) -> Option<(Arc<Udp>, u16)> {
        let (lo, hi) = self.settings.relay_ports;
        let taken = |port| self.host.relays.read().unwrap_or_else(PoisonError::into_inner).contains(&port);
        let mut rng = rand::thread_rng();
        for _ in 0..PORT_TRIES {
            let mut port = rng.gen_range(lo..=hi);
            if even {
                port &= !1;
                if port < lo {
                    continue;
                }
            }
            if taken(port) {
                continue;
            }
            let Ok(std) = std::net::UdpSocket::bind(SocketAddr::new(self.settings.listen.ip(), port)) else {
                continue;
            };
            tune(&std, RELAY_BUFFER);
            if std.set_nonblocking(true).is_err() {
                continue;
            }
            if let Ok(sock) = Udp::new(std) {
                return Some((Arc::new(sock), port));
            }
        }
        warn!(lo, hi, "turn: no free relay port");
        None
    }

    fn own_allocation(&mut self, from: SocketAddr, a: &Authed) -> Result<&mut Allocation, Failure> {
        let alloc = self.allocations.get_mut(&from).ok_or(MISMATCH)?;
        if alloc.username != a.username {
            return Err(WRONG_CREDENTIALS);
        }
        Ok(alloc)
    }

    fn refresh(&mut self, m: &Message<'_>, from: SocketAddr, a: &Authed, now: Instant) -> Result<(), Failure> {
        let v4 = self.relay_is_v4();
        let alloc = self.own_allocation(from, a)?;
        if let Some(family) = m.get(attr::REQUESTED_ADDRESS_FAMILY) {
            if !matches!((family, v4), ([1, _, _, _], true) | ([2, _, _, _], false)) {
                return Err(PEER_FAMILY);
            }
        }
        let granted = if m.u32_attr(attr::LIFETIME).map_err(|_| BAD_REQUEST)? == Some(0) {
            None
        } else {
            let lifetime = Self::lifetime(m)?;
            alloc.expires = now + lifetime;
            Some(lifetime)
        };
        let mut b = Builder::new(&mut self.out, method::REFRESH, Class::Success, m.txn);
        b.u32_attr(attr::LIFETIME, granted.map_or(0, |l| u32::try_from(l.as_secs()).unwrap_or(u32::MAX)))
            .integrity(&a.key);
        if m.has_fingerprint {
            b.fingerprint();
        }
        if granted.is_none() {
            debug!(client = %Pii(&from), "turn: allocation released");
            self.remove(from);
        }
        Ok(())
    }

    /// Checks a peer address against the family and the policy.
    fn check_peer(&self, peer: SocketAddr) -> Result<Peer, Failure> {
        let peer_ip = canonical(peer.ip());
        if peer_ip.is_ipv4() != self.relay_is_v4() {
            return Err(PEER_FAMILY);
        }
        self.settings.policy.classify(peer_ip, is_this_host).map_err(|why: Refusal| {
            debug!(peer = %Pii(&peer), %why, "turn: peer refused");
            FORBIDDEN
        })
    }

    fn create_permission(
        &mut self,
        m: &Message<'_>,
        from: SocketAddr,
        a: &Authed,
        now: Instant,
    ) -> Result<(), Failure> {
        self.own_allocation(from, a)?;
        let mut granted = Vec::new();
        for peer in m.xor_addrs(attr::XOR_PEER_ADDRESS) {
            let peer = peer.map_err(|_| BAD_REQUEST)?;
            granted.push((canonical(peer.ip()), self.check_peer(peer)?));
        }
        if granted.is_empty() {
            return Err(BAD_REQUEST);
        }
        let alloc = self.own_allocation(from, a)?;
        {
            let mut peers = lock(&alloc.peers);
            for (ip, kind) in granted {
                if peers.permissions.len() >= MAX_PEERS_PER_ALLOCATION && !peers.permissions.contains_key(&ip) {
                    return Err(CAPACITY);
                }
                peers.permissions.insert(ip, Permission { expires: now + PERMISSION_LIFETIME, kind });
            }
        }
        let mut b = Builder::new(&mut self.out, method::CREATE_PERMISSION, Class::Success, m.txn);
        b.integrity(&a.key);
        if m.has_fingerprint {
            b.fingerprint();
        }
        Ok(())
    }

    fn channel_bind(&mut self, m: &Message<'_>, from: SocketAddr, a: &Authed, now: Instant) -> Result<(), Failure> {
        self.own_allocation(from, a)?;
        let number = match m.get(attr::CHANNEL_NUMBER) {
            Some(&[hi, lo, _, _]) => u16::from_be_bytes([hi, lo]),
            _ => return Err(BAD_REQUEST),
        };
        if !(0x4000..=0x7FFF).contains(&number) {
            return Err(BAD_REQUEST);
        }
        let peer = m.xor_addr(attr::XOR_PEER_ADDRESS).map_err(|_| BAD_REQUEST)?.ok_or(BAD_REQUEST)?;
        let kind = self.check_peer(peer)?;
        let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
        if !self.host.port_ok(kind, peer.port()) {
            debug!(peer = %Pii(&peer), "turn: channel to a port of this machine refused");
            return Err(FORBIDDEN);
        }
        let alloc = self.own_allocation(from, a)?;
        {
            let mut peers = lock(&alloc.peers);
            if peers.channels.get(&number).is_some_and(|c| c.peer != peer)
                || peers.by_peer.get(&peer).is_some_and(|n| *n != number)
            {
                return Err(BAD_REQUEST);
            }
            if peers.channels.len() >= MAX_PEERS_PER_ALLOCATION && !peers.channels.contains_key(&number) {
                return Err(CAPACITY);
            }
            if peers.permissions.len() >= MAX_PEERS_PER_ALLOCATION && !peers.permissions.contains_key(&peer.ip()) {
                return Err(CAPACITY);
            }
            peers.channels.insert(number, Channel { peer, expires: now + CHANNEL_LIFETIME, kind });
            peers.by_peer.insert(peer, number);
            peers.permissions.insert(peer.ip(), Permission { expires: now + PERMISSION_LIFETIME, kind });
        }
        let mut b = Builder::new(&mut self.out, method::CHANNEL_BIND, Class::Success, m.txn);
        b.integrity(&a.key);
        if m.has_fingerprint {
            b.fingerprint();
        }
        Ok(())
    }

    /// Client → peer through a Send indication.
    fn on_send(&mut self, m: &Message<'_>, from: SocketAddr) {
        let Some(alloc) = self.allocations.get(&from) else { return };
        let (Ok(Some(peer)), Some(data)) = (m.xor_addr(attr::XOR_PEER_ADDRESS), m.get(attr::DATA)) else { return };
        let peer = SocketAddr::new(canonical(peer.ip()), peer.port());
        let now = Instant::now();
        let allowed = {
            let mut peers = lock(&alloc.peers);
            match peers.permitted(peer, now) {
                Some(kind) => {
                    (kind == Peer::Remote || self.host.port_ok(kind, peer.port())) && peers.bucket.take(data.len(), now)
                }
                None => false,
            }
        };
        if allowed {
            self.forward(from, peer, data);
        }
    }

    /// Client → peer through a bound channel.
    fn on_channel_data(&mut self, pkt: &[u8], from: SocketAddr) {
        let Some((number, data)) = wire::channel_data(pkt) else { return };
        let Some(alloc) = self.allocations.get(&from) else { return };
        let now = Instant::now();
        let peer = {
            let mut peers = lock(&alloc.peers);
            let Some(ch) = peers.channels.get(&number).copied() else { return };
            if ch.expires < now
                || peers.permitted(ch.peer, now).is_none()
                || (ch.kind != Peer::Remote && !self.host.port_ok(ch.kind, ch.peer.port()))
                || !peers.bucket.take(data.len(), now)
            {
                return;
            }
            ch.peer
        };
        self.forward(from, peer, data);
    }

    /// Queues `data` for `peer` on `client`'s relay, gathering datagrams
    /// to the same peer for one GSO send.
    fn forward(&mut self, client: SocketAddr, peer: SocketAddr, data: &[u8]) {
        let max = self.allocations.get(&client).map_or(1, |a| a.relay.max_segments());
        if self.pending != Some((client, peer)) || !self.outbox.fits(data.len(), max) {
            self.flush_data();
            self.pending = Some((client, peer));
        }
        self.shared.counters.to_peers.fetch_add(data.len() as u64, Ordering::Relaxed);
        self.outbox.push(|b| b.extend_from_slice(data));
    }

    /// Sends the gathered client → peer datagrams.
    fn flush_data(&mut self) {
        if let Some((client, peer)) = self.pending.take() {
            match self.allocations.get(&client) {
                Some(a) => self.outbox.flush(&a.relay, peer),
                None => self.outbox = Outbox::default(),
            }
        }
    }
}

/// Peer → client for one allocation: reads the relay socket, keeps what a
/// permission covers, and frames it as ChannelData (when a channel is
/// bound) or a Data indication.
struct PeerToClient {
    relay: Arc<Udp>,
    socket: Arc<Udp>,
    client: SocketAddr,
    peers: Arc<Mutex<Peers>>,
    host: Arc<HostPorts>,
    counters: Arc<Counters>,
}

impl PeerToClient {
    async fn run(self) {
        let mut txn: [u8; 12] = rand::random();
        loop {
            if let Err(e) = self.relay.io.readable().await {
                debug!(error = %e, "turn: relay socket not readable");
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            SCRATCH.with(|scratch| {
                let Ok(mut scratch) = scratch.try_borrow_mut() else { return };
                let (rx, outbox) = &mut *scratch;
                for _ in 0..BATCHES_PER_TURN {
                    match self.relay.recv_batch(rx) {
                        Ok(n) => {
                            self.relay_batch(rx, n, outbox, &mut txn);
                            if n < BATCH {
                                break;
                            }
                        }
                        Err(e) => {
                            if e.kind() != io::ErrorKind::WouldBlock {
                                debug!(error = %e, "turn: relay receive failed");
                            }
                            break;
                        }
                    }
                }
            });
        }
    }

    fn relay_batch(&self, rx: &Rx, n: usize, outbox: &mut Outbox, txn: &mut [u8; 12]) {
        let now = Instant::now();
        let max = self.socket.max_segments();
        let mut peers = lock(&self.peers);
        let mut relayed = 0;
        for (from, _, data) in rx.datagrams(n) {
            let from = SocketAddr::new(canonical(from.ip()), from.port());
            if data.len() > MAX_PEER_DATAGRAM {
                continue;
            }
            let Some(kind) = peers.permitted(from, now) else { continue };
            if kind != Peer::Remote && !self.host.port_ok(kind, from.port()) {
                continue;
            }
            if !peers.bucket.take(data.len(), now) {
                continue;
            }
            let channel =
                peers.by_peer.get(&from).copied().filter(|c| peers.channels.get(c).is_some_and(|ch| ch.expires >= now));
            let len = match channel {
                Some(_) => wire::CHANNEL_HEADER + data.len(),
                None => wire::data_indication_len(from, data.len()),
            };
            relayed += data.len() as u64;
            if !outbox.fits(len, max) {
                outbox.flush(&self.socket, self.client);
            }
            match channel {
                Some(number) => outbox.push(|b| wire::push_channel_data(b, number, data)),
                None => {
                    // A fresh transaction id per indication (a counter is enough).
                    let c = u64::from_be_bytes([txn[4], txn[5], txn[6], txn[7], txn[8], txn[9], txn[10], txn[11]]);
                    txn[4..].copy_from_slice(&c.wrapping_add(1).to_be_bytes());
                    outbox.push(|b| wire::push_data_indication(b, from, *txn, data));
                }
            }
        }
        drop(peers);
        self.counters.to_clients.fetch_add(relayed, Ordering::Relaxed);
        outbox.flush(&self.socket, self.client);
    }
}
