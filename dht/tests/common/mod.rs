//! What the swarm tests share: real meshes on loopback TCP in temporary
//! directories, their addresses, and bounded waits.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::Duration;

use dht::{Incoming, Mesh, MeshConfig};
use ed25519_dalek::SigningKey;
use libp2p::Multiaddr;
use signalling::service::CallService;
use signalling::ZoneName;

/// One mesh node with its calls queue and data directory.
pub struct Node {
    pub mesh: Mesh,
    pub inbound: Incoming<CallService>,
    _dir: tempfile::TempDir,
}

/// A test node's settings: TCP on `ip`, no mDNS, quick renewals and
/// timeouts.
pub fn config_on(ip: &str, bootstrap: Vec<Multiaddr>) -> MeshConfig {
    MeshConfig {
        listen: vec![format!("/ip4/{ip}/tcp/0").parse().unwrap()],
        bootstrap,
        mdns: false,
        republish: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        retries: 1,
        ..MeshConfig::default()
    }
}

/// [`config_on`] 127.0.0.1.
pub fn config(bootstrap: Vec<Multiaddr>) -> MeshConfig {
    config_on("127.0.0.1", bootstrap)
}

/// A node of `zone` with key `[seed; 32]`, serving the calls service.
pub async fn start(zone: &str, seed: u8, bootstrap: Vec<Multiaddr>) -> Node {
    start_with(zone, seed, config(bootstrap)).await
}

/// [`start`] with its own settings.
pub async fn start_with(zone: &str, seed: u8, config: MeshConfig) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let tree = sled::open(dir.path()).unwrap().open_tree("mesh").unwrap();
    let zone = ZoneName::parse(zone).unwrap();
    let mesh = Mesh::start(SigningKey::from_bytes(&[seed; 32]), tree, zone, config).await.unwrap();
    let inbound = mesh.serve::<CallService>(64).unwrap();
    Node { mesh, inbound, _dir: dir }
}

/// The node's TCP address, with its peer id.
pub async fn addr_of(n: &Node) -> Multiaddr {
    for _ in 0..100 {
        if let Some(a) = n.mesh.status().await.listen.iter().find(|a| a.contains("/tcp/")) {
            let a: Multiaddr = a.parse().unwrap();
            return a.with(libp2p::multiaddr::Protocol::P2p(n.mesh.peer_id()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no listen address");
}

/// Waits (30 s at most: hand-overs go out on a 5 s tick) until `f` holds.
pub async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    for _ in 0..600 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A peer that accepts TCP connections on loopback and never says a word,
/// under a random peer id; it goes when the task is aborted.
pub async fn silent_peer() -> (Multiaddr, tokio::task::JoinHandle<()>) {
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hole.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = hole.accept().await {
            open.push(socket);
        }
    });
    let addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", libp2p::PeerId::random()).parse().unwrap();
    (addr, held)
}
