//! How a node takes part in the mesh: one serde [`MeshConfig`], which the
//! zone node embeds as its `[mesh]` section and the simulator fills in
//! code, validated once by [`MeshConfig::validate`].

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use libp2p::core::Multiaddr;
use libp2p::multiaddr::Protocol;
use serde::{Deserialize, Serialize};

use super::MeshError;
use crate::netem::Netem;

/// The smallest [`MeshConfig::time_scale`] accepted.
pub const MIN_TIME_SCALE: f64 = 0.01;
/// The largest [`MeshConfig::time_scale`] accepted.
pub const MAX_TIME_SCALE: f64 = 100.0;

/// How a node takes part in the mesh. Every field has a default
/// ([`MeshConfig::default`]); in TOML, durations are written as `"90s"`,
/// `"1h"`, and addresses as multiaddress strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeshConfig {
    /// Join the mesh (false: a lone zone whose users only call each
    /// other). Read by the node, which then never starts a mesh.
    pub enabled: bool,
    /// Where to listen (TCP and QUIC multiaddresses).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through, each ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// The hand-over by which this node's key took its zone from another
    /// key (zone key rotation): carried in every claim it signs. Not read
    /// from a file: the node sets it from `data_dir/handover.json`.
    #[serde(skip)]
    pub handover: Option<crate::record::SignedZoneHandover>,
    /// Only look records up: publish nothing and show no claim, so other
    /// nodes answer this one but keep it out of their routing tables (what
    /// `xarxa setup` uses to see whether a zone name is free before the
    /// node claims it). Not read from a file.
    #[serde(skip)]
    pub lookup_only: bool,
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
    #[serde(with = "humantime_serde")]
    pub claim_ttl: Duration,
    /// Lifetime of user records.
    #[serde(with = "humantime_serde")]
    pub user_ttl: Duration,
    /// How often records are renewed.
    #[serde(with = "humantime_serde")]
    pub republish: Duration,
    /// How long a resolved user stays cached.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    /// How long one request to another node may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Extra tries of a failed delivery.
    pub retries: u32,
    /// Established connections in total.
    pub max_connections: u32,
    /// How long a connection with no protocol using it stays open.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How often Kademlia refreshes its routing table (libp2p's default:
    /// 5 minutes); it also refreshes whenever the table is nearly empty.
    #[serde(with = "humantime_serde")]
    pub bootstrap_interval: Duration,
    /// Requests per second one peer may make of this node's services
    /// (bursts of twice that pass); past that they are refused as
    /// rate-limited.
    pub peer_requests_per_second: u32,
    /// Zone names one node key may hold; a first claim by a key already
    /// holding that many live claims is refused (squatting).
    pub max_zones_per_key: u32,
    /// Zone names never seen in the mesh that one peer may bring in per
    /// hour (twice that at once); past that its first claims are refused.
    pub new_zones_per_peer_per_hour: u32,
    /// The same per source IP address, for peers that change keys.
    pub new_zones_per_address_per_hour: u32,
    /// Peers from one network (an IPv4 /24, an IPv6 /48) that one bucket
    /// of the routing table may hold; loopback is not counted.
    pub max_peers_per_prefix: u32,
    /// Wall-clock time per unit of protocol time: 1 on a real node. Every
    /// timer of the mesh is stretched by this factor: the durations above,
    /// Kademlia's query timeout, ping, identify and AutoNAT intervals, the
    /// handshake timeout and the retry back-offs. A simulator running many
    /// nodes on few cores slows the protocol, its links and its workload
    /// down by the same factor, so that every node gets the CPU time per
    /// protocol second it would have on a machine of its own. Between
    /// [`MIN_TIME_SCALE`] and [`MAX_TIME_SCALE`]. Not read from files.
    #[serde(skip)]
    pub time_scale: f64,
    /// The network under the swarm: real sockets, or a simulator's. Not
    /// read from files.
    #[serde(skip)]
    pub network: Network,
}

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

impl PartialEq for Network {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Native, Self::Native) => true,
            (Self::Simulated(a), Self::Simulated(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// `d` stretched by `scale` (kept within [`MIN_TIME_SCALE`] and
/// [`MAX_TIME_SCALE`]); exactly `d` at 1, a real node's scale.
pub(crate) fn stretch(d: Duration, scale: f64) -> Duration {
    if scale == 1.0 {
        return d;
    }
    d.mul_f64(scale.clamp(MIN_TIME_SCALE, MAX_TIME_SCALE))
}

impl Default for MeshConfig {
    /// TCP and QUIC on port 7447 of every interface, mDNS and relay on.
    fn default() -> Self {
        let any = Ipv4Addr::UNSPECIFIED;
        Self {
            enabled: true,
            listen: vec![
                Multiaddr::empty().with(Protocol::Ip4(any)).with(Protocol::Tcp(7447)),
                Multiaddr::empty().with(Protocol::Ip4(any)).with(Protocol::Udp(7447)).with(Protocol::QuicV1),
            ],
            bootstrap: Vec::new(),
            handover: None,
            lookup_only: false,
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
            peer_requests_per_second: 1000,
            max_zones_per_key: 1,
            new_zones_per_peer_per_hour: 4,
            new_zones_per_address_per_hour: 32,
            max_peers_per_prefix: 2,
            time_scale: 1.0,
            network: Network::Native,
        }
    }
}

impl MeshConfig {
    /// Checks the settings that cannot be right: the error names the field.
    pub fn validate(&self) -> Result<(), MeshError> {
        let bad = |field: &'static str, why: String| Err(MeshError::Config { field, why });
        if !(MIN_TIME_SCALE..=MAX_TIME_SCALE).contains(&self.time_scale) {
            return bad(
                "time_scale",
                format!("{} is not between {MIN_TIME_SCALE} and {MAX_TIME_SCALE}", self.time_scale),
            );
        }
        if self.enabled && self.listen.is_empty() && self.relays.is_empty() {
            return bad("listen", "give a listen address or a relay, or disable the mesh".into());
        }
        if self.republish >= self.user_ttl || self.republish >= self.claim_ttl {
            return bad("republish", "must be shorter than claim_ttl and user_ttl".into());
        }
        if self.request_timeout.is_zero() {
            return bad("request_timeout", "must be positive".into());
        }
        // Upper bounds far past sensible values, so that no deadline computed
        // from a setting (stretched up to MAX_TIME_SCALE) can overflow.
        const HOUR: Duration = Duration::from_secs(3600);
        let lifetime = Duration::from_millis(crate::record::MAX_LIFETIME_MS);
        for (field, value, max) in [
            ("claim_ttl", self.claim_ttl, lifetime),
            ("user_ttl", self.user_ttl, lifetime),
            ("cache_ttl", self.cache_ttl, 24 * HOUR),
            ("request_timeout", self.request_timeout, HOUR),
            ("idle_timeout", self.idle_timeout, 24 * HOUR),
            ("bootstrap_interval", self.bootstrap_interval, 24 * HOUR),
        ] {
            if value > max {
                return bad(field, format!("{value:?} is longer than {max:?}"));
            }
        }
        if self.max_connections == 0 || self.peer_requests_per_second == 0 {
            return bad("max_connections", "connections and request rates must be positive".into());
        }
        if self.max_zones_per_key == 0 || self.max_peers_per_prefix == 0 {
            return bad("max_zones_per_key", "zones per key and peers per prefix must be positive".into());
        }
        // A bootstrap address without a peer id is still dialled; a relay
        // must be known by its id to listen through it.
        if let Some(a) = self.relays.iter().find(|a| !a.iter().any(|p| matches!(p, Protocol::P2p(_)))) {
            return bad("relays", format!("{a} must end in /p2p/<peer id>"));
        }
        Ok(())
    }

    /// `d` of protocol time in wall-clock time (stretched by
    /// [`MeshConfig::time_scale`]).
    pub fn stretch(&self, d: Duration) -> Duration {
        stretch(d, self.time_scale)
    }

    /// This configuration with every duration in wall-clock time.
    pub(super) fn stretched(mut self) -> Self {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_durations_and_multiaddrs_and_refuses_unknown_keys() {
        let c: MeshConfig = serde_json::from_str(
            r#"{"listen": ["/ip4/127.0.0.1/tcp/0"], "republish": "2s", "bootstrap": [
                "/ip4/10.0.0.1/tcp/7447/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.republish, Duration::from_secs(2));
        assert_eq!(c.listen[0].to_string(), "/ip4/127.0.0.1/tcp/0");
        assert_eq!(c.time_scale, 1.0);
        c.validate().unwrap_or_else(|e| panic!("{e}"));
        assert!(serde_json::from_str::<MeshConfig>(r#"{"listen": ["not an address"]}"#).is_err());
        assert!(serde_json::from_str::<MeshConfig>(r#"{"republsh": "2s"}"#).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let field = |c: MeshConfig| match c.validate() {
            Err(MeshError::Config { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(MeshConfig { listen: vec![], ..MeshConfig::default() }), "listen");
        assert_eq!(
            field(MeshConfig { republish: Duration::from_secs(7 * 3600), ..MeshConfig::default() }),
            "republish"
        );
        assert_eq!(field(MeshConfig { time_scale: 1000.0, ..MeshConfig::default() }), "time_scale");
        let forever = Duration::from_secs(u64::MAX / 4);
        assert_eq!(field(MeshConfig { idle_timeout: forever, ..MeshConfig::default() }), "idle_timeout");
        assert_eq!(field(MeshConfig { claim_ttl: forever, ..MeshConfig::default() }), "claim_ttl");
        let no_peer_id = "/ip4/10.0.0.1/tcp/7447".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(field(MeshConfig { relays: vec![no_peer_id], ..MeshConfig::default() }), "relays");
        assert!(MeshConfig { listen: vec![], enabled: false, ..MeshConfig::default() }.validate().is_ok());
    }
}
