//! What an allocation grants: its permissions and channels, its
//! bandwidth bucket, and the ports of this machine that may (or may not)
//! be relayed to.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{PoisonError, RwLock};
use std::time::Instant;

use super::policy::Peer;

/// Ports of this machine: the node's services (never relayed to) and the
/// live relay ports of this server (the only ports of this machine that
/// are relayed to).
#[derive(Debug, Default)]
pub(crate) struct HostPorts {
    pub(crate) service: RwLock<HashSet<u16>>,
    pub(super) relays: RwLock<HashSet<u16>>,
}

impl HostPorts {
    /// Whether a peer of `kind` may be reached (or heard) on `port`.
    pub(super) fn port_ok(&self, kind: Peer, port: u16) -> bool {
        let service = || self.service.read().unwrap_or_else(PoisonError::into_inner).contains(&port);
        match kind {
            Peer::Remote => port != 0,
            Peer::Loopback => port != 0 && !service(),
            Peer::ThisHost => !service() && self.relays.read().unwrap_or_else(PoisonError::into_inner).contains(&port),
        }
    }
}

/// A token bucket in bytes.
#[derive(Debug)]
pub(super) struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    pub(super) fn new(bytes_per_second: u64, now: Instant) -> Self {
        let rate = bytes_per_second as f64;
        // Half a second of traffic (at least 64 KiB) may come at once, for
        // key frames.
        let burst = (rate / 2.0).max(64.0 * 1024.0);
        Self { tokens: burst, rate, burst, last: now }
    }

    pub(super) fn take(&mut self, n: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= n as f64 {
            self.tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Permission {
    pub(super) expires: Instant,
    pub(super) kind: Peer,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Channel {
    pub(super) peer: SocketAddr,
    pub(super) expires: Instant,
    pub(super) kind: Peer,
}

/// What the two tasks of an allocation share.
#[derive(Debug)]
pub(super) struct Peers {
    pub(super) permissions: HashMap<IpAddr, Permission>,
    pub(super) channels: HashMap<u16, Channel>,
    pub(super) by_peer: HashMap<SocketAddr, u16>,
    pub(super) bucket: Bucket,
}

impl Peers {
    /// The kind of `peer` if a live permission covers it.
    pub(super) fn permitted(&self, peer: SocketAddr, now: Instant) -> Option<Peer> {
        self.permissions.get(&peer.ip()).filter(|p| p.expires >= now).map(|p| p.kind)
    }

    pub(super) fn purge(&mut self, now: Instant) {
        self.permissions.retain(|_, p| p.expires >= now);
        self.channels.retain(|_, c| c.expires >= now);
        let channels = &self.channels;
        self.by_peer.retain(|_, n| channels.contains_key(n));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::PoisonError;
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn own_ports_are_never_peers() {
        let host = HostPorts::default();
        host.service.write().unwrap_or_else(PoisonError::into_inner).extend([3478, 8443, 7447]);
        host.relays.write().unwrap_or_else(PoisonError::into_inner).insert(50000);
        // Another machine: any port but 0.
        assert!(host.port_ok(Peer::Remote, 3478) && !host.port_ok(Peer::Remote, 0));
        // This machine: only live relay ports.
        assert!(host.port_ok(Peer::ThisHost, 50000));
        for port in [3478, 8443, 7447, 22, 50001] {
            assert!(!host.port_ok(Peer::ThisHost, port), "{port}");
        }
        // Loopback (tests, benchmarks): anything but the service ports.
        assert!(host.port_ok(Peer::Loopback, 50000) && host.port_ok(Peer::Loopback, 4000));
        for port in [0, 3478, 8443, 7447] {
            assert!(!host.port_ok(Peer::Loopback, port), "{port}");
        }
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(8_000, t0);
        let mut passed = 0;
        while b.take(1000, t0) {
            passed += 1;
        }
        assert_eq!(passed, 65, "a 64 KiB burst");
        // 536 bytes left, then 8 bytes per millisecond.
        assert!(!b.take(1000, t0 + Duration::from_millis(50)), "936 bytes of credit after 50 ms");
        assert!(b.take(1000, t0 + Duration::from_millis(100)), "1336 bytes of credit after 100 ms");
        // Credit never exceeds the burst.
        let later = t0 + Duration::from_secs(3600);
        let mut passed = 0;
        while b.take(1000, later) {
            passed += 1;
        }
        assert!(passed <= 66, "{passed}");
    }
}
