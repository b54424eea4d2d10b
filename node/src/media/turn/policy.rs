//! Which peers the relay may talk to. A TURN server relays on behalf of
//! anyone holding credentials, so without a policy it is an open door into
//! the node's own machine and its network:
//!
//! - loopback, link-local, unspecified, multicast, broadcast and reserved
//!   addresses are refused (loopback only unless `allow_loopback_peers`,
//!   which exists for tests and benchmarks on one machine);
//! - private ranges (RFC 1918, shared address space, ULA, …) are refused
//!   unless listed in `allowed_peer_ranges` (guifi.net: `10.0.0.0/8`);
//! - addresses of this machine are allowed only towards the node's own
//!   relay ports (two clients of this node relaying to each other), never
//!   its service ports (HTTPS, TURN, mesh) or anything else on the host.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// What kind of peer an allowed address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Another machine: any port.
    Remote,
    /// One of this machine's own addresses: only live relay ports of this
    /// server.
    ThisHost,
    /// Loopback, allowed by `allow_loopback_peers`: any port except the
    /// node's service ports.
    Loopback,
}

/// Why a peer address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// 127.0.0.0/8 or ::1.
    #[error("loopback peers are not relayed")]
    Loopback,
    /// 169.254.0.0/16 or fe80::/10.
    #[error("link-local peers are not relayed")]
    LinkLocal,
    /// Unspecified, multicast, broadcast or reserved.
    #[error("not a unicast peer address")]
    NotUnicast,
    /// A private range not in `allowed_peer_ranges`.
    #[error("private peer range not allowed by turn.allowed_peer_ranges")]
    Private,
    /// A port of this machine that is not a relay of this server.
    #[error("the node's own services are not relayed")]
    OwnService,
    /// The peer's address family differs from the relay's.
    #[error("peer address family differs from the relayed address")]
    Family,
}

/// The peer address policy.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    allowed: Vec<IpNet>,
    allow_loopback: bool,
}

/// `ip` with IPv4-mapped IPv6 addresses turned into IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn v4_class(ip: Ipv4Addr) -> Result<bool, Refusal> {
    let o = ip.octets();
    if ip.is_loopback() {
        return Err(Refusal::Loopback);
    }
    if ip.is_link_local() {
        return Err(Refusal::LinkLocal);
    }
    if o[0] == 0 || ip.is_multicast() || ip.is_broadcast() || o[0] >= 240 {
        return Err(Refusal::NotUnicast);
    }
    // Private: RFC 1918, shared address space (100.64/10), IETF protocol
    // assignments (192.0.0/24), benchmarking (198.18/15).
    let private = ip.is_private()
        || (o[0] == 100 && (o[1] & 0xC0) == 64)
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xFE) == 18);
    Ok(private)
}

fn v6_class(ip: Ipv6Addr) -> Result<bool, Refusal> {
    let s = ip.segments();
    if ip.is_loopback() {
        return Err(Refusal::Loopback);
    }
    if (s[0] & 0xFFC0) == 0xFE80 {
        return Err(Refusal::LinkLocal);
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(Refusal::NotUnicast);
    }
    // Unique local (fc00::/7) and the deprecated site-local (fec0::/10).
    Ok((s[0] & 0xFE00) == 0xFC00 || (s[0] & 0xFFC0) == 0xFEC0)
}

/// Whether `ip` is an address of this machine (binding to it succeeds).
pub fn is_this_host(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

impl PeerPolicy {
    /// A policy allowing the private `allowed` ranges (and loopback if
    /// `allow_loopback`).
    pub fn new(allowed: Vec<IpNet>, allow_loopback: bool) -> Self {
        Self { allowed, allow_loopback }
    }

    /// Whether the relay may create a permission for `ip`, and what kind of
    /// peer it is. `this_host` says whether an address belongs to this
    /// machine ([`is_this_host`] outside tests).
    pub fn classify(&self, ip: IpAddr, this_host: impl Fn(IpAddr) -> bool) -> Result<Peer, Refusal> {
        let ip = canonical(ip);
        let private = match ip {
            IpAddr::V4(v4) => v4_class(v4),
            IpAddr::V6(v6) => v6_class(v6),
        };
        let private = match private {
            Err(Refusal::Loopback) if self.allow_loopback => return Ok(Peer::Loopback),
            other => other?,
        };
        if this_host(ip) {
            return Ok(Peer::ThisHost);
        }
        if private && !self.allowed.iter().any(|net| net.contains(&ip)) {
            return Err(Refusal::Private);
        }
        Ok(Peer::Remote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn refuses_what_it_must() {
        let p = PeerPolicy::new(Vec::new(), false);
        let never = |_| false;
        for (addr, why) in [
            ("127.0.0.1", Refusal::Loopback),
            ("127.9.9.9", Refusal::Loopback),
            ("::1", Refusal::Loopback),
            ("::ffff:127.0.0.1", Refusal::Loopback),
            ("169.254.1.1", Refusal::LinkLocal),
            ("fe80::1", Refusal::LinkLocal),
            ("0.0.0.0", Refusal::NotUnicast),
            ("::", Refusal::NotUnicast),
            ("224.0.0.1", Refusal::NotUnicast),
            ("255.255.255.255", Refusal::NotUnicast),
            ("240.0.0.1", Refusal::NotUnicast),
            ("ff02::1", Refusal::NotUnicast),
            ("10.1.2.3", Refusal::Private),
            ("172.16.0.1", Refusal::Private),
            ("192.168.1.1", Refusal::Private),
            ("100.64.0.1", Refusal::Private),
            ("fd00::1", Refusal::Private),
        ] {
            assert_eq!(p.classify(ip(addr), never), Err(why), "{addr}");
        }
        for addr in ["8.8.8.8", "2001:db8::1", "::ffff:8.8.8.8", "172.32.0.1", "100.128.0.1"] {
            assert_eq!(p.classify(ip(addr), never), Ok(Peer::Remote), "{addr}");
        }
    }

    #[test]
    fn allowed_ranges_open_private_ranges_only() {
        let p = PeerPolicy::new(vec!["10.0.0.0/8".parse().expect("net"), "0.0.0.0/0".parse().expect("net")], false);
        let never = |_| false;
        assert_eq!(p.classify(ip("10.1.2.3"), never), Ok(Peer::Remote));
        assert_eq!(p.classify(ip("192.168.1.1"), never), Ok(Peer::Remote));
        // Loopback and link-local stay refused whatever the ranges say.
        assert_eq!(p.classify(ip("127.0.0.1"), never), Err(Refusal::Loopback));
        assert_eq!(p.classify(ip("169.254.1.1"), never), Err(Refusal::LinkLocal));
        let guifi = PeerPolicy::new(vec!["10.0.0.0/8".parse().expect("net")], false);
        assert_eq!(guifi.classify(ip("192.168.1.1"), never), Err(Refusal::Private));
    }

    #[test]
    fn this_host_and_loopback_kinds() {
        let p = PeerPolicy::new(Vec::new(), false);
        let me = ip("10.9.9.9");
        assert_eq!(p.classify(me, |a| a == me), Ok(Peer::ThisHost), "even in a private range not allowed");
        assert_eq!(p.classify(ip("203.0.113.5"), |a| a == ip("203.0.113.5")), Ok(Peer::ThisHost));
        let lo = PeerPolicy::new(Vec::new(), true);
        assert_eq!(lo.classify(ip("127.0.0.1"), |_| true), Ok(Peer::Loopback));
        assert_eq!(lo.classify(ip("169.254.0.1"), |_| false), Err(Refusal::LinkLocal));
        assert!(is_this_host(ip("127.0.0.1")));
        assert!(!is_this_host(ip("192.0.2.123")), "a documentation address is not ours");
    }
}
