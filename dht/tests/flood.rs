//! A flood of malformed records: the counters grow by exactly the number
//! refused, the log by a bounded number of lines. Alone in its test binary:
//! it installs a log subscriber that counts lines.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dht::record::{node_hex, ZoneClaim};
use dht::{Mesh, MeshConfig, MeshRecord};
use ed25519_dalek::SigningKey;
use libp2p::Multiaddr;
use signalling::ZoneName;

/// Counts the log lines that report a refused record.
#[derive(Clone, Default)]
struct Lines(Arc<AtomicUsize>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let n = text.lines().filter(|l| l.contains("refused a record")).count();
        self.0.fetch_add(n, Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn config(bootstrap: Vec<Multiaddr>) -> MeshConfig {
    MeshConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap,
        mdns: false,
        ..MeshConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_records_is_counted_exactly_and_logged_briefly() {
    let lines = Lines::default();
    let sink = lines.clone();
    tracing_subscriber::fmt().with_max_level(tracing::Level::WARN).with_writer(move || sink.clone()).init();
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let tree = |i: usize| sled::open(dirs[i].path()).unwrap().open_tree("mesh").unwrap();
    let a = Mesh::start(SigningKey::from_bytes(&[81; 32]), tree(0), ZoneName::parse("a").unwrap(), config(vec![]))
        .await
        .unwrap();
    let mut boot = None;
    while boot.is_none() {
        boot = a.status().await.listen.iter().find(|l| l.contains("/tcp/")).cloned();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let boot: Multiaddr = format!("{}/p2p/{}", boot.unwrap(), a.peer_id()).parse().unwrap();
    let rogue_key = SigningKey::from_bytes(&[82; 32]);
    let rogue =
        Mesh::start(rogue_key.clone(), tree(1), ZoneName::parse("rogue").unwrap(), config(vec![boot])).await.unwrap();
    // Claims in a's name, signed by the rogue: every one a bad signature.
    let victim = SigningKey::from_bytes(&[81; 32]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    const FLOOD: u64 = 400;
    for i in 0..FLOOD {
        let forged = ZoneClaim {
            zone: ZoneName::parse(&format!("f{i}")).unwrap(),
            node: node_hex(&victim),
            addrs: vec![],
            seq: now,
            issued_at_ms: now,
            expires_at_ms: now + 3_600_000,
            first_claimed_at_ms: Some(now),
            handover: None,
        }
        .sign(&rogue_key);
        let _ = rogue.put_raw(&MeshRecord::Zone(forged)).await;
    }
    let mut counted = 0;
    for _ in 0..200 {
        counted = a.status().await.rejected.bad_signature;
        if counted >= FLOOD {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(counted, FLOOD, "every forged record counted, once");
    let logged = lines.0.load(Ordering::Relaxed);
    assert!((1..=4).contains(&logged), "{logged} log lines for {FLOOD} refusals");
}
