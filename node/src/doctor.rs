//! `xarxa doctor`: checks a volunteer can run when something is off, each
//! with what to do about it.
//!
//! Two halves: [`local`] runs in the command itself (the certificate, the
//! ports, whether STUN answers); [`in_node`] runs inside the running node,
//! asked over the admin socket, because it needs the node's mesh: whether
//! it holds its zone's claim, how far its clock is from its peers', and
//! whether a peer can open a new connection to it (the mesh's `node`
//! service's dial-back, which dials only the addresses of this zone's
//! signed claim).

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use signalling::service::{NodeAnswer, NodeQuery, NodeService};

use crate::config::Config;
use crate::services::accounts::now_ms;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but should be seen to.
    Warn,
    /// Broken.
    Fail,
}

/// One check's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// How it came out.
    pub level: Level,
    /// What was found.
    pub detail: String,
    /// What to do, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: &str, level: Level, detail: impl Into<String>, fix: Option<&str>) -> Check {
    Check { name: name.into(), level, detail: detail.into(), fix: fix.map(str::to_owned) }
}

/// Peers asked for their clocks.
const CLOCK_PEERS: usize = 8;
/// A clock this far from a peer's is worth a warning; records allow
/// [`dht::record::MAX_SKEW_MS`].
const CLOCK_WARN_MS: f64 = 30_000.0;
/// A certificate expiring sooner than this is worth a warning.
const CERT_WARN_DAYS: i64 = 30;

/// The checks that need no running node: the certificate and, with
/// `running` false, whether the ports are free; with `running` true,
/// whether the HTTPS port takes connections and STUN answers.
pub async fn local(config: &Config, running: bool) -> Vec<Check> {
    let mut out = vec![certificate(config)];
    // Where the running node listens, as it wrote (flags and variables may
    // have moved it from the file's addresses).
    let info: Option<crate::server::RunInfo> = std::fs::read(config.data_dir.join("node.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|_| running);
    let http = loopback_for(info.as_ref().map_or(config.http.listen, |i| i.https));
    if running {
        out.push(match tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(http)).await {
            Ok(Ok(_)) => check("https port", Level::Ok, format!("{http} takes connections"), None),
            _ => check(
                "https port",
                Level::Fail,
                format!("{http} does not take connections"),
                Some("see the node's log (journalctl -u xarxa); http.listen in the config"),
            ),
        });
        if config.turn.enabled {
            out.push(stun(loopback_for(info.as_ref().and_then(|i| i.turn).unwrap_or(config.turn.listen))).await);
        }
    } else {
        out.push(free_port("https port", config.http.listen, false));
        if config.turn.enabled {
            out.push(free_port("stun/turn port", config.turn.listen, true));
        }
    }
    out
}

/// The address to reach a listener at from this machine.
fn loopback_for(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], listen.port())),
        IpAddr::V6(v6) if v6.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, listen.port())),
        _ => listen,
    }
}

fn free_port(name: &str, addr: SocketAddr, udp: bool) -> Check {
    let bound = if udp { UdpSocket::bind(addr).map(drop) } else { std::net::TcpListener::bind(addr).map(drop) };
    match bound {
        Ok(()) => check(name, Level::Ok, format!("{addr} is free for the node"), None),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => check(
            name,
            Level::Fail,
            format!("{addr} is in use by another program"),
            Some("stop that program (ss -lntup shows it), or choose another port in the config"),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => check(
            name,
            Level::Fail,
            format!("{addr}: binding needs a privilege"),
            Some("ports below 1024 need CAP_NET_BIND_SERVICE (the packaged unit grants it)"),
        ),
        Err(e) => check(name, Level::Fail, format!("{addr}: {e}"), Some("check the address in the config")),
    }
}

/// A STUN Binding request to the node's own STUN/TURN port.
async fn stun(addr: SocketAddr) -> Check {
    use crate::media::turn::wire::{method, Builder, Class, Message};
    let fail = |why: String| {
        check("stun/turn", Level::Fail, why, Some("see the node's log; turn.listen in the config; the firewall"))
    };
    let local: SocketAddr =
        if addr.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { (std::net::Ipv6Addr::UNSPECIFIED, 0).into() };
    let Ok(sock) = tokio::net::UdpSocket::bind(local).await else { return fail("no UDP socket".into()) };
    let txn: [u8; 12] = rand::random();
    let mut buf = Vec::new();
    Builder::new(&mut buf, method::BINDING, Class::Request, txn).fingerprint();
    for _ in 0..3 {
        if sock.send_to(&buf, addr).await.is_err() {
            return fail(format!("cannot send to {addr}"));
        }
        let mut answer = [0u8; 1500];
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut answer)).await {
            if let Ok(m) = Message::parse(&answer[..n]) {
                if m.txn == txn && m.class == Class::Success {
                    let mapped = m.xor_addr(crate::media::turn::wire::attr::XOR_MAPPED_ADDRESS).ok().flatten();
                    let seen = mapped.map_or_else(|| "?".into(), |a| a.to_string());
                    return check(
                        "stun/turn",
                        Level::Ok,
                        format!("{addr} answers STUN (sees this machine as {seen})"),
                        None,
                    );
                }
            }
        }
    }
    fail(format!("{addr} did not answer a STUN request"))
}

/// The certificate: present, parseable, not expired, not expiring soon.
fn certificate(config: &Config) -> Check {
    use rustls::pki_types::pem::PemObject;
    let path = config.tls.cert.clone().unwrap_or_else(|| config.data_dir.join("tls").join("cert.pem"));
    let der = match rustls::pki_types::CertificateDer::pem_file_iter(&path).map(|mut i| i.next()) {
        Ok(Some(Ok(der))) => der,
        _ if config.tls.cert.is_none() && !path.exists() => {
            return check(
                "certificate",
                Level::Ok,
                "none yet: the node makes a self-signed one at its first start",
                None,
            )
        }
        _ => {
            return check(
                "certificate",
                Level::Fail,
                format!("{} holds no certificate", path.display()),
                Some("fix tls.cert, or remove it (and tls.key) to use a self-signed one"),
            )
        }
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return check("certificate", Level::Fail, format!("{} does not parse", path.display()), None);
    };
    let left_s = cert.validity().not_after.timestamp() - (now_ms() / 1000) as i64;
    let days = left_s / 86_400;
    let fingerprint = crate::setup::fingerprint(&path).unwrap_or_default();
    let ends = cert.validity().not_after.to_string();
    if left_s <= 0 {
        let fix = if config.tls.cert.is_some() {
            "renew the certificate tls.cert names"
        } else {
            "remove the data directory's tls/ and restart: the node makes a new one (people then check its new fingerprint)"
        };
        return check("certificate", Level::Fail, format!("expired on {ends}"), Some(fix));
    }
    let level = if days < CERT_WARN_DAYS { Level::Warn } else { Level::Ok };
    let fix = (level == Level::Warn).then_some("renew it before it expires");
    check("certificate", level, format!("valid until {ends} ({days} days); SHA-256 {fingerprint}"), fix)
}

/// The checks that need the running node's mesh (`None`: disabled).
pub async fn in_node(mesh: Option<&dht::Mesh>) -> Vec<Check> {
    let Some(mesh) = mesh else {
        return vec![check("mesh", Level::Ok, "disabled (mesh.enabled = false): a lone zone", None)];
    };
    let status = mesh.status().await;
    let mut out = vec![match &status.claim {
        dht::ClaimState::Held => {
            check("zone claim", Level::Ok, format!("zone {} is held by this node", status.zone), None)
        }
        dht::ClaimState::Pending => check(
            "zone claim",
            Level::Warn,
            "not published yet: no other zone reached",
            Some("set mesh.bootstrap to another zone's mesh address, or check that mDNS reaches the neighbours"),
        ),
        dht::ClaimState::Taken { by } => check(
            "zone claim",
            Level::Fail,
            format!("zone {} is held by another node ({by})", status.zone),
            Some("choose another zone name (xarxa setup), or hand the zone over from its old key"),
        ),
    }];
    let peers: Vec<dht::mesh::PeerId> = status.peers.iter().filter_map(|p| p.parse().ok()).collect();
    if peers.is_empty() {
        out.push(check(
            "mesh peers",
            Level::Warn,
            "none connected",
            Some("set mesh.bootstrap, open the mesh port (TCP/UDP 7447) in the firewall"),
        ));
        return out;
    }
    out.push(check("mesh peers", Level::Ok, format!("{} connected", peers.len()), None));
    out.push(clocks(mesh, &peers).await);
    out.push(dial_back(mesh, &peers).await);
    out
}

/// The clock offsets to up to [`CLOCK_PEERS`] peers.
async fn clocks(mesh: &dht::Mesh, peers: &[dht::mesh::PeerId]) -> Check {
    let asks = peers.iter().take(CLOCK_PEERS).map(|p| async move {
        let sent = now_ms() as f64;
        let started = std::time::Instant::now();
        match mesh.request::<NodeService>(*p, Vec::new(), None, &NodeQuery::Ping).await {
            Ok(NodeAnswer::Pong { wall_ms, .. }) => {
                Some(wall_ms as f64 - (sent + started.elapsed().as_secs_f64() * 500.0))
            }
            _ => None,
        }
    });
    let offsets: Vec<f64> = futures_util::future::join_all(asks).await.into_iter().flatten().collect();
    if offsets.is_empty() {
        return check("clock", Level::Warn, "no peer answered a ping", None);
    }
    let worst = offsets.iter().copied().fold(0.0f64, |a, b| if b.abs() > a.abs() { b } else { a });
    let detail = format!("largest offset from {} peers: {:+.0} ms", offsets.len(), worst);
    let max = dht::record::MAX_SKEW_MS as f64;
    if worst.abs() > max * 0.8 {
        check(
            "clock",
            Level::Fail,
            detail,
            Some("the mesh refuses records this far off: set up NTP (apt install systemd-timesyncd)"),
        )
    } else if worst.abs() > CLOCK_WARN_MS {
        check("clock", Level::Warn, detail, Some("set up NTP (apt install systemd-timesyncd)"))
    } else {
        check("clock", Level::Ok, detail, None)
    }
}

/// Asks peers, one after another until one answers, to dial this node back.
async fn dial_back(mesh: &dht::Mesh, peers: &[dht::mesh::PeerId]) -> Check {
    for p in peers.iter().take(3) {
        if let Ok(NodeAnswer::DialedBack { reached, unreachable }) =
            mesh.request::<NodeService>(*p, Vec::new(), None, &NodeQuery::DialBack).await
        {
            return match (reached.is_empty(), unreachable.is_empty()) {
                (false, true) => {
                    check("dial-back", Level::Ok, format!("a peer ({p}) reached {}", reached.join(", ")), None)
                }
                (false, false) => check(
                    "dial-back",
                    Level::Warn,
                    format!("a peer ({p}) reached {} but not {}", reached.join(", "), unreachable.join(", ")),
                    Some("an address the node advertises is not reachable: mesh.external, or the firewall"),
                ),
                (true, false) => check(
                    "dial-back",
                    Level::Fail,
                    format!("a peer ({p}) reached none of {}", unreachable.join(", ")),
                    Some("open the mesh port (TCP 7447) in the firewall, or use mesh.relays if behind NAT"),
                ),
                (true, true) => check(
                    "dial-back",
                    Level::Warn,
                    format!("the peer ({p}) sees this node at an address its claim does not list"),
                    Some("set mesh.external to the address other zones reach this machine at"),
                ),
            };
        }
    }
    check("dial-back", Level::Warn, "no peer answered a dial-back request", None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cert(days_left: i64) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().expect("tmp");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(400);
        params.not_after = now + time::Duration::days(days_left);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        std::fs::create_dir_all(dir.path().join("tls")).expect("dir");
        std::fs::write(dir.path().join("tls/cert.pem"), cert.pem()).expect("write");
        let config = Config { data_dir: dir.path().to_owned(), ..Config::default() };
        (dir, config)
    }

    #[test]
    fn a_certificate_is_judged_by_its_expiry() {
        for (days, level) in [(365, Level::Ok), (10, Level::Warn), (-1, Level::Fail)] {
            let (_dir, config) = with_cert(days);
            let c = certificate(&config);
            assert_eq!(c.level, level, "{days} days: {c:?}");
            assert_eq!(c.fix.is_some(), level != Level::Ok);
        }
    }
}
