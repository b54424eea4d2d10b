//! An emulated network for simulations: an in-memory transport whose links
//! have latency, loss, bandwidth, partitions, crashed nodes and NAT, all
//! controlled through one [`Netem`] that the simulator holds.
//!
//! Each node listens on `/memory/<n>` (its *port*). A connection is a pair
//! of byte pipes, one per direction. Every write becomes a chunk stamped
//! with the instant it is due at the other end:
//!
//! ```text
//! start = max(now, wire free)            (bandwidth: one chunk at a time)
//! wire free = start + len / bandwidth
//! due = max(wire free + latency + retransmissions, previous due)   (FIFO)
//! ```
//!
//! A lost chunk is not dropped (the links stand for TCP): it costs one
//! retransmission timeout, `max(min_rto, 2 RTT)`, doubling for each further
//! loss of the same chunk, and holds back every chunk behind it.
//! Reads wait until the head chunk is due. Writers are held back when a
//! pipe holds more than [`PIPE_BYTES`] (the socket buffers).
//!
//! The network's state changes under the simulator's hand:
//! - [`Netem::partition`] puts nodes into groups: dials between groups go
//!   unanswered (they fail after `unreachable_dial`) and open connections
//!   between groups are reset; [`Netem::heal`] ends it.
//! - [`Netem::crash`] makes a node vanish without a word: its connections
//!   become black holes (peers notice only by their own timeouts) and dials
//!   to it go unanswered. A node that stops cleanly instead drops its
//!   swarm: its listener goes away (dials are refused after one RTT) and
//!   its peers read end-of-stream.
//! - [`Netem::set_nat`] puts a node behind a NAT: it dials out, but dials to
//!   it go unanswered, so others reach it only through a relay.
//!
//! The transport ([`NetemTransport`]) is a plain libp2p [`Transport`]; the
//! mesh upgrades it with noise and yamux as it does TCP, so everything above
//! the socket is the code the node ships.
//!
//! Why one file of ~800 lines: the network model, the libp2p transport
//! over it and their tests (a third of the file) change together.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::future::{self, BoxFuture, Ready};
use futures::io::{AsyncRead, AsyncWrite};
use libp2p::core::transport::{DialOpts, ListenerId, Transport, TransportError, TransportEvent};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

/// Bytes a pipe holds before its writer must wait (the socket buffers).
pub const PIPE_BYTES: usize = 256 * 1024;
/// Connections queued at a listener before further dials are refused.
const ACCEPT_QUEUE: usize = 128;
/// Retransmissions of one chunk before it is taken as delivered anyway.
const MAX_RETRANSMISSIONS: u32 = 6;

/// The behaviour of one direction of a link.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkParams {
    /// One-way propagation delay.
    pub latency: Duration,
    /// Probability that a chunk is lost once (and retransmitted).
    pub loss: f64,
    /// Bytes per second, or unlimited.
    pub bandwidth: Option<u64>,
}

/// Gives the parameters of the link from one port to another.
pub type LinkModel = dyn Fn(u64, u64) -> LinkParams + Send + Sync;

/// How [`Netem`] treats failures.
#[derive(Debug, Clone, Copy)]
pub struct NetemConfig {
    /// How long a dial into a black hole (partition, crashed node, NAT)
    /// waits before it fails.
    pub unreachable_dial: Duration,
    /// The smallest retransmission timeout.
    pub min_rto: Duration,
    /// Seed of the loss draws.
    pub seed: u64,
    /// Secure connections with noise, as real sockets are. Without it the
    /// swarms exchange their keys in the clear (libp2p's plaintext
    /// upgrade): identities, signatures and every protocol above stay the
    /// same, and the X25519 handshakes, a quarter of a big simulation's
    /// CPU, are saved.
    pub noise: bool,
}

impl Default for NetemConfig {
    fn default() -> Self {
        Self { unreachable_dial: Duration::from_secs(3), min_rto: Duration::from_millis(200), seed: 0, noise: true }
    }
}

/// Counters of what crossed the emulated network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetemStats {
    /// Bytes written into links.
    pub bytes: u64,
    /// Chunks (writes) carried.
    pub chunks: u64,
    /// Chunk losses (each cost a retransmission timeout).
    pub losses: u64,
    /// Dials made.
    pub dials: u64,
    /// Dials that failed (refused or unanswered).
    pub failed_dials: u64,
    /// Connections established.
    pub connections: u64,
    /// Connections reset by a partition.
    pub resets: u64,
    /// Reads attempted on emulated connections (how often connection
    /// tasks poll their sockets).
    pub polls: u64,
}

/// The emulated network shared by every simulated node.
pub struct Netem {
    links: Box<LinkModel>,
    config: NetemConfig,
    state: Mutex<NetState>,
    rng: Mutex<StdRng>,
    bytes: AtomicU64,
    chunks: AtomicU64,
    losses: AtomicU64,
    dials: AtomicU64,
    failed_dials: AtomicU64,
    connections: AtomicU64,
    resets: AtomicU64,
    polls: AtomicU64,
}

#[derive(Default)]
struct NetState {
    listeners: HashMap<u64, mpsc::Sender<Incoming>>,
    crashed: HashSet<u64>,
    nat: HashSet<u64>,
    /// The partition in force: each listed port's group (unlisted: 0).
    groups: Option<HashMap<u64, u32>>,
    conns: Vec<Weak<Conn>>,
    next_ephemeral: u64,
}

struct Incoming {
    stream: NetemStream,
    from: u64,
}

/// One direction of a connection.
struct Pipe {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    /// Bytes of the head chunk already read.
    head_read: usize,
    queued: usize,
    wire_free: Instant,
    last_due: Instant,
    /// When the writer's close reaches the reader.
    closed_at: Option<Instant>,
    reader_gone: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
}

struct Conn {
    ends: [u64; 2],
    params: [LinkParams; 2],
    cut: AtomicBool,
    blackholed: AtomicBool,
    /// `pipes[s]` carries what side `s` writes.
    pipes: [Mutex<Pipe>; 2],
}

/// One end of an emulated connection: a byte stream for libp2p's
/// upgrades.
pub struct NetemStream {
    conn: Arc<Conn>,
    side: usize,
    netem: Arc<Netem>,
    sleep: Option<Pin<Box<Sleep>>>,
}

/// The libp2p transport of one simulated node (see the module docs).
pub struct NetemTransport {
    netem: Arc<Netem>,
    listeners: Vec<Listener>,
    events: VecDeque<TransportEvent<Ready<Result<NetemStream, io::Error>>, io::Error>>,
}

struct Listener {
    id: ListenerId,
    port: u64,
    rx: mpsc::Receiver<Incoming>,
    tx: mpsc::Sender<Incoming>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The port of a `/memory/<n>` address (optionally ending in `/p2p/<id>`).
pub fn memory_port(addr: &Multiaddr) -> Option<u64> {
    let mut it = addr.iter();
    match (it.next(), it.next()) {
        (Some(Protocol::Memory(port)), None | Some(Protocol::P2p(_))) if it.next().is_none() => Some(port),
        _ => None,
    }
}

/// The address `/memory/<port>`.
pub fn memory_addr(port: u64) -> Multiaddr {
    Multiaddr::empty().with(Protocol::Memory(port))
}

impl Netem {
    /// A network whose links behave as `links` says.
    /// Whether connections are secured with noise (see [`NetemConfig::noise`]).
    pub fn noise(&self) -> bool {
        self.config.noise
    }

    /// The emulated network over `links`.
    pub fn new(links: Box<LinkModel>, config: NetemConfig) -> Arc<Self> {
        Arc::new(Self {
            links,
            config,
            state: Mutex::new(NetState { next_ephemeral: 1 << 40, ..NetState::default() }),
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            bytes: AtomicU64::new(0),
            chunks: AtomicU64::new(0),
            losses: AtomicU64::new(0),
            dials: AtomicU64::new(0),
            failed_dials: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            polls: AtomicU64::new(0),
        })
    }

    /// The link parameters from `from` to `to`.
    pub fn link(&self, from: u64, to: u64) -> LinkParams {
        (self.links)(from, to)
    }

    /// Splits the network: each port in `groups` is in that group, every
    /// other port in group 0. Connections across groups are reset.
    pub fn partition(&self, groups: HashMap<u64, u32>) {
        let group = |p: u64| groups.get(&p).copied().unwrap_or(0);
        let conns: Vec<Arc<Conn>> = {
            let mut st = lock(&self.state);
            st.conns.retain(|c| c.strong_count() > 0);
            let cut =
                st.conns.iter().filter_map(Weak::upgrade).filter(|c| group(c.ends[0]) != group(c.ends[1])).collect();
            st.groups = Some(groups);
            cut
        };
        for c in conns {
            self.resets.fetch_add(1, Ordering::Relaxed);
            c.cut();
        }
    }

    /// Ends the partition.
    pub fn heal(&self) {
        lock(&self.state).groups = None;
    }

    /// Makes `port` vanish: its connections turn into black holes and dials
    /// to it go unanswered, until [`Netem::revive`].
    pub fn crash(&self, port: u64) {
        let conns: Vec<Arc<Conn>> = {
            let mut st = lock(&self.state);
            st.crashed.insert(port);
            st.listeners.remove(&port);
            st.conns.retain(|c| c.strong_count() > 0);
            st.conns.iter().filter_map(Weak::upgrade).filter(|c| c.ends.contains(&port)).collect()
        };
        for c in conns {
            c.blackholed.store(true, Ordering::Relaxed);
            c.wake_all();
        }
    }

    /// Lets a crashed port come back (a node restarting on it).
    pub fn revive(&self, port: u64) {
        lock(&self.state).crashed.remove(&port);
    }

    /// Puts `port` behind a NAT (or takes it out).
    pub fn set_nat(&self, port: u64, behind: bool) {
        let mut st = lock(&self.state);
        if behind {
            st.nat.insert(port);
        } else {
            st.nat.remove(&port);
        }
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        let mut st = lock(&self.state);
        st.conns.retain(|c| c.strong_count() > 0);
        st.conns.len()
    }

    /// The counters so far.
    pub fn stats(&self) -> NetemStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NetemStats {
            bytes: g(&self.bytes),
            chunks: g(&self.chunks),
            losses: g(&self.losses),
            dials: g(&self.dials),
            failed_dials: g(&self.failed_dials),
            connections: g(&self.connections),
            resets: g(&self.resets),
            polls: g(&self.polls),
        }
    }

    fn unreachable(st: &NetState, from: u64, to: u64) -> bool {
        let group = |p: u64| st.groups.as_ref().map_or(0, |g| g.get(&p).copied().unwrap_or(0));
        st.crashed.contains(&to) || st.crashed.contains(&from) || st.nat.contains(&to) || group(from) != group(to)
    }

    async fn connect(self: Arc<Self>, from: u64, to: u64) -> Result<NetemStream, io::Error> {
        self.dials.fetch_add(1, Ordering::Relaxed);
        let params = [self.link(from, to), self.link(to, from)];
        let rtt = params[0].latency + params[1].latency;
        let target = {
            let st = lock(&self.state);
            if Self::unreachable(&st, from, to) {
                None
            } else {
                Some(st.listeners.get(&to).cloned())
            }
        };
        let fail = |kind: io::ErrorKind| {
            self.failed_dials.fetch_add(1, Ordering::Relaxed);
            Err(io::Error::new(kind, "emulated network"))
        };
        let tx = match target {
            None => {
                tokio::time::sleep(self.config.unreachable_dial).await;
                return fail(io::ErrorKind::TimedOut);
            }
            Some(None) => {
                tokio::time::sleep(rtt).await;
                return fail(io::ErrorKind::ConnectionRefused);
            }
            Some(Some(tx)) => tx,
        };
        // The handshake of the stream below the upgrades: one round trip.
        tokio::time::sleep(rtt).await;
        let now = Instant::now();
        let pipe = || {
            Mutex::new(Pipe {
                chunks: VecDeque::new(),
                head_read: 0,
                queued: 0,
                wire_free: now,
                last_due: now,
                closed_at: None,
                reader_gone: false,
                read_waker: None,
                write_waker: None,
            })
        };
        let conn = Arc::new(Conn {
            ends: [from, to],
            params,
            cut: AtomicBool::new(false),
            blackholed: AtomicBool::new(false),
            pipes: [pipe(), pipe()],
        });
        {
            let mut st = lock(&self.state);
            if Self::unreachable(&st, from, to) {
                drop(st);
                return fail(io::ErrorKind::TimedOut);
            }
            if st.conns.len() > 1024 && st.conns.len().is_power_of_two() {
                st.conns.retain(|c| c.strong_count() > 0);
            }
            st.conns.push(Arc::downgrade(&conn));
        }
        let theirs = NetemStream { conn: conn.clone(), side: 1, netem: self.clone(), sleep: None };
        if tx.try_send(Incoming { stream: theirs, from }).is_err() {
            return fail(io::ErrorKind::ConnectionRefused);
        }
        self.connections.fetch_add(1, Ordering::Relaxed);
        Ok(NetemStream { conn, side: 0, netem: self, sleep: None })
    }

    /// When a chunk of `len` bytes written now on `params` is due, given
    /// the pipe's state; counts losses.
    fn due(&self, pipe: &mut Pipe, params: &LinkParams, rtt: Duration, len: usize) -> Instant {
        let now = Instant::now();
        let start = pipe.wire_free.max(now);
        let serialise = params.bandwidth.filter(|b| *b > 0).map_or(Duration::ZERO, |b| {
            Duration::from_nanos((len as u128 * 1_000_000_000 / u128::from(b)).min(u128::from(u64::MAX)) as u64)
        });
        pipe.wire_free = start + serialise;
        let mut extra = Duration::ZERO;
        if params.loss > 0.0 {
            let mut rto = self.config.min_rto.max(rtt * 2);
            let mut rng = lock(&self.rng);
            let mut n = 0;
            while n < MAX_RETRANSMISSIONS && rng.gen_bool(params.loss.clamp(0.0, 1.0)) {
                extra += rto;
                rto *= 2;
                n += 1;
            }
            if n > 0 {
                self.losses.fetch_add(u64::from(n), Ordering::Relaxed);
            }
        }
        let due = (pipe.wire_free + params.latency + extra).max(pipe.last_due);
        pipe.last_due = due;
        due
    }
}

impl fmt::Debug for Netem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netem").field("config", &self.config).field("stats", &self.stats()).finish()
    }
}

impl Conn {
    fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        self.wake_all();
    }

    fn wake_all(&self) {
        for p in &self.pipes {
            let mut p = lock(p);
            if let Some(w) = p.read_waker.take() {
                w.wake();
            }
            if let Some(w) = p.write_waker.take() {
                w.wake();
            }
        }
    }
}

impl fmt::Debug for NetemStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetemStream").field("ends", &self.conn.ends).field("side", &self.side).finish()
    }
}

impl NetemStream {
    fn reset() -> io::Error {
        io::Error::new(io::ErrorKind::ConnectionReset, "emulated partition")
    }
}

impl AsyncRead for NetemStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.netem.polls.fetch_add(1, Ordering::Relaxed);
        loop {
            if this.conn.cut.load(Ordering::Relaxed) {
                return Poll::Ready(Err(Self::reset()));
            }
            let mut pipe = lock(&this.conn.pipes[1 - this.side]);
            if this.conn.blackholed.load(Ordering::Relaxed) {
                pipe.read_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let now = Instant::now();
            let head_due = pipe.chunks.front().map(|(due, _)| *due);
            let wake_at = match head_due {
                Some(due) if due <= now => {
                    let p = &mut *pipe;
                    let Some((_, chunk)) = p.chunks.front() else { continue };
                    let rest = chunk.get(p.head_read..).unwrap_or_default();
                    let n = rest.len().min(buf.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    p.head_read += n;
                    if p.head_read >= chunk.len() {
                        let len = chunk.len();
                        p.chunks.pop_front();
                        p.head_read = 0;
                        p.queued = p.queued.saturating_sub(len);
                        if let Some(w) = p.write_waker.take() {
                            w.wake();
                        }
                    }
                    this.sleep = None;
                    return Poll::Ready(Ok(n));
                }
                Some(due) => due,
                None => match pipe.closed_at {
                    Some(at) if at <= now => return Poll::Ready(Ok(0)),
                    Some(at) => at,
                    None => {
                        pipe.read_waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                },
            };
            pipe.read_waker = Some(cx.waker().clone());
            drop(pipe);
            match this.sleep.as_mut() {
                Some(s) if s.deadline() == wake_at => {}
                _ => this.sleep = Some(Box::pin(tokio::time::sleep_until(wake_at))),
            }
            if let Some(s) = this.sleep.as_mut() {
                if s.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            this.sleep = None;
        }
    }
}

impl AsyncWrite for NetemStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &*self;
        if this.conn.cut.load(Ordering::Relaxed) {
            return Poll::Ready(Err(Self::reset()));
        }
        if this.conn.blackholed.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(buf.len()));
        }
        let params = this.conn.params[this.side];
        let rtt = params.latency + this.conn.params[1 - this.side].latency;
        let mut pipe = lock(&this.conn.pipes[this.side]);
        if pipe.reader_gone {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "emulated peer closed")));
        }
        if pipe.closed_at.is_some() {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed")));
        }
        if pipe.queued >= PIPE_BYTES {
            pipe.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(PIPE_BYTES - pipe.queued).min(64 * 1024);
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        let due = this.netem.due(&mut pipe, &params, rtt, n);
        pipe.chunks.push_back((due, buf[..n].to_vec()));
        pipe.queued += n;
        if let Some(w) = pipe.read_waker.take() {
            w.wake();
        }
        this.netem.bytes.fetch_add(n as u64, Ordering::Relaxed);
        this.netem.chunks.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.conn.cut.load(Ordering::Relaxed) {
            return Poll::Ready(Err(Self::reset()));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.close_write();
        Poll::Ready(Ok(()))
    }
}

impl NetemStream {
    fn close_write(&self) {
        let latency = self.conn.params[self.side].latency;
        let mut pipe = lock(&self.conn.pipes[self.side]);
        if pipe.closed_at.is_none() {
            let at = (Instant::now() + latency).max(pipe.last_due);
            pipe.closed_at = Some(at);
            if let Some(w) = pipe.read_waker.take() {
                w.wake();
            }
        }
    }
}

impl Drop for NetemStream {
    fn drop(&mut self) {
        self.close_write();
        let mut pipe = lock(&self.conn.pipes[1 - self.side]);
        pipe.reader_gone = true;
        pipe.chunks.clear();
        pipe.queued = 0;
        if let Some(w) = pipe.write_waker.take() {
            w.wake();
        }
    }
}

impl NetemTransport {
    /// A transport on `netem`.
    pub fn new(netem: Arc<Netem>) -> Self {
        Self { netem, listeners: Vec::new(), events: VecDeque::new() }
    }

    /// The port dials come from: the first listening port (as with TCP
    /// port reuse), or a fresh one.
    fn local_port(&self) -> u64 {
        match self.listeners.first() {
            Some(l) => l.port,
            None => {
                let mut st = lock(&self.netem.state);
                st.next_ephemeral += 1;
                st.next_ephemeral
            }
        }
    }

    fn unregister(&self, l: &Listener) {
        let mut st = lock(&self.netem.state);
        if st.listeners.get(&l.port).is_some_and(|tx| tx.same_channel(&l.tx)) {
            st.listeners.remove(&l.port);
        }
    }
}

impl Transport for NetemTransport {
    type Output = NetemStream;
    type Error = io::Error;
    type ListenerUpgrade = Ready<Result<NetemStream, io::Error>>;
    type Dial = BoxFuture<'static, Result<NetemStream, io::Error>>;

    fn listen_on(&mut self, id: ListenerId, addr: Multiaddr) -> Result<(), TransportError<Self::Error>> {
        let Some(mut port) = memory_port(&addr) else { return Err(TransportError::MultiaddrNotSupported(addr)) };
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        {
            let mut st = lock(&self.netem.state);
            if port == 0 {
                st.next_ephemeral += 1;
                port = st.next_ephemeral;
            }
            if st.listeners.contains_key(&port) {
                return Err(TransportError::Other(io::Error::new(io::ErrorKind::AddrInUse, "port taken")));
            }
            st.listeners.insert(port, tx.clone());
        }
        self.listeners.push(Listener { id, port, rx, tx });
        self.events.push_back(TransportEvent::NewAddress { listener_id: id, listen_addr: memory_addr(port) });
        Ok(())
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        let Some(i) = self.listeners.iter().position(|l| l.id == id) else { return false };
        let l = self.listeners.remove(i);
        self.unregister(&l);
        self.events.push_back(TransportEvent::ListenerClosed { listener_id: id, reason: Ok(()) });
        true
    }

    fn dial(&mut self, addr: Multiaddr, _opts: DialOpts) -> Result<Self::Dial, TransportError<Self::Error>> {
        let Some(to) = memory_port(&addr) else { return Err(TransportError::MultiaddrNotSupported(addr)) };
        let from = self.local_port();
        Ok(Box::pin(self.netem.clone().connect(from, to)))
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        if let Some(e) = self.events.pop_front() {
            return Poll::Ready(e);
        }
        for l in &mut self.listeners {
            if let Poll::Ready(Some(inc)) = l.rx.poll_recv(cx) {
                return Poll::Ready(TransportEvent::Incoming {
                    listener_id: l.id,
                    upgrade: future::ready(Ok(inc.stream)),
                    local_addr: memory_addr(l.port),
                    send_back_addr: memory_addr(inc.from),
                });
            }
        }
        Poll::Pending
    }
}

impl Drop for NetemTransport {
    fn drop(&mut self) {
        for l in &self.listeners {
            self.unregister(l);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::{AsyncReadExt, AsyncWriteExt};

    pub(super) fn netem(ms: u64, loss: f64) -> Arc<Netem> {
        let params = LinkParams { latency: Duration::from_millis(ms), loss, bandwidth: None };
        Netem::new(
            Box::new(move |_, _| params),
            NetemConfig { unreachable_dial: Duration::from_millis(300), ..NetemConfig::default() },
        )
    }

    async fn accept(t: &mut NetemTransport) -> NetemStream {
        loop {
            match futures::future::poll_fn(|cx| Pin::new(&mut *t).poll(cx)).await {
                TransportEvent::Incoming { upgrade, .. } => return upgrade.await.unwrap(),
                _ => continue,
            }
        }
    }

    /// Two transports on `net`, listening on ports 1 and 2.
    fn listening_pair(net: &Arc<Netem>) -> (NetemTransport, NetemTransport) {
        let mut a = NetemTransport::new(net.clone());
        let mut b = NetemTransport::new(net.clone());
        a.listen_on(ListenerId::next(), memory_addr(1)).unwrap();
        b.listen_on(ListenerId::next(), memory_addr(2)).unwrap();
        (a, b)
    }

    fn opts() -> DialOpts {
        DialOpts { role: libp2p::core::Endpoint::Dialer, port_use: libp2p::core::transport::PortUse::Reuse }
    }

    #[tokio::test]
    async fn latency_order_and_partitions() {
        let net = netem(40, 0.0);
        let (mut a, mut b) = listening_pair(&net);
        let t0 = Instant::now();
        let dial = a.dial(memory_addr(2), opts()).unwrap();
        let (mut ab, mut ba) = futures::join!(async { dial.await.unwrap() }, accept(&mut b));
        assert!(t0.elapsed() >= Duration::from_millis(80), "connect costs one RTT");
        let t1 = Instant::now();
        ab.write_all(b"hello").await.unwrap();
        ab.write_all(b" world").await.unwrap();
        let mut got = [0u8; 11];
        ba.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello world");
        let took = t1.elapsed();
        assert!(took >= Duration::from_millis(40) && took < Duration::from_millis(200), "{took:?}");

        // A partition resets the connection and refuses dials.
        net.partition(HashMap::from([(2, 1)]));
        assert!(ba.read(&mut got).await.is_err());
        assert!(a.dial(memory_addr(2), opts()).unwrap().await.is_err());
        net.heal();
        let dial = a.dial(memory_addr(2), opts()).unwrap();
        let (_ab, _ba) = futures::join!(async { dial.await.unwrap() }, accept(&mut b));

        // A stopped node's port refuses; a crashed one swallows.
        drop(b);
        assert_eq!(a.dial(memory_addr(2), opts()).unwrap().await.unwrap_err().kind(), io::ErrorKind::ConnectionRefused);
        net.crash(1);
        assert_eq!(net.stats().connections, 2);
    }

    #[tokio::test]
    async fn loss_delays_but_delivers() {
        let net = netem(5, 0.5);
        let (mut a, mut b) = listening_pair(&net);
        let dial = a.dial(memory_addr(2), opts()).unwrap();
        let (mut ab, mut ba) = futures::join!(async { dial.await.unwrap() }, accept(&mut b));
        for i in 0..20u8 {
            ab.write_all(&[i]).await.unwrap();
        }
        let mut got = [0u8; 20];
        ba.read_exact(&mut got).await.unwrap();
        assert_eq!(got.to_vec(), (0..20).collect::<Vec<u8>>());
        assert!(net.stats().losses > 0);
    }
}

#[cfg(test)]
mod swarm_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Mesh, MeshConfig, Network};
    use ed25519_dalek::SigningKey;
    use signalling::{Address, UserName, ZoneName};

    async fn node(net: &Arc<Netem>, i: u8, boot: Option<(u64, crate::mesh::PeerId)>) -> (Mesh, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let tree = sled::open(dir.path()).unwrap().open_tree("mesh").unwrap();
        let c = MeshConfig {
            listen: vec![memory_addr(u64::from(i))],
            bootstrap: boot.into_iter().map(|(p, id)| format!("/memory/{p}/p2p/{id}").parse().unwrap()).collect(),
            mdns: false,
            cache_ttl: Duration::ZERO,
            network: Network::Simulated(net.clone()),
            ..MeshConfig::default()
        };
        let zone = ZoneName::parse(&format!("z{i}")).unwrap();
        let mesh = Mesh::start(SigningKey::from_bytes(&[i; 32]), tree, zone, c).await.unwrap();
        (mesh, dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn meshes_resolve_each_other_over_netem() {
        let net = super::tests::netem(5, 0.0);
        let (a, _da) = node(&net, 1, None).await;
        let (b, _db) = node(&net, 2, Some((1, a.peer_id()))).await;
        let (c, _dc) = node(&net, 3, Some((1, a.peer_id()))).await;
        b.publish_user(UserName::parse("bob").unwrap()).await;
        let bob = Address::parse("bob@z2").unwrap();
        let mut last = None;
        for _ in 0..100 {
            let r = c.resolve_with_stats(&bob).await;
            if let Ok((peer, _)) = &r.0 {
                assert_eq!(*peer, b.peer_id());
                assert!(r.1.as_ref().unwrap().requests_to_first.is_some());
                return;
            }
            last = Some(r);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("never resolved: {last:?}; c: {:?}", c.status().await);
    }
}
