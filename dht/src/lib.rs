//! The Xarxa mesh: zone nodes join one libp2p Kademlia DHT (QUIC and TCP
//! with noise and yamux, identify, ping, mDNS, circuit relay v2, DCUtR,
//! AutoNAT), keep signed records of which node holds which zone and user,
//! and carry call signalling between nodes.
//!
//! - [`record`]: zone claims and user records, signed with the node's
//!   ed25519 key, and [`record::validate`], which every node applies to
//!   every record it is asked to store and every record a lookup returns.
//! - [`store`]: the Kademlia record store, persisted in sled.
//! - [`behaviour`]: the composed [`behaviour::Behaviour`] and the
//!   `/xarxa/service/1` request-response protocol (a
//!   [`signalling::service::NodeRequest`] per request, a
//!   [`signalling::service::NodeReply`] per response).
//! - [`mesh`]: the swarm task and the [`Mesh`] handle, a module per job:
//!   lookups, publishing, hand-over, offered records, status.
//! - [`service`]: the node-to-node service layer every feature's requests
//!   between nodes travel on: typed, versioned envelopes, authentication of
//!   the sending node, per-peer limits, delivery with receipt and retry.
//! - [`netem`]: an emulated in-memory network (latency, loss, bandwidth,
//!   partitions, crashes, NAT) that the simulator runs many swarms on.
//!
//! # The model
//!
//! A node claims its zone name (first claim wins; only the same key may
//! renew; an unrenewed claim lapses) and publishes one record per local
//! user, both renewed every `republish`. To call `bob@sants`, the caller's
//! node resolves `bob@sants` (one lookup, cached, checked against the
//! cached claim of `sants`) and sends the call's requests to that node's
//! calls service; the callee's node answers to the peer that invited it.

// The derive macro generates an undocumented event enum; the module's own
// items are documented.
#[allow(missing_docs)]
pub mod behaviour;
pub mod mesh;
pub mod netem;
pub mod record;
pub mod store;

pub use mesh::service;
pub use mesh::{
    ClaimState, Inbound, Incoming, LookupStats, Mesh, MeshConfig, MeshError, MeshStatus, Network, Responder, RouteError,
};
pub use record::{MeshRecord, RecordError, RejectionCounts};
