//! `xarxa setup`: what it asks the mesh and what it tells the volunteer.
//!
//! Before the node claims its zone, setup joins the mesh *lookup-only*
//! (publishing nothing, showing no claim: see `dht::MeshConfig`) with the
//! node's own key, through the bootstrap peers given or those mDNS finds,
//! and asks who holds the zone name. Afterwards it says how people reach
//! the node: a URL per address of the machine, the certificate's
//! fingerprint, and the mesh addresses neighbours bootstrap from.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde::Serialize;
use sha2::{Digest, Sha256};
use signalling::ZoneName;

use crate::config::Config;

/// Who holds the zone name, as far as the mesh answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ZoneCheck {
    /// Other zones answered and none holds the name.
    Free {
        /// Mesh peers that were connected.
        peers: usize,
    },
    /// This node's key holds it already (setup run again).
    Ours,
    /// Another key holds it.
    Taken {
        /// That node's peer id.
        by: String,
        /// When it was first claimed, ms since the epoch.
        first_claimed_at_ms: u64,
    },
    /// No other zone answered within the wait: this node starts a mesh of
    /// its own, or its bootstrap peers are down.
    Alone,
}

/// Asks the mesh who holds `zone`, with `key` (the node's), joining as the
/// config says (bootstrap peers, mDNS) but lookup-only, on ports of its own.
/// Waits at most `wait` for a first peer.
pub async fn zone_check(
    config: &Config,
    key: SigningKey,
    zone: &ZoneName,
    wait: Duration,
) -> Result<ZoneCheck, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let tree = sled::open(dir.path()).and_then(|db| db.open_tree("mesh")).map_err(|e| e.to_string())?;
    let mut mesh_config = config.mesh.clone();
    mesh_config.lookup_only = true;
    // The node's own ports stay free (it may be started right after).
    mesh_config.listen = mesh_config.listen.iter().map(any_port).collect();
    let own = dht::record::node_hex(&key);
    let mesh = dht::Mesh::start(key, tree, zone.clone(), mesh_config).await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + wait;
    let peers = loop {
        let n = mesh.status().await.peers.len();
        if n > 0 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let answer = if peers == 0 {
        ZoneCheck::Alone
    } else {
        // A moment for the routing table to fill past the first peer.
        tokio::time::sleep(Duration::from_millis(500)).await;
        match mesh.zone_claim(zone).await {
            None => ZoneCheck::Free { peers },
            Some(c) if c.claim.node == own => ZoneCheck::Ours,
            Some(c) => ZoneCheck::Taken {
                by: dht::mesh::peer_of(&c.claim.node).map(|p| p.to_string()).unwrap_or(c.claim.node.clone()),
                first_claimed_at_ms: c.claim.first_claimed(),
            },
        }
    };
    mesh.stop().await;
    Ok(answer)
}

/// `addr` with its TCP or UDP port 0.
fn any_port(addr: &dht::mesh::Multiaddr) -> dht::mesh::Multiaddr {
    use dht::mesh::Protocol;
    addr.iter()
        .map(|p| match p {
            Protocol::Tcp(_) => Protocol::Tcp(0),
            Protocol::Udp(_) => Protocol::Udp(0),
            other => other,
        })
        .collect()
}

/// How people reach the node.
#[derive(Debug, Clone, Serialize)]
pub struct Reach {
    /// `https://ADDRESS:PORT/` per address of the machine the node serves.
    pub urls: Vec<String>,
    /// SHA-256 of the certificate (DER), as browsers show it.
    pub fingerprint: String,
    /// Mesh addresses (with `/p2p/<peer id>`) other zones bootstrap from.
    pub mesh: Vec<String>,
}

/// The addresses the machine has that `listen` serves: all of them for an
/// unspecified address (loopback last), else that one.
pub fn addresses(listen: IpAddr) -> Vec<IpAddr> {
    if !listen.is_unspecified() {
        return vec![listen];
    }
    let mut all: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| listen.is_ipv4() == ip.is_ipv4() || listen.is_ipv6())
        // Link-local IPv6 needs a zone index in a URL: left out.
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80))
        .collect();
    all.sort_by_key(|ip| (ip.is_loopback(), ip.is_ipv6(), *ip));
    all.dedup();
    all
}

/// What [`reach`] prints, for `config`'s node with `key`, certificate at
/// `cert`.
pub fn reach(config: &Config, key: &SigningKey, cert: &Path) -> Result<Reach, String> {
    let port = config.http.listen.port();
    let urls = addresses(config.http.listen.ip())
        .into_iter()
        .map(|ip| format!("https://{}/", SocketAddr::new(ip, port)))
        .collect();
    let peer = dht::mesh::peer_of(&dht::record::node_hex(key)).map(|p| p.to_string()).unwrap_or_default();
    let mut mesh = Vec::new();
    for addr in &config.mesh.listen {
        use dht::mesh::Protocol;
        let mut parts = addr.iter();
        let ip = match parts.next() {
            Some(Protocol::Ip4(ip)) => IpAddr::V4(ip),
            Some(Protocol::Ip6(ip)) => IpAddr::V6(ip),
            _ => continue,
        };
        let rest: dht::mesh::Multiaddr = parts.collect();
        for a in addresses(ip).into_iter().filter(|a| !a.is_loopback() || ip.is_loopback()) {
            let head = match a {
                IpAddr::V4(v4) => Protocol::Ip4(v4),
                IpAddr::V6(v6) => Protocol::Ip6(v6),
            };
            mesh.push(format!("{}{rest}/p2p/{peer}", dht::mesh::Multiaddr::empty().with(head)));
        }
    }
    Ok(Reach { urls, fingerprint: fingerprint(cert)?, mesh })
}

/// The SHA-256 of the first certificate in a PEM file, `AB:CD:…`.
pub fn fingerprint(cert: &Path) -> Result<String, String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .next()
        .ok_or_else(|| format!("{}: no certificate", cert.display()))?
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let hash = Sha256::digest(der.as_ref());
    Ok(hash.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_specific_address_is_the_only_one_and_unspecified_lists_loopback_last() {
        assert_eq!(addresses("10.1.2.3".parse().expect("ip")), vec!["10.1.2.3".parse::<IpAddr>().expect("ip")]);
        let all = addresses("0.0.0.0".parse().expect("ip"));
        assert!(all.iter().all(IpAddr::is_ipv4));
        assert!(all.iter().any(IpAddr::is_loopback), "{all:?}");
        assert!(all.last().is_some_and(IpAddr::is_loopback), "{all:?}");
    }
}
