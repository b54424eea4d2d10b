//! The swarm task: owns the libp2p [`Swarm`] and only moves bytes. It runs
//! the queries the handle asks for ([`Cmd`]), hands inbound service
//! requests to the service layer unread, and dispatches swarm events to
//! the jobs that own them: lookups (`lookup`), puts (`publish`), offered
//! records (`inbound`), hand-overs (`handover`).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use libp2p::core::Multiaddr;
use libp2p::kad::{self, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, identity, mdns, noise, ping, tcp, yamux, PeerId, Swarm};
use signalling::service::{NodeReply, NodeRequest};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::admission::{ClaimSigner, Limits};
use super::limits::{ip_of, LogLimiter, RateLimits};
use super::lookup::{Enough, PendingGet};
use super::service::RawInbound;
use super::status::SwarmStatus;
use super::{keypair_of, peer_in, MeshConfig, MeshError, Network, Shared};
use crate::behaviour::{Behaviour, BehaviourConfig, BehaviourEvent};
use crate::netem::NetemTransport;
use crate::store::PersistentStore;

/// A request of the handle to the swarm task.
#[derive(Debug)]
pub(super) enum Cmd {
    Get {
        key: Vec<u8>,
        enough: Enough,
        reply: oneshot::Sender<(Vec<Vec<u8>>, super::LookupStats)>,
    },
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        expires_at_ms: u64,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Send {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        request: NodeRequest,
        reply: oneshot::Sender<Result<NodeReply, String>>,
    },
    Respond {
        channel: ResponseChannel<NodeReply>,
        reply: NodeReply,
    },
    Status {
        reply: oneshot::Sender<SwarmStatus>,
    },
    Stop,
}

pub(super) struct SwarmTask {
    pub(super) swarm: Swarm<Behaviour>,
    /// Inbound service requests, to the service layer's router.
    pub(super) inbound: mpsc::Sender<RawInbound>,
    pub(super) shared: Arc<Shared>,
    pub(super) gets: HashMap<kad::QueryId, PendingGet>,
    /// Puts under way: who waits, and whether this is already the
    /// fallback put to the closest peers known (see `SwarmTask::put_done`).
    pub(super) puts: HashMap<kad::QueryId, (oneshot::Sender<Result<(), String>>, bool)>,
    pub(super) sends: HashMap<OutboundRequestId, oneshot::Sender<Result<NodeReply, String>>>,
    pub(super) bootstrapped: bool,
    /// A routing-table refresh timed out: repeat it once the table has
    /// grown past this size.
    pub(super) rebootstrap_past: Option<usize>,
    /// Open connections: the peer, whether it goes through a relay
    /// circuit, and the remote IP address.
    pub(super) connections: HashMap<libp2p::swarm::ConnectionId, (PeerId, bool, Option<IpAddr>)>,
    /// Relays to listen through, and the listeners open through them.
    pub(super) relays: HashMap<PeerId, Multiaddr>,
    pub(super) relay_listeners: HashMap<PeerId, libp2p::core::transport::ListenerId>,
    /// When each relay was last dialled (a relay that went away is dialled
    /// again, at most every [`RELAY_REDIAL`]).
    pub(super) relay_dialled: HashMap<PeerId, Instant>,
    /// [`RELAY_REDIAL`], stretched.
    pub(super) relay_redial: Duration,
    /// Peers the operator configured (bootstrap peers, relays): admitted
    /// to the routing table without showing a claim.
    pub(super) trusted: HashSet<PeerId>,
    /// Peers asked for their claim.
    pub(super) admitting: HashMap<PeerId, super::admission::Admitting>,
    /// The network each admitted peer connected from.
    pub(super) admitted_from: HashMap<PeerId, IpAddr>,
    /// Signs the claim this node shows.
    pub(super) signer: ClaimSigner,
    /// Limits on zones per key and peers per network.
    pub(super) limits: Limits,
    /// Keeps refusals from growing the log.
    pub(super) quiet: LogLimiter,
    /// New zone names brought in, per peer and per source address.
    pub(super) new_names_by_peer: RateLimits<PeerId>,
    pub(super) new_names_by_ip: RateLimits<IpAddr>,
    /// Zone keys whose offered first claim is being checked.
    pub(super) verifying: BTreeSet<Vec<u8>>,
    /// How many of those checks each peer's offers started.
    pub(super) verifying_from: HashMap<PeerId, usize>,
    /// Whether the first routing-table refresh has finished (hand-overs
    /// wait for a view of the mesh around each key).
    pub(super) joined: bool,
    /// Peers added to the routing table since the last hand-over pass.
    pub(super) met: BTreeSet<PeerId>,
    /// Hand-overs waiting to be sent: to whom, which record.
    pub(super) handoff_queue: VecDeque<(PeerId, RecordKey)>,
    /// Hand-over puts under way.
    pub(super) handoffs: HashSet<kad::QueryId>,
    /// How often records are renewed (wall-clock): older copies are not
    /// handed over.
    pub(super) republish: Duration,
    /// How often peers met are handed their records.
    pub(super) handoff_every: Duration,
}

/// How often a relay that went away is dialled again (protocol time).
pub(super) const RELAY_REDIAL: Duration = Duration::from_secs(10);

/// What [`build`] returns: the swarm, the relays to listen through (by
/// peer id), and the peers the operator configured.
pub(super) type Built = (Swarm<Behaviour>, HashMap<PeerId, Multiaddr>, HashSet<PeerId>);

/// Builds the swarm for `key` on the configured network, listening,
/// dialling the bootstrap peers and relays.
pub(super) fn build(key: &SigningKey, store: PersistentStore, config: &MeshConfig) -> Result<Built, MeshError> {
    let keypair = keypair_of(key)?;
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
    // The builder's steps after the transport, the same on either network
    // (a macro: each step changes the builder's type).
    macro_rules! finish {
        ($builder:expr) => {
            $builder
                .with_relay_client(noise::Config::new, yamux::Config::default)
                .map_err(|e| transport(&e))?
                .with_behaviour(behaviour)
                .map_err(|e| transport(&e))?
                .with_swarm_config(idle)
                .build()
        };
    }
    let mut swarm = match &config.network {
        Network::Native => finish!(libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
            .map_err(|e| transport(&e))?
            .with_quic()),
        Network::Simulated(netem) => finish!(libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_other_transport(|key| {
                use libp2p::core::muxing::StreamMuxerBox;
                use libp2p::Transport as _;
                let base = NetemTransport::new(netem.clone()).upgrade(libp2p::core::upgrade::Version::V1Lazy);
                let transport = if netem.noise() {
                    let noise =
                        noise::Config::new(key).map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
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
            .map_err(|e| transport(&e))?),
    };
    for addr in &config.listen {
        swarm.listen_on(addr.clone()).map_err(|e| MeshError::Listen { addr: addr.clone(), why: e.to_string() })?;
    }
    for addr in &config.external {
        swarm.add_external_address(addr.clone());
    }
    let mut trusted = HashSet::new();
    for addr in &config.bootstrap {
        if let Some(peer) = peer_in(addr) {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            trusted.insert(peer);
        }
        if let Err(e) = swarm.dial(addr.clone()) {
            warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    // Listening through a relay starts once connected to it (see
    // `SwarmTask::event`), so the reservation rides that connection.
    let mut relays = HashMap::new();
    for relay in &config.relays {
        if let Some(peer) = peer_in(relay) {
            relays.insert(peer, relay.clone());
            trusted.insert(peer);
            if let Err(e) = swarm.dial(relay.clone()) {
                warn!(%relay, error = %e, "cannot dial relay");
            }
        }
    }
    Ok((swarm, relays, trusted))
}

impl SwarmTask {
    pub(super) async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>) {
        let mut handoff = tokio::time::interval(self.handoff_every);
        handoff.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Stop) | None => break,
                    Some(c) => self.command(c),
                },
                event = self.swarm.select_next_some() => self.event(event),
                _ = handoff.tick() => {
                    self.hand_over();
                    self.redial_relays();
                    self.bootstrap_again();
                }
            }
        }
        self.shared.stopped.store(true, Ordering::Release);
        debug!("mesh swarm stopped");
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Get { key, enough, reply } => self.start_get(key, enough, reply),
            Cmd::Put { key, value, expires_at_ms, reply } => self.start_put(key, value, expires_at_ms, reply),
            Cmd::Send { peer, addrs, request, reply } => {
                for a in addrs {
                    self.swarm.add_peer_address(peer, a);
                }
                let id = self.swarm.behaviour_mut().service.send_request(&peer, request);
                self.sends.insert(id, reply);
            }
            Cmd::Respond { channel, reply } => {
                let _ = self.swarm.behaviour_mut().service.send_response(channel, reply);
            }
            Cmd::Stop => {}
            Cmd::Status { reply } => {
                let _ = reply.send(self.swarm_status());
            }
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.kad_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Service(e)) => self.service_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Claim(e)) => self.claim_event(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }))
                if info.protocols.contains(&crate::behaviour::KAD_PROTOCOL) =>
            {
                // Into the routing table only once it shows its claim.
                self.mesh_peer_identified(peer_id, info.listen_addrs);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                // Admitted like any peer once connected and identified.
                for (_, addr) in found {
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
                self.peer_unresponsive(peer);
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, connection_id, .. } => {
                let addr = endpoint.get_remote_address();
                debug!(peer = %peer_id, %addr, "connected");
                // An inbound circuit shows the circuit on the local side
                // (its send-back address is only the dialler's peer id).
                let circuit = |a: &Multiaddr| a.iter().any(|p| matches!(p, Protocol::P2pCircuit));
                let relayed = circuit(addr)
                    || matches!(&endpoint, libp2p::core::ConnectedPoint::Listener { local_addr, .. } if circuit(local_addr));
                self.connections.insert(connection_id, (peer_id, relayed, ip_of(addr)));
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
                if let Some(peer) = peer_id.filter(|p| !self.swarm.is_connected(p)) {
                    self.peer_unresponsive(peer);
                }
            }
            _ => {}
        }
    }

    fn kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::InboundRequest {
                request: kad::InboundRequest::PutRecord { source, connection, record: Some(r) },
            } => {
                let ip = self.connections.get(&connection).and_then(|(_, _, ip)| *ip);
                self.inbound_put(source, ip, r);
            }
            kad::Event::RoutingUpdated { peer, is_new_peer: true, .. } => self.peer_met(peer),
            kad::Event::OutboundQueryProgressed { id, result, step, stats } => match result {
                kad::QueryResult::GetRecord(r) => self.get_progressed(id, r, &step, &stats),
                kad::QueryResult::PutRecord(r) if step.last => {
                    if let Some((reply, fallen_back)) = self.puts.remove(&id) {
                        self.put_done(r, reply, fallen_back);
                    } else {
                        self.handoff_done(id, r.is_ok());
                    }
                }
                kad::QueryResult::Bootstrap(r) if step.last => {
                    // Hand-overs need a view of the mesh around each key.
                    self.joined = true;
                    if matches!(r, Err(kad::BootstrapError::Timeout { .. })) {
                        // Provisional: walked while the table was thin.
                        self.rebootstrap_past = Some(self.routing_table_len());
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Entries in the routing table.
    pub(super) fn routing_table_len(&mut self) -> usize {
        self.swarm.behaviour_mut().kad.kbuckets().map(|k| k.num_entries()).sum()
    }

    /// Dials the relays this node listens through that it is not
    /// connected to (a relay that restarted or went away for a while).
    fn redial_relays(&mut self) {
        let every = self.relay_redial;
        let now = Instant::now();
        let due: Vec<(PeerId, Multiaddr)> = self
            .relays
            .iter()
            .filter(|(p, _)| !self.swarm.is_connected(p))
            .filter(|(p, _)| self.relay_dialled.get(*p).is_none_or(|at| now.duration_since(*at) >= every))
            .map(|(p, a)| (*p, a.clone()))
            .collect();
        for (peer, addr) in due {
            debug!(%peer, "dialling a relay again");
            self.relay_dialled.insert(peer, now);
            let _ = self.swarm.dial(addr);
        }
    }

    /// Repeats a routing-table refresh that timed out once the table has
    /// grown since.
    fn bootstrap_again(&mut self) {
        let Some(past) = self.rebootstrap_past else { return };
        if self.routing_table_len() > past {
            self.rebootstrap_past = None;
            debug!("repeating a routing-table refresh that timed out");
            let _ = self.swarm.behaviour_mut().kad.bootstrap();
        }
    }

    /// Moves service requests to the router unread, and replies to the
    /// handles waiting for them.
    fn service_event(&mut self, event: request_response::Event<NodeRequest, NodeReply>) {
        match event {
            request_response::Event::Message { peer, connection_id, message } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    // The address the request came from, unless relayed.
                    let from =
                        self.connections.get(&connection_id).and_then(|(_, relayed, ip)| ip.filter(|_| !relayed));
                    if let Err(e) = self.inbound.try_send(RawInbound { peer, from, request, channel }) {
                        let (mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i)) = e;
                        super::service::count(&self.shared, signalling::service::Refusal::Busy);
                        let busy = NodeReply::refused(signalling::service::Refusal::Busy, "node busy");
                        let _ = self.swarm.behaviour_mut().service.send_response(i.channel, busy);
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
