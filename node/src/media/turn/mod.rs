//! The node's own STUN/TURN server (RFC 8489, RFC 8656; UDP), on by
//! default, so browsers in the zone can always reach each other: directly,
//! through a STUN-discovered address, or relayed by the node.
//!
//! # The model
//!
//! - **Credentials** ([`auth`]): a logged-in user asks `GET /api/v1/ice` and
//!   gets a username `<expiry>:<user>` and the password
//!   `base64(HMAC-SHA1(secret, username))`, valid for `turn.credential_ttl`.
//!   The secret (generated into the data directory unless configured)
//!   never leaves the node; an expired username is refused with 401.
//! - **Peers** ([`policy`]): the relay refuses loopback, link-local and
//!   non-unicast peers, private ranges unless `turn.allowed_peer_ranges`
//!   lists them, and every port of this machine except its own relay ports
//!   (so never its HTTPS, TURN or mesh ports). A refused CreatePermission
//!   or ChannelBind gets 403; nothing is ever sent to a refused peer.
//! - **Quotas**: `turn.max_allocations_per_user` live allocations per user
//!   (486 past that), `turn.max_allocations` in all (508), and a token
//!   bucket of `turn.max_kbps_per_allocation` per allocation for both
//!   directions together (excess datagrams are dropped).
//!
//! # The run loop
//!
//! [`Turn::bind`] binds one UDP socket per core on the TURN port
//! (`SO_REUSEPORT`, so the kernel spreads clients over them and keeps each
//! client on one) and starts one thread per socket, each running a
//! single-threaded runtime. There a task owns the socket and its
//! allocations: it answers Binding, Allocate, Refresh, CreatePermission and
//! ChannelBind, and forwards Send indications and ChannelData to peers.
//! Each allocation spawns, on the same thread, one task reading its relay
//! socket and sending what permissions allow back to the client, framed in
//! place. Expired allocations, permissions and channels are purged every
//! second. [`Turn::shutdown`] stops the threads and frees every allocation.

pub mod auth;
mod peers;
pub mod policy;
mod relay;
mod udp;
pub mod wire;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore as _;
use tokio::sync::watch;
use tracing::{info, warn};

pub use auth::Credentials;
use policy::PeerPolicy;
use relay::{HostPorts, Listener, Shared};

use crate::config::Config;

/// Everything the TURN server needs, resolved from the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// UDP address to listen on for STUN and TURN.
    pub listen: SocketAddr,
    /// Relayed address to advertise; `None`: the listen address, or the
    /// local address a client's packets arrive on.
    pub relay_ip: Option<IpAddr>,
    /// Relay ports, inclusive.
    pub relay_ports: (u16, u16),
    /// The realm of the long-term credentials.
    pub realm: String,
    /// The HMAC secret credentials are derived from.
    pub secret: String,
    /// Which peers may be relayed to.
    pub policy: PeerPolicy,
    /// Live allocations per user.
    pub max_allocations_per_user: u32,
    /// Live allocations in all.
    pub max_allocations: usize,
    /// Bandwidth per allocation, both directions together, in bytes/s.
    pub bytes_per_second: u64,
    /// Lifetime of the credentials handed out.
    pub credential_ttl: Duration,
}

/// Why the TURN server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TurnError {
    /// A socket or the secret file.
    #[error("turn: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A configured value is unusable.
    #[error("turn: {0}")]
    Config(String),
}

/// Loads `data_dir/turn.secret`, generating it (256 random bits, hex,
/// mode 0600) if absent.
pub fn load_or_create_secret(data_dir: &Path) -> Result<String, TurnError> {
    let path = data_dir.join("turn.secret");
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| TurnError::Io { what, source }
    };
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 16 => Ok(s.trim().to_owned()),
        Ok(_) => Err(TurnError::Config(format!("{} is too short (at least 16 characters)", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let secret = hex::encode(bytes);
            crate::identity::write_private(&path, secret.as_bytes()).map_err(io("writing"))?;
            Ok(secret)
        }
        Err(e) => Err(io("reading")(e)),
    }
}

impl Settings {
    /// The settings of `config.turn`, with the secret from the config or
    /// the data directory.
    pub fn from_config(config: &Config) -> Result<Self, TurnError> {
        let t = &config.turn;
        let secret = match &t.secret {
            Some(s) => s.clone(),
            None => load_or_create_secret(&config.data_dir)?,
        };
        let allowed = t
            .allowed_peer_ranges
            .iter()
            .map(|r| r.parse().map_err(|e| TurnError::Config(format!("allowed_peer_ranges: {r}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            listen: t.listen,
            relay_ip: t.relay_ip,
            relay_ports: (t.relay_port_min, t.relay_port_max),
            realm: t.realm.clone().unwrap_or_else(|| config.zone.clone()),
            secret,
            policy: PeerPolicy::new(allowed, t.allow_loopback_peers),
            max_allocations_per_user: t.max_allocations_per_user,
            max_allocations: t.max_allocations,
            bytes_per_second: u64::from(t.max_kbps_per_allocation) * 1000 / 8,
            credential_ttl: t.credential_ttl,
        })
    }
}

/// What [`Turn::stats`] reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TurnStats {
    /// Allocations live now.
    pub allocations: usize,
    /// Allocations granted since start.
    pub allocated: u64,
    /// Payload bytes relayed from clients to peers since start.
    pub bytes_to_peers: u64,
    /// Payload bytes relayed from peers to clients since start.
    pub bytes_to_clients: u64,
}

/// The running STUN/TURN server.
pub struct Turn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    host: Arc<HostPorts>,
    stop: watch::Sender<bool>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// Serving threads: one per core, at most 16.
fn thread_count() -> usize {
    if cfg!(unix) {
        std::thread::available_parallelism().map_or(1, usize::from).min(16)
    } else {
        1
    }
}

/// Binds `n` sockets on `listen` (one port: the first one's, if `listen`
/// asks for port 0), sharing it with `SO_REUSEPORT`.
fn bind_sockets(listen: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let one = |addr: SocketAddr| -> std::io::Result<std::net::UdpSocket> {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        #[cfg(unix)]
        if n > 1 {
            s.set_reuse_port(true)?;
        }
        s.bind(&addr.into())?;
        s.set_nonblocking(true)?;
        let s: std::net::UdpSocket = s.into();
        relay::tune(&s, Listener::LISTEN_BUFFER);
        Ok(s)
    };
    let first = one(listen)?;
    let addr = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(one(addr)?);
    }
    Ok(all)
}

impl Turn {
    /// Binds the UDP sockets and starts serving.
    pub async fn bind(settings: Settings) -> Result<Self, TurnError> {
        let listen = settings.listen;
        let sockets = bind_sockets(listen, thread_count())
            .map_err(|source| TurnError::Io { what: format!("listening on udp {listen}"), source })?;
        let addr = sockets
            .first()
            .map(std::net::UdpSocket::local_addr)
            .transpose()
            .map_err(|source| TurnError::Io { what: "reading the listen address".into(), source })?
            .unwrap_or(listen);
        let host = Arc::new(HostPorts::default());
        host.service.write().unwrap_or_else(PoisonError::into_inner).insert(addr.port());
        let relay = settings.relay_ip.map_or_else(|| "auto".to_owned(), |ip| ip.to_string());
        let realm = settings.realm.clone();
        let shared = Arc::new(Shared::new(settings, host.clone()));
        let (stop, stopped) = watch::channel(false);
        let mut threads = Vec::new();
        let n = sockets.len();
        for (i, socket) in sockets.into_iter().enumerate() {
            let (shared, stopped) = (shared.clone(), stopped.clone());
            let thread = std::thread::Builder::new().name(format!("xarxa-turn-{i}")).spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return warn!(error = %e, "turn: no runtime for a serving thread"),
                };
                rt.block_on(async move {
                    match relay::Udp::new(socket) {
                        Ok(socket) => Listener::new(Arc::new(socket), shared).run(stopped).await,
                        Err(e) => warn!(error = %e, "turn: socket not usable"),
                    }
                });
            });
            threads.push(thread.map_err(|source| TurnError::Io { what: "starting a TURN thread".into(), source })?);
        }
        info!(%addr, %realm, %relay, threads = n, "turn: listening");
        Ok(Self { addr, shared, host, stop, threads: Mutex::new(threads) })
    }

    /// The UDP address bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Credentials for `user`, valid from now for the configured lifetime.
    pub fn credentials(&self, user: &str) -> Credentials {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        auth::mint(&self.shared.settings().secret, user, now, self.shared.settings().credential_ttl)
    }

    /// How long credentials last.
    pub fn credential_ttl(&self) -> Duration {
        self.shared.settings().credential_ttl
    }

    /// Adds ports of this machine the relay must never reach (HTTPS, mesh).
    pub fn add_service_ports(&self, ports: impl IntoIterator<Item = u16>) {
        let mut service = self.host.service.write().unwrap_or_else(PoisonError::into_inner);
        service.extend(ports.into_iter().filter(|p| *p != 0));
    }

    /// The service ports currently refused.
    pub fn service_ports(&self) -> HashSet<u16> {
        self.host.service.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Allocations and relayed bytes, for `/metrics`.
    pub fn stats(&self) -> TurnStats {
        let c = &self.shared.counters;
        TurnStats {
            allocations: self.shared.allocations(),
            allocated: c.allocated.load(Ordering::Relaxed),
            bytes_to_peers: c.to_peers.load(Ordering::Relaxed),
            bytes_to_clients: c.to_clients.load(Ordering::Relaxed),
        }
    }

    /// Stops serving and frees every allocation; waits for the threads.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(PoisonError::into_inner));
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
