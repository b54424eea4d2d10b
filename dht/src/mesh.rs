//! The running mesh: a swarm task that owns the libp2p [`Swarm`], and a
//! cheap [`Mesh`] handle that the node uses to publish its records, resolve
//! users of other zones and deliver signalling to their home nodes.
//!
//! The swarm task only moves bytes: it runs queries, filters inbound puts
//! through [`validate`], and forwards signalling requests. Resolution policy
//! (which claim wins, which user record is good, caching) lives in the
//! handle, in ordinary async code.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use futures::StreamExt;
pub use libp2p::core::Multiaddr;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, GetRecordOk, QueryResult, Quorum, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
pub use libp2p::PeerId;
use libp2p::{identify, identity, mdns, noise, ping, tcp, yamux, Swarm};
use serde::{Deserialize, Serialize};
use signalling::{Address, EndReason, NodeToNode, UserName, ZoneName};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::behaviour::{Behaviour, BehaviourConfig, BehaviourEvent, Envelope, Receipt};
use crate::netem::{Netem, NetemTransport};
use crate::record::{
    node_hex, user_key, validate, zone_key, MeshRecord, RecordError, RejectionCounts, Rejections, SignedZoneClaim,
    UserRecord, ZoneClaim,
};
use crate::store::{expiry_instant, PersistentStore};

/// Inbound signalling requests queued for the node before the mesh
/// answers "busy".
const INBOUND_QUEUE: usize = 1024;
/// Commands queued for the swarm task.
const COMMAND_QUEUE: usize = 1024;

/// How a node takes part in the mesh.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// This node's zone.
    pub zone: ZoneName,
    /// Where to listen (TCP and QUIC multiaddresses).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through, each ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Relays to listen through (for a node others cannot dial), each
    /// ending in `/p2p/<peer id>`.
    pub relays: Vec<Multiaddr>,
    /// Extra addresses to advertise (e.g. a public or mesh address).
    pub external: Vec<Multiaddr>,
    /// Find zones on the local network with mDNS.
    pub mdns: bool,
    /// Serve as a circuit relay for nodes behind NAT.
    pub relay_server: bool,
    /// Lifetime of the zone claim.
    pub claim_ttl: Duration,
    /// Lifetime of user records.
    pub user_ttl: Duration,
    /// How often records are renewed.
    pub republish: Duration,
    /// How long a resolved user stays cached.
    pub cache_ttl: Duration,
    /// How long one signalling request may take.
    pub request_timeout: Duration,
    /// Extra tries of a failed delivery.
    pub retries: u32,
    /// Established connections in total.
    pub max_connections: u32,
    /// How long a connection with no protocol using it stays open.
    pub idle_timeout: Duration,
    /// How often Kademlia refreshes its routing table (libp2p's default:
    /// 5 minutes); it also refreshes whenever the table is nearly empty.
    pub bootstrap_interval: Duration,
    /// Wall-clock time per unit of protocol time: 1 on a real node. Every
    /// timer of the mesh is stretched by this factor: the durations above,
    /// Kademlia's query timeout, ping, identify and AutoNAT intervals, the
    /// handshake timeout and the retry back-offs. A simulator running many
    /// nodes on few cores slows the protocol, its links and its workload
    /// down by the same factor, so that every node gets the CPU time per
    /// protocol second it would have on a machine of its own. Between
    /// [`MIN_TIME_SCALE`] and [`MAX_TIME_SCALE`].
    pub time_scale: f64,
    /// The network under the swarm: real sockets, or a simulator's.
    pub network: Network,
}

/// `d` stretched by `scale` (kept within [`MIN_TIME_SCALE`] and
/// [`MAX_TIME_SCALE`]); exactly `d` at 1, a real node's scale.
pub(crate) fn stretch(d: Duration, scale: f64) -> Duration {
    if scale == 1.0 {
        return d;
    }
    d.mul_f64(scale.clamp(MIN_TIME_SCALE, MAX_TIME_SCALE))
}

/// The smallest [`MeshConfig::time_scale`] accepted.
pub const MIN_TIME_SCALE: f64 = 0.01;
/// The largest [`MeshConfig::time_scale`] accepted.
pub const MAX_TIME_SCALE: f64 = 100.0;

/// The network a mesh runs on.
#[derive(Debug, Clone, Default)]
pub enum Network {
    /// TCP and QUIC sockets (what the node uses).
    #[default]
    Native,
    /// The simulator's emulated network: `/memory/<n>` addresses over a
    /// [`Netem`], with the same noise, yamux and behaviours above it.
    Simulated(Arc<Netem>),
}

/// What one DHT lookup cost: Kademlia's statistics of the query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupStats {
    /// Requests the query sent in all (it runs until the closest peers to
    /// the key have answered).
    pub requests: u32,
    /// Requests answered.
    pub successes: u32,
    /// Requests failed or timed out.
    pub failures: u32,
    /// Requests sent before the first record arrived: `Some(0)` when this
    /// node held the record, `None` when none was found.
    pub requests_to_first: Option<u32>,
    /// Milliseconds until the first record arrived.
    pub first_ms: Option<u64>,
    /// Milliseconds the whole query took.
    pub total_ms: u64,
    /// Records returned.
    pub records: u32,
    /// Whether the query was stopped as soon as it had enough records
    /// (rather than asking every one of the closest peers).
    pub early: bool,
    /// Whether the query ended before it had answers from the peers
    /// closest to the key: it ran out of time, or fewer than the
    /// replication factor (20) of the peers it asked answered while some
    /// were still silent (past Kademlia's answer timeout; peers that
    /// refused or failed outright do not count, unless no peer answered
    /// at all or there was none to ask). Finding nothing then
    /// says the mesh was too slow or partly cut off, not that the record
    /// is absent.
    pub incomplete: bool,
    /// The zone-claim query that ran beside a user lookup: requests sent
    /// (0 when the claim came from the cache).
    #[serde(default)]
    pub claim_requests: u32,
    /// Of those, requests answered.
    #[serde(default)]
    pub claim_successes: u32,
    /// Claims the query returned, valid or not.
    #[serde(default)]
    pub claim_records: u32,
}

/// When a lookup has found enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enough {
    /// Ask every one of the closest peers (tools, and the fallback when
    /// an early answer did not hold up).
    All,
    /// Stop at the first record that is well-formed, signed by its node
    /// and unexpired (user records: checked against the zone's claim
    /// afterwards, with a full lookup if that fails).
    FirstValid,
    /// Stop once this many valid records from other nodes name the same
    /// node (zone claims: a quorum of holders rather than the first voice;
    /// this node's own copy does not count).
    Agree(usize),
}

/// Holders of a zone claim that must agree before a lookup stops early.
const CLAIM_QUORUM: usize = 3;

impl MeshConfig {
    /// Defaults for `zone`: TCP and QUIC on port 7447 of every interface.
    pub fn new(zone: ZoneName) -> Self {
        let any = Ipv4Addr::UNSPECIFIED;
        Self {
            zone,
            listen: vec![
                Multiaddr::empty().with(Protocol::Ip4(any)).with(Protocol::Tcp(7447)),
                Multiaddr::empty().with(Protocol::Ip4(any)).with(Protocol::Udp(7447)).with(Protocol::QuicV1),
            ],
            bootstrap: Vec::new(),
            relays: Vec::new(),
            external: Vec::new(),
            mdns: true,
            relay_server: true,
            claim_ttl: Duration::from_secs(24 * 3600),
            user_ttl: Duration::from_secs(6 * 3600),
            republish: Duration::from_secs(3600),
            cache_ttl: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
            retries: 2,
            max_connections: 256,
            idle_timeout: Duration::from_secs(120),
            bootstrap_interval: Duration::from_secs(300),
            time_scale: 1.0,
            network: Network::Native,
        }
    }

    /// `d` of protocol time in wall-clock time (stretched by
    /// [`MeshConfig::time_scale`]).
    pub fn stretch(&self, d: Duration) -> Duration {
        stretch(d, self.time_scale)
    }

    /// This configuration with every duration in wall-clock time.
    fn stretched(mut self) -> Self {
        for d in [
            &mut self.claim_ttl,
            &mut self.user_ttl,
            &mut self.republish,
            &mut self.cache_ttl,
            &mut self.request_timeout,
            &mut self.idle_timeout,
            &mut self.bootstrap_interval,
        ] {
            *d = stretch(*d, self.time_scale);
        }
        self
    }
}

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The key could not become a libp2p identity.
    #[error("node key: {0}")]
    Key(String),
    /// A transport could not be set up.
    #[error("transport: {0}")]
    Transport(String),
    /// A setting is out of range.
    #[error("configuration: {0}")]
    Config(String),
    /// A listen address was refused.
    #[error("listen on {addr}: {why}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        why: String,
    },
}

/// Why a message could not be delivered to a user's home node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// No node holds the zone.
    #[error("unknown zone")]
    UnknownZone,
    /// The zone's node publishes no such user.
    #[error("unknown user")]
    UnknownUser,
    /// Nothing was found, but the lookup ended before the nodes closest
    /// to the key had answered (see [`LookupStats::incomplete`]): the mesh
    /// is slow or partly unreachable; the user or zone may well exist.
    #[error("lookup incomplete: the closest nodes did not answer")]
    Incomplete,
    /// The node could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The node refused the message.
    #[error("refused: {0}")]
    Refused(String),
    /// The mesh is shutting down.
    #[error("mesh stopped")]
    Stopped,
}

impl RouteError {
    /// What the caller is told.
    pub fn end_reason(&self) -> EndReason {
        match self {
            Self::UnknownZone => EndReason::UnknownZone,
            Self::UnknownUser => EndReason::UnknownUser,
            _ => EndReason::UnreachableZone,
        }
    }
}

/// A signalling message from another node, to be answered with a receipt.
#[derive(Debug)]
pub struct Inbound {
    /// The sending node (authenticated by the transport).
    pub peer: PeerId,
    /// The message.
    pub msg: NodeToNode,
    /// Where the receipt goes.
    pub reply: Responder,
}

/// Sends the delivery receipt of one [`Inbound`] message.
#[derive(Debug)]
pub struct Responder {
    channel: ResponseChannel<Receipt>,
    cmd: mpsc::Sender<Cmd>,
}

impl Responder {
    /// Answers the sender.
    pub async fn send(self, receipt: Receipt) {
        let _ = self.cmd.send(Cmd::Respond { channel: self.channel, receipt }).await;
    }
}

/// The state of this node's zone claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimState {
    /// Not published yet (no peers so far).
    Pending,
    /// Published and held by this node.
    Held,
    /// Another node holds the zone name.
    Taken {
        /// That node's peer id.
        by: String,
    },
}

/// What `xarxa mesh status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeshStatus {
    /// This node's peer id.
    pub peer_id: String,
    /// This node's zone.
    pub zone: String,
    /// The zone claim.
    pub claim: ClaimState,
    /// Addresses this node listens on.
    pub listen: Vec<String>,
    /// Peers connected now.
    pub peers: Vec<String>,
    /// Of those, peers reached only through a relay circuit.
    pub relayed_peers: Vec<String>,
    /// Entries in the Kademlia routing table.
    pub routing_table: usize,
    /// Records in the local store.
    pub stored_records: usize,
    /// Users whose records this node publishes.
    pub published_users: usize,
    /// Records refused, by cause.
    pub rejected: RejectionCounts,
    /// Signalling messages delivered to other nodes.
    pub delivered: u64,
    /// Signalling deliveries that failed after retries.
    pub failed_deliveries: u64,
    /// Lookups made, and how many found nothing.
    pub lookups: u64,
    /// Lookups that found nothing.
    pub failed_lookups: u64,
    /// Records delivered to newly met peers that are now among the
    /// closest to their keys (see `SwarmTask::hand_over`); the receivers
    /// validate them as any put.
    #[serde(default)]
    pub handed_over: u64,
    /// When this node last had its claim and every user record stored by
    /// the mesh (Unix ms); `None` before the first time.
    #[serde(default)]
    pub published_at_ms: Option<u64>,
}

#[derive(Debug)]
enum Cmd {
    Get { key: Vec<u8>, enough: Enough, reply: oneshot::Sender<(Vec<Vec<u8>>, LookupStats)> },
    Put { key: Vec<u8>, value: Vec<u8>, expires_at_ms: u64, reply: oneshot::Sender<Result<(), String>> },
    Send { peer: PeerId, addrs: Vec<Multiaddr>, msg: NodeToNode, reply: oneshot::Sender<Result<Receipt, String>> },
    Respond { channel: ResponseChannel<Receipt>, receipt: Receipt },
    Status { reply: oneshot::Sender<SwarmStatus> },
    Stop,
}

/// Zone claims being checked against the mesh at once; more are refused
/// (the sender's next renewal offers them again).
const MAX_VERIFYING: usize = 64;

/// Kademlia's replication factor: a record lives on this many nodes
/// closest to its key (libp2p's `K_VALUE`).
const REPLICATION: usize = 20;

/// User records put at once when publishing.
const PARALLEL_PUTS: usize = 8;

/// How often the peers met in the meantime are handed their records.
const HANDOFF_EVERY: Duration = Duration::from_secs(5);
/// Hand-over puts under way at once; the rest wait in the queue.
const HANDOFF_IN_FLIGHT: usize = 32;
/// Hand-overs waiting to be sent; past this the rest are left to the
/// records' renewals.
const HANDOFF_QUEUE: usize = 4096;
/// Peers met between two hand-over passes that are remembered.
const MAX_MET: usize = 1024;

#[derive(Debug)]
struct SwarmStatus {
    listen: Vec<Multiaddr>,
    peers: Vec<PeerId>,
    relayed: Vec<PeerId>,
    routing_table: usize,
    stored_records: usize,
}

/// A resolved home node: its peer id, addresses, and when it was resolved.
type Route = (PeerId, Vec<Multiaddr>, Instant);
/// A lookup under way.
struct PendingGet {
    key: Vec<u8>,
    /// The values found so far.
    values: Vec<Vec<u8>>,
    stats: LookupStats,
    enough: Enough,
    /// Valid records found so far, per node they name.
    votes: HashMap<String, usize>,
    done: GetDone,
}

/// What happens when a lookup ends.
enum GetDone {
    /// Its values and statistics go to whoever asked.
    Reply(oneshot::Sender<(Vec<Vec<u8>>, LookupStats)>),
    /// It checked a zone's first claim a peer offered (see
    /// `SwarmTask::verify_first_claim`).
    VerifyClaim { source: PeerId, record: Box<kad::Record> },
}

impl PendingGet {
    /// Takes one found value; whether the lookup now has enough.
    fn found(&mut self, value: Vec<u8>) -> bool {
        let node = match self.enough {
            Enough::All => None,
            Enough::FirstValid | Enough::Agree(_) => {
                validate(&self.key, &value, wall_ms(), None, None).ok().map(|r| r.node().to_owned())
            }
        };
        if self.values.len() < 32 {
            self.values.push(value);
        }
        let Some(node) = node else { return false };
        let votes = self.votes.entry(node).or_default();
        *votes += 1;
        match self.enough {
            Enough::All => false,
            Enough::FirstValid => true,
            Enough::Agree(n) => *votes >= n,
        }
    }
}

#[derive(Default)]
struct Shared {
    rejections: Rejections,
    delivered: AtomicU64,
    failed: AtomicU64,
    lookups: AtomicU64,
    failed_lookups: AtomicU64,
    handed_over: AtomicU64,
    /// Unix ms of the last complete publication; 0 before the first.
    published_at_ms: AtomicU64,
    /// Set by [`Mesh::stop`] and when the swarm task ends: a lookup that
    /// found nothing then says the mesh stopped, not that nothing exists.
    stopped: AtomicBool,
    /// Whether a connected mesh peer has been identified yet (publishing
    /// waits for it rather than failing with nobody to ask).
    routable: AtomicBool,
    /// Wakes the publisher when that happens.
    routable_changed: tokio::sync::Notify,
    claim: Mutex<Option<ClaimState>>,
    users: Mutex<BTreeSet<UserName>>,
    /// Resolved users: peer, addresses, when resolved.
    user_cache: Mutex<HashMap<Address, Route>>,
    /// Resolved zone claims and when.
    claim_cache: Mutex<HashMap<ZoneName, (SignedZoneClaim, Instant)>>,
}

/// A handle to the running mesh. Cloning is cheap.
#[derive(Clone)]
pub struct Mesh {
    cmd: mpsc::Sender<Cmd>,
    peer_id: PeerId,
    key: Arc<SigningKey>,
    config: Arc<MeshConfig>,
    shared: Arc<Shared>,
}

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The peer id of a node key given in hex, as records carry it.
pub fn peer_of(node_hex: &str) -> Option<PeerId> {
    if node_hex.len() != 64 {
        return None;
    }
    let bytes: Vec<u8> =
        (0..64).step_by(2).map(|i| u8::from_str_radix(node_hex.get(i..i + 2)?, 16).ok()).collect::<Option<_>>()?;
    let pk = identity::ed25519::PublicKey::try_from_bytes(&bytes).ok()?;
    Some(PeerId::from_public_key(&identity::PublicKey::from(pk)))
}

/// The libp2p identity of a node key.
pub fn keypair_of(key: &SigningKey) -> Result<identity::Keypair, MeshError> {
    identity::Keypair::ed25519_from_bytes(key.to_bytes()).map_err(|e| MeshError::Key(e.to_string()))
}

fn peer_in(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

impl Mesh {
    /// Starts the swarm on `key` (the node key), with records persisted in
    /// `tree`, and the task that publishes this zone's claim and users.
    /// Inbound signalling arrives on the returned receiver.
    pub async fn start(
        key: SigningKey,
        tree: sled::Tree,
        config: MeshConfig,
    ) -> Result<(Mesh, mpsc::Receiver<Inbound>), MeshError> {
        if !(MIN_TIME_SCALE..=MAX_TIME_SCALE).contains(&config.time_scale) {
            return Err(MeshError::Config(format!(
                "time_scale {} is not between {MIN_TIME_SCALE} and {MAX_TIME_SCALE}",
                config.time_scale
            )));
        }
        let config = config.stretched();
        let keypair = keypair_of(&key)?;
        let peer_id = PeerId::from(keypair.public());
        let store = PersistentStore::open(peer_id, tree);
        let handshake_timeout = config.stretch(Duration::from_secs(20));
        let bconfig = BehaviourConfig {
            relay_server: config.relay_server,
            mdns: config.mdns,
            max_connections: config.max_connections,
            request_timeout: config.request_timeout,
            bootstrap_interval: config.bootstrap_interval,
            time_scale: config.time_scale,
        };
        let transport = |e: &dyn std::fmt::Display| MeshError::Transport(e.to_string());
        let behaviour = move |key: &identity::Keypair, relay_client| {
            Behaviour::new(key, relay_client, store, &bconfig)
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        };
        let idle_timeout = config.idle_timeout;
        let idle = move |c: libp2p::swarm::Config| c.with_idle_connection_timeout(idle_timeout);
        let mut swarm = match &config.network {
            Network::Native => libp2p::SwarmBuilder::with_existing_identity(keypair)
                .with_tokio()
                .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
                .map_err(|e| transport(&e))?
                .with_quic()
                .with_relay_client(noise::Config::new, yamux::Config::default)
                .map_err(|e| transport(&e))?
                .with_behaviour(behaviour)
                .map_err(|e| transport(&e))?
                .with_swarm_config(idle)
                .build(),
            Network::Simulated(netem) => libp2p::SwarmBuilder::with_existing_identity(keypair)
                .with_tokio()
                .with_other_transport(|key| {
                    use libp2p::core::muxing::StreamMuxerBox;
                    use libp2p::Transport as _;
                    let base = NetemTransport::new(netem.clone()).upgrade(libp2p::core::upgrade::Version::V1Lazy);
                    let transport = if netem.noise() {
                        let noise = noise::Config::new(key)
                            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
                        base.authenticate(noise)
                            .multiplex(yamux::Config::default())
                            .timeout(handshake_timeout)
                            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
                            .boxed()
                    } else {
                        base.authenticate(libp2p::plaintext::Config::new(key))
                            .multiplex(yamux::Config::default())
                            .timeout(handshake_timeout)
                            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
                            .boxed()
                    };
                    Ok(transport)
                })
                .map_err(|e| transport(&e))?
                .with_relay_client(noise::Config::new, yamux::Config::default)
                .map_err(|e| transport(&e))?
                .with_behaviour(behaviour)
                .map_err(|e| transport(&e))?
                .with_swarm_config(idle)
                .build(),
        };
        for addr in &config.listen {
            swarm.listen_on(addr.clone()).map_err(|e| MeshError::Listen { addr: addr.clone(), why: e.to_string() })?;
        }
        for addr in &config.external {
            swarm.add_external_address(addr.clone());
        }
        for addr in &config.bootstrap {
            if let Some(peer) = peer_in(addr) {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            }
            if let Err(e) = swarm.dial(addr.clone()) {
                warn!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
        // Listening through a relay starts once connected to it (see
        // `SwarmTask::event`), so the reservation rides that connection.
        let mut relays = HashMap::new();
        for relay in &config.relays {
            match peer_in(relay) {
                Some(peer) => {
                    relays.insert(peer, relay.clone());
                    if let Err(e) = swarm.dial(relay.clone()) {
                        warn!(%relay, error = %e, "cannot dial relay");
                    }
                }
                None => warn!(%relay, "a relay address must end in /p2p/<peer id>"),
            }
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        let shared = Arc::new(Shared::default());
        let task = SwarmTask {
            swarm,
            cmd_tx: cmd_tx.clone(),
            inbound: in_tx,
            shared: shared.clone(),
            gets: HashMap::new(),
            puts: HashMap::new(),
            sends: HashMap::new(),
            bootstrapped: false,
            connections: HashMap::new(),
            relays,
            relay_listeners: HashMap::new(),
            verifying: BTreeSet::new(),
            joined: false,
            met: BTreeSet::new(),
            handoff_queue: VecDeque::new(),
            handoffs: HashSet::new(),
            republish: config.republish,
            handoff_every: config.stretch(HANDOFF_EVERY),
        };
        tokio::spawn(task.run(cmd_rx));
        let mesh = Mesh { cmd: cmd_tx, peer_id, key: Arc::new(key), config: Arc::new(config), shared };
        info!(peer = %peer_id, zone = %mesh.config.zone, "mesh started");
        tokio::spawn(mesh.clone().publisher());
        Ok((mesh, in_rx))
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// This node's zone.
    pub fn zone(&self) -> &ZoneName {
        &self.config.zone
    }

    /// When the mesh last acknowledged this node's claim and every one of
    /// its user records (Unix ms), if it has yet.
    pub fn published_at_ms(&self) -> Option<u64> {
        Some(self.shared.published_at_ms.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// Publishes (and keeps renewing) the record of a local user.
    pub async fn publish_user(&self, name: UserName) {
        lock(&self.shared.users).insert(name.clone());
        if matches!(*lock(&self.shared.claim), Some(ClaimState::Held)) {
            if let Some(claim) = self.own_claim().await {
                self.put_user(&name, &claim).await;
            }
        }
    }

    /// Stops renewing a removed user's record (it lapses at its expiry).
    pub fn unpublish_user(&self, name: &UserName) {
        lock(&self.shared.users).remove(name);
    }

    /// Puts a record exactly as given, bypassing this node's own checks:
    /// for tests and tools. Receiving nodes validate it as any other.
    pub async fn put_raw(&self, record: &MeshRecord) -> Result<(), String> {
        self.put(record.key(), record.encode(), record.expires_at_ms()).await
    }

    /// Every valid-looking record the mesh returns under `key`, decoded but
    /// not judged: for tests and tools.
    pub async fn get_raw(&self, key: Vec<u8>) -> Vec<MeshRecord> {
        self.get(key).await.iter().filter_map(|v| MeshRecord::decode(v).ok()).collect()
    }

    async fn put(&self, key: Vec<u8>, value: Vec<u8>, expires_at_ms: u64) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.cmd.send(Cmd::Put { key, value, expires_at_ms, reply }).await.map_err(|_| "mesh stopped".to_string())?;
        rx.await.map_err(|_| "mesh stopped".to_string())?
    }

    async fn get(&self, key: Vec<u8>) -> Vec<Vec<u8>> {
        self.get_with_stats(key, Enough::All).await.0
    }

    async fn get_with_stats(&self, key: Vec<u8>, enough: Enough) -> (Vec<Vec<u8>>, LookupStats) {
        self.shared.lookups.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        // A swarm that is gone (stopped, before or during the walk) asked
        // nobody: that is a lookup cut short, not an answer.
        let gone = || (Vec::new(), LookupStats { incomplete: true, ..LookupStats::default() });
        if self.cmd.send(Cmd::Get { key, enough, reply }).await.is_err() {
            return gone();
        }
        let found = rx.await.unwrap_or_else(|_| gone());
        if found.0.is_empty() {
            self.shared.failed_lookups.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    fn sign_claim(&self, addrs: Vec<String>) -> SignedZoneClaim {
        let now = wall_ms();
        ZoneClaim {
            zone: self.config.zone.clone(),
            node: node_hex(&self.key),
            addrs,
            seq: now,
            issued_at_ms: now,
            expires_at_ms: now + self.config.claim_ttl.as_millis() as u64,
        }
        .sign(&self.key)
    }

    async fn own_claim(&self) -> Option<SignedZoneClaim> {
        let addrs = self.advertised().await;
        Some(self.sign_claim(addrs))
    }

    /// Addresses to put in records: listen and external addresses, with
    /// unspecified ones left out.
    async fn advertised(&self) -> Vec<String> {
        let (reply, rx) = oneshot::channel();
        if self.cmd.send(Cmd::Status { reply }).await.is_err() {
            return Vec::new();
        }
        let Ok(status) = rx.await else { return Vec::new() };
        let mut out: Vec<String> = status
            .listen
            .iter()
            .filter(|a| !a.iter().any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_unspecified())))
            .map(|a| a.to_string())
            .collect();
        out.extend(self.config.external.iter().map(|a| a.to_string()));
        out.sort();
        out.dedup();
        out.truncate(crate::record::MAX_ADDRS);
        out
    }

    async fn put_user(&self, name: &UserName, claim: &SignedZoneClaim) -> bool {
        let now = wall_ms();
        let rec = UserRecord {
            user: Address::new(name.clone(), self.config.zone.clone()),
            node: claim.claim.node.clone(),
            addrs: claim.claim.addrs.clone(),
            seq: now,
            issued_at_ms: now,
            expires_at_ms: now + self.config.user_ttl.as_millis() as u64,
        }
        .sign(&self.key, claim.clone());
        let rec = MeshRecord::User(rec);
        match self.put(rec.key(), rec.encode(), rec.expires_at_ms()).await {
            Ok(()) => true,
            Err(e) => {
                debug!(user = %name, error = %e, "publishing user record failed");
                false
            }
        }
    }

    /// Claims the zone and publishes every user; renews before expiry.
    async fn publisher(self) {
        let first = self.config.stretch(Duration::from_millis(500));
        let most = self.config.stretch(Duration::from_secs(30));
        let mut backoff = first;
        loop {
            // A node with no mesh peer yet (still dialling its bootstrap
            // peers, or the first of its mesh) would fail every put at once
            // and back off further each time; it waits for its first peer
            // instead.
            self.until_routable().await;
            let wait = match self.publish_all().await {
                Ok(()) => {
                    self.shared.published_at_ms.store(wall_ms(), Ordering::Relaxed);
                    backoff = first;
                    self.config.republish
                }
                Err(why) => {
                    debug!(%why, "publishing records failed; retrying");
                    backoff = (backoff * 2).min(most);
                    backoff
                }
            };
            tokio::time::sleep(wait).await;
            if self.cmd.is_closed() {
                return;
            }
        }
    }

    /// Returns once a connected mesh peer has been identified.
    async fn until_routable(&self) {
        loop {
            let changed = self.shared.routable_changed.notified();
            if self.shared.routable.load(Ordering::Acquire) || self.cmd.is_closed() {
                return;
            }
            // Bounded, so a stopped mesh is noticed.
            let _ = tokio::time::timeout(self.config.stretch(Duration::from_secs(5)), changed).await;
        }
    }

    async fn publish_all(&self) -> Result<(), String> {
        // First claim wins: if a live claim by another key exists, keep off.
        // Once this node holds its zone it keeps renewing it: honest nodes
        // refuse any later claim, so another claim can only come from a
        // rogue answering lookups, and must not talk the holder out of it.
        let held = matches!(*lock(&self.shared.claim), Some(ClaimState::Held));
        let holder = if held { None } else { self.resolve_claim_fresh().await };
        if let Some(h) = holder.filter(|h| h.claim.node != node_hex(&self.key)) {
            let by = peer_of(&h.claim.node).map(|p| p.to_string()).unwrap_or_default();
            if *lock(&self.shared.claim) != Some(ClaimState::Taken { by: by.clone() }) {
                warn!(zone = %self.config.zone, %by, "zone name is held by another node; not claiming it");
            }
            *lock(&self.shared.claim) = Some(ClaimState::Taken { by });
            return Err("zone taken".into());
        }
        let claim = self.own_claim().await.ok_or("mesh stopped")?;
        let rec = MeshRecord::Zone(claim.clone());
        self.put(rec.key(), rec.encode(), rec.expires_at_ms()).await?;
        if *lock(&self.shared.claim) != Some(ClaimState::Held) {
            info!(zone = %self.config.zone, "zone claimed");
        }
        *lock(&self.shared.claim) = Some(ClaimState::Held);
        let users: Vec<UserName> = lock(&self.shared.users).iter().cloned().collect();
        // A few puts at a time: a zone of hundreds of users renews in a
        // fraction of the time one after another would take.
        let puts: Vec<_> = users.iter().map(|u| self.put_user(u, &claim)).collect();
        let done: Vec<bool> = futures::stream::iter(puts).buffer_unordered(PARALLEL_PUTS).collect().await;
        let failed = done.iter().filter(|ok| !**ok).count();
        if failed > 0 {
            return Err(format!("{failed} user records not published"));
        }
        Ok(())
    }

    /// Looks the zone's claim up in the mesh (no cache), choosing among
    /// conflicting valid claims the one most nodes hold.
    async fn resolve_claim_fresh(&self) -> Option<SignedZoneClaim> {
        let zone = self.config.zone.clone();
        self.lookup_claim(&zone).await
    }

    async fn lookup_claim(&self, zone: &ZoneName) -> Option<SignedZoneClaim> {
        self.lookup_claim_with_stats(zone).await.0
    }

    /// [`Self::lookup_claim`], also returning the query's statistics
    /// (whose `incomplete` tells whether a lookup that found nothing was
    /// cut short).
    async fn lookup_claim_with_stats(&self, zone: &ZoneName) -> (Option<SignedZoneClaim>, LookupStats) {
        let key = zone_key(zone);
        let now = wall_ms();
        let mut votes: HashMap<String, (usize, SignedZoneClaim)> = HashMap::new();
        // Stops once CLAIM_QUORUM holders agree; otherwise the query asks
        // every one of the closest peers and the majority decides.
        let (values, stats) = self.get_with_stats(key.clone(), Enough::Agree(CLAIM_QUORUM)).await;
        for value in values {
            match validate(&key, &value, now, None, None) {
                Ok(MeshRecord::Zone(c)) => {
                    let e = votes.entry(c.claim.node.clone()).or_insert((0, c.clone()));
                    e.0 += 1;
                    if c.claim.seq > e.1.claim.seq {
                        e.1 = c;
                    }
                }
                Ok(MeshRecord::User(_)) => self.shared.rejections.count(&RecordError::KeyMismatch),
                Err(e) => self.shared.rejections.count(&e),
            }
        }
        let Some((_, best)) = votes.into_values().max_by_key(|(n, c)| (*n, std::cmp::Reverse(c.claim.issued_at_ms)))
        else {
            return (None, stats);
        };
        lock(&self.shared.claim_cache).insert(zone.clone(), (best.clone(), Instant::now()));
        (Some(best), LookupStats { incomplete: false, ..stats })
    }

    /// The claim of `zone`, from the cache or the mesh.
    pub async fn zone_claim(&self, zone: &ZoneName) -> Option<SignedZoneClaim> {
        self.zone_claim_with_stats(zone).await.0
    }

    /// [`Self::zone_claim`], also returning the statistics of the lookup
    /// (`None`: the claim came from the cache).
    async fn zone_claim_with_stats(&self, zone: &ZoneName) -> (Option<SignedZoneClaim>, Option<LookupStats>) {
        let ttl = self.config.cache_ttl * 5;
        let cached =
            lock(&self.shared.claim_cache).get(zone).filter(|(_, at)| at.elapsed() < ttl).map(|(c, _)| c.clone());
        match cached {
            Some(c) if c.claim.expires_at_ms > wall_ms() => (Some(c), None),
            _ => {
                let (claim, stats) = self.lookup_claim_with_stats(zone).await;
                (claim, Some(stats))
            }
        }
    }

    /// Whether `peer` is the node holding `zone` (to check who may speak
    /// for that zone's users).
    pub async fn holds_zone(&self, peer: PeerId, zone: &ZoneName) -> bool {
        let held = |c: &SignedZoneClaim| peer_of(&c.claim.node) == Some(peer);
        match self.zone_claim(zone).await {
            Some(c) if held(&c) => true,
            // A stale cache may name a previous holder: look again once.
            Some(_) => self.lookup_claim(zone).await.is_some_and(|c| held(&c)),
            None => false,
        }
    }

    /// Finds `user`'s home node: one lookup of its record (cached), checked
    /// against the zone's claim (cached longer).
    ///
    /// A lookup the closest nodes did not all answer
    /// ([`RouteError::Incomplete`]: a slow or churning mesh) is walked once
    /// more before it is given up.
    pub async fn resolve(&self, user: &Address) -> Result<(PeerId, Vec<Multiaddr>), RouteError> {
        match self.resolve_with_stats(user).await.0 {
            // A second walk that asks fewer peers (the silent ones may have
            // left the routing table meanwhile) is no more the closest
            // nodes' word than the first: "unknown" would be a guess.
            Err(RouteError::Incomplete) => match self.resolve_with_stats(user).await.0 {
                Err(RouteError::UnknownZone | RouteError::UnknownUser) => Err(RouteError::Incomplete),
                again => again,
            },
            found => found,
        }
    }

    /// [`Mesh::resolve`], also returning what the lookup of the user's
    /// record cost (`None` when it came from the cache): for the simulator
    /// and tools.
    pub async fn resolve_with_stats(
        &self,
        user: &Address,
    ) -> (Result<(PeerId, Vec<Multiaddr>), RouteError>, Option<LookupStats>) {
        match self.lookup_user(user).await {
            // A lookup that a stop cut off (its swarm gone mid-walk) ended
            // incomplete for that reason alone.
            (Err(RouteError::Incomplete), stats) if self.shared.stopped.load(Ordering::Acquire) => {
                (Err(RouteError::Stopped), stats)
            }
            found => found,
        }
    }

    async fn lookup_user(&self, user: &Address) -> (Result<(PeerId, Vec<Multiaddr>), RouteError>, Option<LookupStats>) {
        let cached = lock(&self.shared.user_cache)
            .get(user)
            .filter(|(_, _, at)| at.elapsed() < self.config.cache_ttl)
            .map(|(p, a, _)| (*p, a.clone()));
        if let Some(hit) = cached {
            return (Ok(hit), None);
        }
        let key = user_key(user);
        let ((claim, claim_stats), (values, stats)) =
            tokio::join!(self.zone_claim_with_stats(&user.zone), self.get_with_stats(key.clone(), Enough::FirstValid));
        let with_claim = |s: LookupStats| match claim_stats {
            Some(c) => {
                LookupStats { claim_requests: c.requests, claim_successes: c.successes, claim_records: c.records, ..s }
            }
            None => s,
        };
        let claim = match claim {
            Some(claim) => claim,
            None if claim_stats.is_some_and(|c| c.incomplete) => {
                return (Err(RouteError::Incomplete), Some(with_claim(LookupStats { incomplete: true, ..stats })))
            }
            None => return (Err(RouteError::UnknownZone), Some(with_claim(stats))),
        };
        let mut best = self.best_user_record(user, &key, values, &claim);
        let mut stats = with_claim(stats);
        if best.is_none() && stats.early {
            // The first answer did not hold up against the zone's claim (a
            // stale or forged record): ask every one of the closest peers.
            let (values, full) = self.get_with_stats(key.clone(), Enough::All).await;
            stats = with_claim(full);
            best = self.best_user_record(user, &key, values, &claim);
        }
        let Some(rec) = best else {
            let why = if stats.incomplete { RouteError::Incomplete } else { RouteError::UnknownUser };
            return (Err(why), Some(stats));
        };
        let Some(peer) = peer_of(&rec.record.node) else { return (Err(RouteError::UnknownUser), Some(stats)) };
        let addrs: Vec<Multiaddr> = rec.record.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        lock(&self.shared.user_cache).insert(user.clone(), (peer, addrs.clone(), Instant::now()));
        (Ok((peer, addrs)), Some(stats))
    }

    /// The newest of `values` that is a valid record of `user` under
    /// `claim`; counts the bad ones.
    fn best_user_record(
        &self,
        user: &Address,
        key: &[u8],
        values: Vec<Vec<u8>>,
        claim: &SignedZoneClaim,
    ) -> Option<crate::record::SignedUserRecord> {
        let now = wall_ms();
        let mut best: Option<crate::record::SignedUserRecord> = None;
        for value in values {
            match validate(key, &value, now, None, Some(claim)) {
                Ok(MeshRecord::User(u)) => {
                    if best.as_ref().is_none_or(|b| u.record.seq > b.record.seq) {
                        best = Some(u);
                    }
                }
                Ok(MeshRecord::Zone(_)) => self.shared.rejections.count(&RecordError::KeyMismatch),
                Err(e) => {
                    debug!(%user, error = %e, "lookup returned a bad record");
                    self.shared.rejections.count(&e);
                }
            }
        }
        best
    }

    /// Delivers `msg` to `user`'s home node, resolving it first; returns
    /// the node it went to. A failed delivery drops the cached route and
    /// tries once more with a fresh lookup.
    pub async fn send(&self, user: &Address, msg: NodeToNode) -> Result<PeerId, RouteError> {
        let (peer, addrs) = self.resolve(user).await?;
        match self.deliver(peer, addrs, msg.clone()).await {
            Ok(()) => Ok(peer),
            Err(RouteError::Unreachable(_)) => {
                self.forget(user);
                let (peer2, addrs2) = self.resolve(user).await?;
                self.deliver(peer2, addrs2, msg).await.map(|()| peer2)
            }
            Err(e) => Err(e),
        }
    }

    /// Delivers `msg` to a node already known (the other node of a call).
    pub async fn send_to(&self, peer: PeerId, msg: NodeToNode) -> Result<(), RouteError> {
        self.deliver(peer, Vec::new(), msg).await
    }

    /// Drops what is cached about `user` and its zone, after a failure.
    pub fn forget(&self, user: &Address) {
        lock(&self.shared.user_cache).remove(user);
        lock(&self.shared.claim_cache).remove(&user.zone);
    }

    /// Delivers `msg` to `peer`, dialling `addrs` if not connected, with
    /// retries; waits for the delivery receipt.
    pub async fn deliver(&self, peer: PeerId, addrs: Vec<Multiaddr>, msg: NodeToNode) -> Result<(), RouteError> {
        let mut last = String::new();
        for attempt in 0..=self.config.retries {
            if attempt > 0 {
                tokio::time::sleep(self.config.stretch(Duration::from_millis(100 << attempt))).await;
            }
            let (reply, rx) = oneshot::channel();
            let cmd = Cmd::Send { peer, addrs: addrs.clone(), msg: msg.clone(), reply };
            self.cmd.send(cmd).await.map_err(|_| RouteError::Stopped)?;
            match rx.await.map_err(|_| RouteError::Stopped)? {
                Ok(Receipt::Delivered) => {
                    self.shared.delivered.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(Receipt::Refused { reason }) => {
                    self.shared.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(RouteError::Refused(reason));
                }
                Err(e) => last = e,
            }
        }
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        Err(RouteError::Unreachable(last))
    }

    /// Stops the swarm: its connections close and its listeners go away.
    /// The handle (and its clones) then answer [`RouteError::Stopped`].
    pub async fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        let _ = self.cmd.send(Cmd::Stop).await;
    }

    /// Counters and state for operators.
    pub async fn status(&self) -> MeshStatus {
        let (reply, rx) = oneshot::channel();
        let swarm = match self.cmd.send(Cmd::Status { reply }).await {
            Ok(()) => rx.await.ok(),
            Err(_) => None,
        };
        let swarm = swarm.unwrap_or(SwarmStatus {
            listen: vec![],
            peers: vec![],
            relayed: vec![],
            routing_table: 0,
            stored_records: 0,
        });
        let s = &self.shared;
        MeshStatus {
            peer_id: self.peer_id.to_string(),
            zone: self.config.zone.to_string(),
            claim: lock(&s.claim).clone().unwrap_or(ClaimState::Pending),
            listen: swarm.listen.iter().map(|a| a.to_string()).collect(),
            peers: swarm.peers.iter().map(|p| p.to_string()).collect(),
            relayed_peers: swarm.relayed.iter().map(|p| p.to_string()).collect(),
            routing_table: swarm.routing_table,
            stored_records: swarm.stored_records,
            published_users: lock(&s.users).len(),
            rejected: s.rejections.snapshot(),
            delivered: s.delivered.load(Ordering::Relaxed),
            failed_deliveries: s.failed.load(Ordering::Relaxed),
            lookups: s.lookups.load(Ordering::Relaxed),
            failed_lookups: s.failed_lookups.load(Ordering::Relaxed),
            handed_over: s.handed_over.load(Ordering::Relaxed),
            published_at_ms: self.published_at_ms(),
        }
    }
}

struct SwarmTask {
    swarm: Swarm<Behaviour>,
    cmd_tx: mpsc::Sender<Cmd>,
    inbound: mpsc::Sender<Inbound>,
    shared: Arc<Shared>,
    gets: HashMap<kad::QueryId, PendingGet>,
    /// Puts under way: who waits, and whether this is already the
    /// fallback put to the closest peers known (see `SwarmTask::put_done`).
    puts: HashMap<kad::QueryId, (oneshot::Sender<Result<(), String>>, bool)>,
    sends: HashMap<OutboundRequestId, oneshot::Sender<Result<Receipt, String>>>,
    bootstrapped: bool,
    /// Open connections: whether each goes through a relay circuit.
    connections: HashMap<libp2p::swarm::ConnectionId, (PeerId, bool)>,
    /// Relays to listen through, and the listeners open through them.
    relays: HashMap<PeerId, Multiaddr>,
    relay_listeners: HashMap<PeerId, libp2p::core::transport::ListenerId>,
    /// Zone keys whose offered first claim is being checked.
    verifying: BTreeSet<Vec<u8>>,
    /// Whether the first routing-table refresh has finished (hand-overs
    /// wait for a view of the mesh around each key).
    joined: bool,
    /// Peers added to the routing table since the last hand-over pass.
    met: BTreeSet<PeerId>,
    /// Hand-overs waiting to be sent: to whom, which record.
    handoff_queue: VecDeque<(PeerId, RecordKey)>,
    /// Hand-over puts under way.
    handoffs: HashSet<kad::QueryId>,
    /// How often records are renewed (wall-clock): older copies are not
    /// handed over.
    republish: Duration,
    /// How often peers met are handed their records.
    handoff_every: Duration,
}

/// Which of the peers `met` should be handed a record under `target`:
/// those among the [`REPLICATION`] closest nodes this node knows to it
/// (`closest`: the routing table's nearest peers, nearest first; this
/// node, `local`, takes its own place among them), provided this node is
/// among them too or is farther from the key than the peer (a holder the
/// mesh has grown past hands its copy inwards).
fn recipients(
    local: &kad::KBucketKey<PeerId>,
    target: &kad::KBucketKey<RecordKey>,
    closest: &[kad::KBucketKey<PeerId>],
    met: &BTreeSet<PeerId>,
) -> Vec<PeerId> {
    let mine = local.distance(target);
    let my_rank = closest.iter().filter(|p| p.distance(target) < mine).count();
    closest
        .iter()
        .take(REPLICATION)
        .enumerate()
        .filter(|(_, p)| met.contains(p.preimage()))
        .filter_map(|(i, p)| {
            let theirs = p.distance(target);
            let rank = i + usize::from(mine < theirs);
            (rank < REPLICATION && (my_rank < REPLICATION || theirs < mine)).then(|| *p.preimage())
        })
        .collect()
}

impl SwarmTask {
    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>) {
        let mut handoff = tokio::time::interval(self.handoff_every);
        handoff.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Stop) | None => break,
                    Some(c) => self.command(c),
                },
                event = self.swarm.select_next_some() => self.event(event),
                _ = handoff.tick() => self.hand_over(),
            }
        }
        self.shared.stopped.store(true, Ordering::Release);
        debug!("mesh swarm stopped");
    }

    fn command(&mut self, cmd: Cmd) {
        let b = self.swarm.behaviour_mut();
        match cmd {
            Cmd::Get { key, enough, reply } => {
                let id = b.kad.get_record(RecordKey::new(&key));
                let get = PendingGet {
                    key,
                    values: Vec::new(),
                    stats: LookupStats::default(),
                    enough,
                    votes: HashMap::new(),
                    done: GetDone::Reply(reply),
                };
                self.gets.insert(id, get);
            }
            Cmd::Put { key, value, expires_at_ms, reply } => {
                let mut record = kad::Record::new(RecordKey::new(&key), value);
                record.expires = Some(expiry_instant(expires_at_ms));
                record.publisher = Some(*self.swarm.local_peer_id());
                match self.swarm.behaviour_mut().kad.put_record(record, Quorum::One) {
                    Ok(id) => {
                        self.puts.insert(id, (reply, false));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            Cmd::Send { peer, addrs, msg, reply } => {
                for a in addrs {
                    self.swarm.add_peer_address(peer, a);
                }
                let id = self.swarm.behaviour_mut().signal.send_request(&peer, Envelope { msg });
                self.sends.insert(id, reply);
            }
            Cmd::Respond { channel, receipt } => {
                let _ = b.signal.send_response(channel, receipt);
            }
            Cmd::Stop => {}
            Cmd::Status { reply } => {
                let routing_table = b.kad.kbuckets().map(|k| k.num_entries()).sum();
                let stored_records = b.kad.store_mut().len();
                let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                let relayed = peers
                    .iter()
                    .filter(|p| self.connections.values().filter(|(q, _)| q == *p).all(|(_, relayed)| *relayed))
                    .copied()
                    .collect();
                let _ = reply.send(SwarmStatus {
                    listen: self.swarm.listeners().cloned().chain(self.swarm.external_addresses().cloned()).collect(),
                    peers,
                    relayed,
                    routing_table,
                    stored_records,
                });
            }
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.kad_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Signal(e)) => self.signal_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }))
                if info.protocols.contains(&crate::behaviour::KAD_PROTOCOL) =>
            {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
                // A connected mesh peer is in the routing table now: puts
                // and lookups have someone to ask.
                if !self.shared.routable.swap(true, Ordering::AcqRel) {
                    self.shared.routable_changed.notify_waiters();
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                for (peer, addr) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
                    let _ = self.swarm.dial(addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(e)) => debug!(?e, "relay client"),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(ping::Failure::Timeout),
            })) => {
                // A peer that stopped answering (crashed, cut off) would
                // otherwise stay "connected" and stall every query that
                // picks it until the request times out. Other ping errors
                // (a stream refused on a busy relay circuit) say nothing
                // about the peer being gone.
                debug!(%peer, "ping timed out: closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, connection_id, .. } => {
                let addr = endpoint.get_remote_address();
                debug!(peer = %peer_id, %addr, "connected");
                // An inbound circuit shows the circuit on the local side
                // (its send-back address is only the dialler's peer id).
                let circuit = |a: &Multiaddr| a.iter().any(|p| matches!(p, Protocol::P2pCircuit));
                let relayed = circuit(addr)
                    || matches!(&endpoint, libp2p::core::ConnectedPoint::Listener { local_addr, .. } if circuit(local_addr));
                self.connections.insert(connection_id, (peer_id, relayed));
                if !self.bootstrapped {
                    self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                }
                if let Some(relay) = self.relays.get(&peer_id) {
                    if !self.relay_listeners.contains_key(&peer_id) {
                        let circuit = relay.clone().with(Protocol::P2pCircuit);
                        match self.swarm.listen_on(circuit.clone()) {
                            Ok(id) => {
                                self.relay_listeners.insert(peer_id, id);
                            }
                            Err(e) => warn!(%circuit, error = %e, "cannot listen through relay"),
                        }
                    }
                }
            }
            SwarmEvent::ConnectionClosed { connection_id, .. } => {
                self.connections.remove(&connection_id);
            }
            SwarmEvent::ListenerClosed { listener_id, reason, .. } => {
                // A relay listener that closed is opened again on the next
                // connection to that relay.
                self.relay_listeners.retain(|_, id| *id != listener_id);
                debug!(?reason, "listener closed");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "mesh listening");
                // A zone node listens where its zone can reach it: its
                // concrete listen addresses are its external addresses
                // (a relay hands them to the nodes it serves).
                let circuit = address.iter().any(|p| matches!(p, Protocol::P2pCircuit));
                if !circuit {
                    self.swarm.add_external_address(address);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(peer = ?peer_id, %error, "dial failed");
            }
            _ => {}
        }
    }

    fn kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest { request: kad::InboundRequest::PutRecord { source, record: Some(r), .. } } => {
                self.inbound_put(source, r);
            }
            kad::Event::RoutingUpdated { peer, is_new_peer: true, .. } if self.met.len() < MAX_MET => {
                self.met.insert(peer);
            }
            kad::Event::OutboundQueryProgressed { id, result, step, stats } => match result {
                QueryResult::GetRecord(Ok(GetRecordOk::FoundRecord(found))) => {
                    let mut enough = false;
                    if let Some(get) = self.gets.get_mut(&id) {
                        let s = &mut get.stats;
                        if s.requests_to_first.is_none() {
                            s.requests_to_first = Some(stats.num_requests());
                            s.first_ms = Some(stats.duration().map_or(0, |d| d.as_millis() as u64));
                        }
                        // A zone's holder is what other nodes answer: this
                        // node's own copy may be the first claim a rogue
                        // pushed to it when it was new.
                        let own_copy = found.peer.is_none() && matches!(get.enough, Enough::Agree(_));
                        if !own_copy {
                            enough = get.found(found.record.value);
                        }
                    }
                    if enough && !step.last {
                        if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                            q.finish();
                        }
                        if let Some(get) = self.gets.get_mut(&id) {
                            get.stats.early = true;
                        }
                    }
                    if enough || step.last {
                        self.finish_get(id, &stats);
                    }
                }
                QueryResult::GetRecord(r) if step.last => {
                    if matches!(r, Err(kad::GetRecordError::Timeout { .. })) {
                        if let Some(get) = self.gets.get_mut(&id) {
                            get.stats.incomplete = true;
                        }
                    }
                    self.finish_get(id, &stats)
                }
                QueryResult::PutRecord(r) if step.last => {
                    if let Some((reply, fallen_back)) = self.puts.remove(&id) {
                        self.put_done(r, reply, fallen_back);
                    } else if self.handoffs.remove(&id) {
                        if r.is_ok() {
                            self.shared.handed_over.fetch_add(1, Ordering::Relaxed);
                        }
                        self.pump_handoffs();
                    }
                }
                QueryResult::Bootstrap(_) if step.last && !self.joined => {
                    // Hand-overs need a view of the mesh around each key.
                    self.joined = true;
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Ends one of this node's puts. A put whose walk to the closest peers
    /// timed out (a busy mesh, a few slow peers on the way) fails in libp2p
    /// even when it reached a holder, or before it reached any: the first
    /// counts as done; the second is put once more, straight to the
    /// closest peers this node knows, and hand-overs carry it on as those
    /// meet closer nodes.
    fn put_done(&mut self, r: kad::PutRecordResult, reply: oneshot::Sender<Result<(), String>>, fallen_back: bool) {
        let err = match r {
            Err(kad::PutRecordError::Timeout { success, .. }) if !success.is_empty() => None,
            Ok(_) => None,
            Err(e) => Some(e),
        };
        let Some(err) = err else {
            let _ = reply.send(Ok(()));
            return;
        };
        let kad = &mut self.swarm.behaviour_mut().kad;
        let record = kad.store_mut().get(err.key()).map(|r| r.into_owned());
        let target = kad::KBucketKey::new(err.key().clone());
        let peers: Vec<PeerId> =
            kad.get_closest_local_peers(&target).take(REPLICATION).map(|k| *k.preimage()).collect();
        match record {
            Some(record) if !fallen_back && !peers.is_empty() => {
                debug!(error = %err, peers = peers.len(), "put timed out; putting to the closest peers known");
                let id = kad.put_record_to(record, peers.into_iter(), Quorum::One);
                self.puts.insert(id, (reply, true));
            }
            _ => {
                let _ = reply.send(Err(err.to_string()));
            }
        }
    }

    fn finish_get(&mut self, id: kad::QueryId, stats: &kad::QueryStats) {
        let Some(PendingGet { values, stats: mut s, votes, done, .. }) = self.gets.remove(&id) else { return };
        match done {
            GetDone::Reply(reply) => {
                s.requests = stats.num_requests();
                s.successes = stats.num_successes();
                s.failures = stats.num_failures();
                s.total_ms = stats.duration().map_or(0, |d| d.as_millis() as u64);
                s.records = values.len() as u32;
                // Kademlia's walk also ends when the peers it could ask ran
                // out, or when every one it waits for is past its own
                // 10 s answer timeout (not configurable): an answer from
                // fewer than REPLICATION peers while some are still silent
                // is not the closest peers' word. Peers that refused or
                // failed outright (a node that left) do not count: in a
                // small mesh the walk ends with them as a matter of course.
                // A walk stopped early found what it wanted; a walk that
                // heard from no peer (or had none to ask: a node cut off
                // from the mesh, its routing table empty) has nobody's word.
                let silent = stats.num_pending() > 0 || s.successes == 0;
                s.incomplete |= !s.early && silent && (s.successes as usize) < REPLICATION;
                let _ = reply.send((values, s));
            }
            GetDone::VerifyClaim { source, record } => self.verified(source, *record, &votes),
        }
    }

    /// Queues the records that the peers met since the last pass should
    /// hold, then sends what the in-flight limit allows.
    ///
    /// A record lives on the nodes closest to its key *when it is put*;
    /// nodes that join later and come closer would not hold it until its
    /// next renewal, and lookups, which ask the nodes closest now, would
    /// miss it. So a node hands a newly met peer each record it holds that
    /// the peer is now among the [`REPLICATION`] closest nodes to (as far
    /// as this node knows), when this node is among them too or farther
    /// than the peer: the Kademlia paper's transfer on join, which libp2p
    /// leaves to the application. Only copies renewed within the last
    /// republish interval go (an older copy has been superseded, or its
    /// node has gone; the receiver would refuse it as a replay or keep a
    /// dead route alive). One pass over the store serves every peer met
    /// in the meantime; the receiver validates what it is handed like any
    /// other put.
    fn hand_over(&mut self) {
        if !self.joined || self.met.is_empty() {
            return;
        }
        let met = std::mem::take(&mut self.met);
        let now = Instant::now();
        let fresh_after = wall_ms().saturating_sub(self.republish.as_millis() as u64 * 5 / 4);
        let local = kad::KBucketKey::from(*self.swarm.local_peer_id());
        let kad = &mut self.swarm.behaviour_mut().kad;
        let keys: Vec<RecordKey> =
            kad.store_mut().records().filter(|r| !r.is_expired(now)).map(|r| r.key.clone()).collect();
        for key in keys {
            if self.handoff_queue.len() >= HANDOFF_QUEUE {
                debug!("hand-over queue full; the rest wait for their renewals");
                break;
            }
            let target = kad::KBucketKey::new(key.clone());
            let closest: Vec<kad::KBucketKey<PeerId>> =
                kad.get_closest_local_peers(&target).take(REPLICATION).collect();
            let to = recipients(&local, &target, &closest, &met);
            if to.is_empty() {
                continue;
            }
            let Some(rec) = kad.store_mut().get(&key).and_then(|r| MeshRecord::decode(&r.value).ok()) else { continue };
            if rec.issued_at_ms() < fresh_after {
                continue;
            }
            // A peer has its own records, and newer ones.
            let publisher = peer_of(rec.node());
            for peer in to.into_iter().filter(|p| Some(*p) != publisher) {
                self.handoff_queue.push_back((peer, key.clone()));
            }
        }
        self.pump_handoffs();
    }

    /// Sends queued hand-overs while fewer than [`HANDOFF_IN_FLIGHT`] are
    /// under way.
    fn pump_handoffs(&mut self) {
        while self.handoffs.len() < HANDOFF_IN_FLIGHT {
            let Some((peer, key)) = self.handoff_queue.pop_front() else { return };
            let kad = &mut self.swarm.behaviour_mut().kad;
            let Some(record) = kad.store_mut().get(&key).map(|r| r.into_owned()) else { continue };
            let id = kad.put_record_to(record, std::iter::once(peer), Quorum::One);
            self.handoffs.insert(id);
        }
    }

    /// Validates a record another node asks us to store.
    fn inbound_put(&mut self, source: PeerId, record: kad::Record) {
        let now = wall_ms();
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let key = record.key.to_vec();
        // The very bytes already held (a hand-over or a second holder's
        // copy of what this node has checked before): nothing to check or
        // store again, as long as that copy is live.
        let same = store.get(&record.key).is_some_and(|r| r.value == record.value && !r.is_expired(Instant::now()));
        if same {
            return;
        }
        let existing = store.mesh_record(&key);
        let zone_claim = match MeshRecord::decode(&record.value) {
            Ok(MeshRecord::User(u)) => match store.mesh_record(&zone_key(&u.record.user.zone)) {
                Some(MeshRecord::Zone(c)) => Some(c),
                _ => None,
            },
            _ => None,
        };
        match validate(&key, &record.value, now, existing.as_ref(), zone_claim.as_ref()) {
            Ok(MeshRecord::Zone(_)) if existing.is_none() => self.verify_first_claim(source, key, record),
            Ok(rec) => self.store(record, &rec),
            Err(e) => {
                warn!(peer = %source, key = %String::from_utf8_lossy(&key), error = %e, "refused a record");
                self.shared.rejections.count(&e);
            }
        }
    }

    /// A claim for a zone this node has no record of: a new node would
    /// otherwise take whichever claim reached it first, and a rogue that
    /// is quick can be first. Ask the mesh before storing it.
    fn verify_first_claim(&mut self, source: PeerId, key: Vec<u8>, record: kad::Record) {
        if self.verifying.len() >= MAX_VERIFYING || !self.verifying.insert(key.clone()) {
            debug!(peer = %source, "a zone claim is already being checked; dropped this offer");
            return;
        }
        let id = self.swarm.behaviour_mut().kad.get_record(RecordKey::new(&key));
        let get = PendingGet {
            key,
            values: Vec::new(),
            stats: LookupStats::default(),
            enough: Enough::Agree(CLAIM_QUORUM),
            votes: HashMap::new(),
            done: GetDone::VerifyClaim { source, record: Box::new(record) },
        };
        self.gets.insert(id, get);
    }

    /// Stores an offered first claim unless the mesh named another holder
    /// (`votes`: valid claims other nodes returned, per holder) at least as
    /// often as the offered one.
    fn verified(&mut self, source: PeerId, record: kad::Record, votes: &HashMap<String, usize>) {
        let key = record.key.to_vec();
        self.verifying.remove(&key);
        let now = wall_ms();
        let Ok(offered) = validate(&key, &record.value, now, None, None) else { return };
        let mine = votes.get(offered.node()).copied().unwrap_or(0);
        let other = votes.iter().filter(|(n, _)| *n != offered.node()).map(|(_, v)| *v).max().unwrap_or(0);
        if other > 0 && other >= mine {
            warn!(peer = %source, key = %String::from_utf8_lossy(&key), "refused a record: the mesh names another holder");
            self.shared.rejections.count(&RecordError::ZoneTaken);
            return;
        }
        // Judged again against what arrived meanwhile.
        let existing = self.swarm.behaviour_mut().kad.store_mut().mesh_record(&key);
        match validate(&key, &record.value, now, existing.as_ref(), None) {
            Ok(rec) => self.store(record, &rec),
            Err(e) => self.shared.rejections.count(&e),
        }
    }

    /// Puts a record that passed [`validate`] (`rec`, decoded) in the
    /// store, expiring when it does.
    fn store(&mut self, mut record: kad::Record, rec: &MeshRecord) {
        record.expires = Some(expiry_instant(rec.expires_at_ms()));
        if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().put(record) {
            warn!(error = %e, "storing a record failed");
        }
    }

    fn signal_event(&mut self, event: request_response::Event<Envelope, Receipt>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    let reply = Responder { channel, cmd: self.cmd_tx.clone() };
                    if let Err(e) = self.inbound.try_send(Inbound { peer, msg: request.msg, reply }) {
                        let (mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i)) = e;
                        let busy = Receipt::Refused { reason: "node busy".into() };
                        let _ = self.swarm.behaviour_mut().signal.send_response(i.reply.channel, busy);
                    }
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some(reply) = self.sends.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure { request_id, error, .. } => {
                if let Some(reply) = self.sends.remove(&request_id) {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` peers sorted by distance to `target`, nearest first.
    fn sorted_peers(n: usize, target: &kad::KBucketKey<RecordKey>) -> Vec<kad::KBucketKey<PeerId>> {
        let mut peers: Vec<kad::KBucketKey<PeerId>> = (0..n).map(|_| PeerId::random().into()).collect();
        peers.sort_by_key(|p| p.distance(target));
        peers
    }

    #[test]
    fn a_new_peer_is_handed_a_record_only_among_the_closest() {
        let target = kad::KBucketKey::new(RecordKey::new(&b"user/bob@sants".to_vec()));
        for my_rank in [0, 1, 10, 19, 20, 21, 35] {
            let all = sorted_peers(41, &target);
            let local = all[my_rank];
            // What the routing table gives: everyone else, nearest first, 20 of them.
            let closest: Vec<_> = all.iter().filter(|p| **p != local).take(REPLICATION).cloned().collect();
            let met: BTreeSet<PeerId> = all.iter().map(|p| *p.preimage()).collect();
            let got = recipients(&local, &target, &closest, &met);
            let want: Vec<PeerId> = if my_rank < REPLICATION {
                // This node holds one of the 20 places: the 20th table peer is out.
                closest[..REPLICATION - 1].iter().map(|p| *p.preimage()).collect()
            } else {
                // Grown past: all 20 are closer than this node, and get its copy.
                closest.iter().map(|p| *p.preimage()).collect()
            };
            assert_eq!(got, want, "this node ranked {my_rank}");
        }
    }

    #[test]
    fn only_peers_met_since_the_last_pass_are_handed_records() {
        let target = kad::KBucketKey::new(RecordKey::new(&b"zone/gracia".to_vec()));
        let all = sorted_peers(30, &target);
        let local = all[3];
        let closest: Vec<_> = all.iter().filter(|p| **p != local).take(REPLICATION).cloned().collect();
        let met: BTreeSet<PeerId> =
            [&closest[0], &closest[18], &closest[19], &all[25]].iter().map(|p| *p.preimage()).collect();
        // closest[19] is ranked 20th once this node takes its place; all[25] is far.
        assert_eq!(recipients(&local, &target, &closest, &met), vec![*closest[0].preimage(), *closest[18].preimage()]);
        assert!(recipients(&local, &target, &closest, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_small_mesh_hands_everyone_everything() {
        let target = kad::KBucketKey::new(RecordKey::new(&b"zone/clot".to_vec()));
        let all = sorted_peers(6, &target);
        let met: BTreeSet<PeerId> = all.iter().map(|p| *p.preimage()).collect();
        for local in &all {
            let closest: Vec<_> = all.iter().filter(|p| *p != local).cloned().collect();
            assert_eq!(recipients(local, &target, &closest, &met).len(), 5);
        }
    }
}
