//! The running mesh: a swarm task that owns the libp2p swarm, and a cheap
//! [`Mesh`] handle that the node uses to publish its records, resolve
//! users of other zones and make requests of their home nodes.
//!
//! The swarm task ([`swarm`]) only moves bytes: it runs queries, filters
//! inbound puts through [`crate::record::validate`], and hands service
//! requests to the service layer. Policy lives in the handle, in ordinary
//! async code, one module per job:
//!
//! | module | job |
//! |---|---|
//! | [`config`] | [`MeshConfig`], the node's `[mesh]` section, validated once |
//! | `swarm` | the swarm task: builds the swarm, runs the handle's commands, dispatches events |
//! | `lookup` | walks, early stops, retries, resolving users and zones, the error kinds |
//! | `publish` | the zone claim and user records: first publication, renewal, puts that time out |
//! | `inbound` | records other nodes offer: validation, first-claim checks |
//! | `handover` | records handed to newly met peers (Kademlia's transfer on join) |
//! | [`service`] | the node-to-node service layer: envelopes, authentication, limits, delivery |
//! | `status` | [`MeshStatus`] and its counters |

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
pub use libp2p::core::Multiaddr;
use libp2p::identity;
pub use libp2p::multiaddr::Protocol;
pub use libp2p::PeerId;
use signalling::service::Refusal;
use signalling::{Address, UserName, ZoneName};
use tokio::sync::mpsc;
use tracing::info;

use crate::record::{node_hex, zone_key, MeshRecord, Rejections, SignedZoneClaim};
use crate::store::PersistentStore;

mod admission;
pub mod config;
mod error;
mod handover;
mod inbound;
mod limits;
mod lookup;
mod publish;
pub mod service;
mod status;
mod swarm;

pub(crate) use config::stretch;
pub use config::{MeshConfig, Network, MAX_TIME_SCALE, MIN_TIME_SCALE};
pub use error::{MeshError, RouteError};
pub use lookup::LookupStats;
pub use service::{Inbound, Incoming, Responder};
pub use status::{ClaimState, MeshStatus};

/// Inbound service requests queued for the router before the mesh
/// answers "busy".
const INBOUND_QUEUE: usize = 1024;
/// Commands queued for the swarm task.
const COMMAND_QUEUE: usize = 1024;

/// A resolved home node: its peer id, addresses, and when it was resolved.
type Route = (PeerId, Vec<Multiaddr>, Instant);

/// What the handle's clones and the swarm task share.
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
    /// When this node's key first claimed its zone (Unix ms; 0: not yet),
    /// which every renewal of the claim repeats.
    first_claimed_at_ms: AtomicU64,
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
    /// The services this node serves.
    services: service::Registry,
    /// Peers recently found to hold the zones they speak for.
    authenticated: service::Authenticated,
    /// Requests of other nodes refused, by cause.
    refused_requests: Mutex<std::collections::BTreeMap<Refusal, u64>>,
    /// Peers kept out of the routing table, by cause.
    refused_peers: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Puts that fell back to the closest peers known; set again to make
    /// the publisher repeat them soon.
    provisional_puts: AtomicU64,
    /// A put fell back since the last publication: publish again soon.
    provisional: AtomicBool,
}

/// A handle to the running mesh. Cloning is cheap.
#[derive(Clone)]
pub struct Mesh {
    cmd: mpsc::Sender<swarm::Cmd>,
    peer_id: PeerId,
    zone: ZoneName,
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
    /// Starts the swarm of zone `zone` on `key` (the node key), with
    /// records persisted in `tree`, the service layer's router, and the
    /// task that publishes this zone's claim and users. Serve services
    /// with [`Mesh::serve`] right after.
    pub async fn start(
        key: SigningKey,
        tree: sled::Tree,
        zone: ZoneName,
        config: MeshConfig,
    ) -> Result<Mesh, MeshError> {
        config.validate()?;
        let config = config.stretched();
        let peer_id = PeerId::from(keypair_of(&key)?.public());
        let store = PersistentStore::open(peer_id, tree);
        // A node that held its zone before a restart keeps the claim's
        // history: its last claim is in its own store.
        let first_claimed = match (store.mesh_record(&zone_key(&zone)), &config.handover) {
            (_, Some(h)) => h.handover.first_claimed_at_ms,
            (Some(MeshRecord::Zone(c)), None) if c.claim.node == node_hex(&key) => c.claim.first_claimed(),
            _ => 0,
        };
        if let Some(h) = &config.handover {
            h.verify().map_err(|e| MeshError::Config { field: "handover", why: e.to_string() })?;
            if h.handover.to != node_hex(&key) || h.handover.zone != zone {
                return Err(MeshError::Config { field: "handover", why: "it is for another key or zone".into() });
            }
        }
        let (swarm, relays, trusted) = swarm::build(&key, store, &config)?;
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        let shared = Arc::new(Shared { first_claimed_at_ms: AtomicU64::new(first_claimed), ..Shared::default() });
        let key = Arc::new(key);
        let hour = config.stretch(Duration::from_secs(3600)).as_secs_f64();
        let task = swarm::SwarmTask {
            swarm,
            inbound: in_tx,
            shared: shared.clone(),
            gets: HashMap::new(),
            puts: HashMap::new(),
            sends: HashMap::new(),
            bootstrapped: false,
            rebootstrap_past: None,
            connections: HashMap::new(),
            // Dialled just now, by `swarm::build`.
            relay_dialled: relays.keys().map(|p| (*p, Instant::now())).collect(),
            relays,
            relay_listeners: HashMap::new(),
            relay_redial: config.stretch(swarm::RELAY_REDIAL),
            trusted,
            admitting: HashMap::new(),
            admitted_from: HashMap::new(),
            signer: admission::ClaimSigner {
                key: key.clone(),
                zone: zone.clone(),
                claim_ttl: config.claim_ttl,
                handover: config.handover.clone(),
                lookup_only: config.lookup_only,
            },
            limits: admission::Limits {
                max_zones_per_key: config.max_zones_per_key,
                max_peers_per_prefix: config.max_peers_per_prefix,
            },
            quiet: limits::LogLimiter::new(config.stretch(Duration::from_secs(10))),
            new_names_by_peer: limits::RateLimits::per_hour(config.new_zones_per_peer_per_hour, hour),
            new_names_by_ip: limits::RateLimits::per_hour(config.new_zones_per_address_per_hour, hour),
            verifying: BTreeSet::new(),
            verifying_from: HashMap::new(),
            joined: false,
            met: BTreeSet::new(),
            handoff_queue: VecDeque::new(),
            handoffs: HashSet::new(),
            republish: config.republish,
            handoff_every: config.stretch(handover::HANDOFF_EVERY),
        };
        tokio::spawn(task.run(cmd_rx));
        let mesh = Mesh { cmd: cmd_tx, peer_id, zone, key, config: Arc::new(config), shared };
        info!(peer = %peer_id, zone = %mesh.zone, "mesh started");
        tokio::spawn(service::route(mesh.clone(), in_rx));
        if !mesh.config.lookup_only {
            tokio::spawn(mesh.clone().publisher());
        }
        Ok(mesh)
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// This node's zone.
    pub fn zone(&self) -> &ZoneName {
        &self.zone
    }

    /// Stops the swarm: its connections close and its listeners go away.
    /// The handle (and its clones) then answer [`RouteError::Stopped`].
    pub async fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        let _ = self.cmd.send(swarm::Cmd::Stop).await;
    }
}
