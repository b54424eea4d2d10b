//! The composed libp2p behaviour of a zone node and its service protocol.

use std::time::Duration;

use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{autonat, connection_limits, dcutr, identify, identity, kad, mdns, ping, relay, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use signalling::service::{NodeReply, NodeRequest};

use crate::record::SignedZoneClaim;
use crate::store::PersistentStore;

/// The Kademlia protocol name: Xarxa's own DHT, apart from any other.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/xarxa/kad/1.0.0");
/// The node-to-node service protocol: one [`NodeRequest`] per request, one
/// [`NodeReply`] per response (see [`crate::service`]).
pub const SERVICE_PROTOCOL: StreamProtocol = StreamProtocol::new("/xarxa/service/1");
/// The identify protocol version string.
pub const IDENTIFY_VERSION: &str = "/xarxa/id/1.0.0";
/// Largest service request or reply, in bytes (envelope included).
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
/// Largest Kademlia message read (libp2p's default is 16 KiB). Eight
/// times a record's limit, so that a peer offering an oversized value is
/// seen and counted; a longer message is cut off after its length prefix,
/// nothing of it read.
pub const MAX_KAD_MESSAGE_BYTES: usize = 64 * 1024;
/// The admission protocol: a peer shows the zone claim of its own key
/// before it enters the routing table (see `mesh::admission`).
pub const CLAIM_PROTOCOL: StreamProtocol = StreamProtocol::new("/xarxa/claim/1");

/// Asks a peer for the zone claim of its own key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClaimAsk {}

/// The answer to a [`ClaimAsk`]: the peer's claim, signed now, or none
/// (its zone is held by another key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimShown {
    /// The claim.
    pub claim: Option<SignedZoneClaim>,
}

/// Everything a zone node speaks on the mesh.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Connection limits (first, so it can deny early).
    pub limits: connection_limits::Behaviour,
    /// The DHT holding zone claims and user records.
    pub kad: kad::Behaviour<PersistentStore>,
    /// Exchanges listen addresses and protocols.
    pub identify: identify::Behaviour,
    /// Liveness.
    pub ping: ping::Behaviour,
    /// Requests between the nodes' services (calls, and what comes next).
    pub service: request_response::json::Behaviour<NodeRequest, NodeReply>,
    /// Admission: peers show their zone claim before they are routed to.
    pub claim: request_response::json::Behaviour<ClaimAsk, ClaimShown>,
    /// Reaching nodes behind NAT through a relay.
    pub relay_client: relay::client::Behaviour,
    /// Serving as a relay for others (optional).
    pub relay: Toggle<relay::Behaviour>,
    /// Hole punching over a relayed connection.
    pub dcutr: dcutr::Behaviour,
    /// Learning whether we are reachable.
    pub autonat: autonat::Behaviour,
    /// Finding zones on the local network (optional).
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Switches and limits for [`Behaviour::new`].
#[derive(Debug, Clone)]
pub struct BehaviourConfig {
    /// Serve as a circuit relay.
    pub relay_server: bool,
    /// Run mDNS discovery.
    pub mdns: bool,
    /// Established connections in total.
    pub max_connections: u32,
    /// How long a service request may take (also a Kademlia request:
    /// a peer that does not answer in this time counts as failed, and the
    /// query goes on without it).
    pub request_timeout: Duration,
    /// How often Kademlia refreshes its routing table.
    pub bootstrap_interval: Duration,
    /// Wall-clock time per unit of protocol time (see
    /// `MeshConfig::time_scale`): stretches the behaviours' own timers.
    pub time_scale: f64,
}

impl Behaviour {
    /// Builds the behaviour for `key`, with its record store.
    pub fn new(
        key: &identity::Keypair,
        relay_client: relay::client::Behaviour,
        store: PersistentStore,
        config: &BehaviourConfig,
    ) -> std::io::Result<Self> {
        let peer = PeerId::from(key.public());
        let stretch = |d: Duration| crate::mesh::stretch(d, config.time_scale);
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config
            .set_record_filtering(kad::StoreInserts::FilterBoth)
            .set_publication_interval(None)
            // Holders put what they hold again hourly (libp2p's default),
            // on the stretched clock like every other timer.
            .set_replication_interval(Some(stretch(Duration::from_secs(3600))))
            .set_record_ttl(None)
            .set_query_timeout(stretch(Duration::from_secs(10)))
            .set_substreams_timeout(config.request_timeout)
            .set_periodic_bootstrap_interval(Some(config.bootstrap_interval))
            // Peers enter the routing table only once they showed a zone
            // claim (`mesh::admission`): a foreign peer may ask questions,
            // it may not shape others' tables or their FIND_NODE answers.
            .set_kbucket_inserts(kad::BucketInserts::Manual)
            // Kademlia drops a longer message at the stream and tells no
            // one; up to this size an oversized value reaches `inbound`,
            // which refuses it and counts it (`too_large`).
            .set_max_packet_size(MAX_KAD_MESSAGE_BYTES);
        let mut kad = kad::Behaviour::with_config(peer, store, kad_config);
        kad.set_mode(Some(kad::Mode::Server));
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_connections))
            .with_max_established_per_peer(Some(4))
            .with_max_pending_incoming(Some(64));
        let codec = request_response::json::codec::Codec::default()
            .set_request_size_maximum(MAX_REQUEST_BYTES)
            .set_response_size_maximum(MAX_REQUEST_BYTES);
        let service = request_response::Behaviour::with_codec(
            codec,
            [(SERVICE_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.request_timeout)
                .with_max_concurrent_streams(256),
        );
        let claim = request_response::Behaviour::with_codec(
            request_response::json::codec::Codec::default()
                .set_request_size_maximum(64)
                .set_response_size_maximum(crate::record::MAX_RECORD_BYTES as u64),
            [(CLAIM_PROTOCOL, ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.request_timeout)
                .with_max_concurrent_streams(64),
        );
        let mdns = if config.mdns { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?) } else { None };
        // Signalling is small but calls are long: allow circuits to live.
        let relay_config = relay::Config {
            max_circuit_duration: Duration::from_secs(3600),
            max_circuit_bytes: 16 << 20,
            ..relay::Config::default()
        };
        let relay = config.relay_server.then(|| relay::Behaviour::new(peer, relay_config));
        Ok(Self {
            limits: connection_limits::Behaviour::new(limits),
            kad,
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_VERSION.into(), key.public())
                    .with_interval(stretch(Duration::from_secs(300))),
            ),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(stretch(Duration::from_secs(15)))
                    .with_timeout(stretch(Duration::from_secs(20))),
            ),
            service,
            claim,
            relay_client,
            relay: Toggle::from(relay),
            dcutr: dcutr::Behaviour::new(peer),
            autonat: autonat::Behaviour::new(peer, autonat_config(stretch)),
            mdns: Toggle::from(mdns),
        })
    }
}

/// AutoNAT's defaults with every timer passed through `stretch`.
fn autonat_config(stretch: impl Fn(Duration) -> Duration) -> autonat::Config {
    let d = autonat::Config::default();
    autonat::Config {
        timeout: stretch(d.timeout),
        boot_delay: stretch(d.boot_delay),
        refresh_interval: stretch(d.refresh_interval),
        retry_interval: stretch(d.retry_interval),
        throttle_server_period: stretch(d.throttle_server_period),
        throttle_clients_period: stretch(d.throttle_clients_period),
        ..d
    }
}
