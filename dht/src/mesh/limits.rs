//! Limits the mesh applies to what others send it: token buckets per key
//! (requests per peer, new zone names per peer and per address), and a
//! limiter that keeps refusals from growing the log at an attacker's will.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::core::Multiaddr;
use libp2p::multiaddr::Protocol;

/// Keys whose buckets are tracked; past that, the full (idle) ones are
/// forgotten.
const MAX_TRACKED: usize = 4096;

/// One token bucket per key: `burst` at once, refilled at `per_second`.
#[derive(Debug)]
pub(crate) struct RateLimits<K> {
    per_second: f64,
    burst: f64,
    buckets: HashMap<K, (f64, Instant)>,
}

impl<K: Hash + Eq + Clone> RateLimits<K> {
    /// Buckets of `burst` tokens refilled at `per_second`.
    pub(crate) fn new(per_second: f64, burst: f64) -> Self {
        Self { per_second, burst: burst.max(1.0), buckets: HashMap::new() }
    }

    /// Buckets of twice `n` tokens refilled at `n` per `hour` (seconds of
    /// wall-clock time an hour of protocol time takes).
    pub(crate) fn per_hour(n: u32, hour: f64) -> Self {
        Self::new(f64::from(n) / hour, 2.0 * f64::from(n))
    }

    /// Takes one token of `key`'s bucket; whether there was one.
    pub(crate) fn allow(&mut self, key: &K, now: Instant) -> bool {
        let (rate, burst) = (self.per_second, self.burst);
        let refilled =
            |(tokens, at): &(f64, Instant)| (tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(key) {
            self.buckets.retain(|_, b| refilled(b) < burst);
            // Every one still spending: start afresh rather than grow (the
            // limits are then lenient for a moment, never unbounded).
            if self.buckets.len() >= MAX_TRACKED {
                self.buckets.clear();
            }
        }
        let bucket = self.buckets.entry(key.clone()).or_insert((burst, now));
        let tokens = refilled(bucket);
        if tokens < 1.0 {
            *bucket = (tokens, now);
            return false;
        }
        *bucket = (tokens - 1.0, now);
        true
    }

    /// How many keys are tracked.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// Lets through one log line per kind of refusal per interval, and says
/// how many were held back in between; the counters stay exact anyway.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    every: Duration,
    kinds: HashMap<&'static str, (Instant, u64)>,
}

impl LogLimiter {
    /// One line per kind per `every`.
    pub(crate) fn new(every: Duration) -> Self {
        Self { every, kinds: HashMap::new() }
    }

    /// Whether a line of `kind` may be logged now: `Some(n)` with the
    /// lines of that kind held back since the last one, or `None`.
    pub(crate) fn allow(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        match self.kinds.get_mut(kind) {
            Some((last, held)) if now.duration_since(*last) < self.every => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                self.kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

/// The network an address is in, for limits per address: the /24 of an
/// IPv4 address, the /48 of an IPv6 one. `None` for loopback and
/// unspecified addresses and for the simulator's memory addresses (one
/// machine's own nodes are not a crowd).
#[cfg(test)]
pub(crate) fn prefix_of(addr: &Multiaddr) -> Option<IpAddr> {
    ip_of(addr).and_then(prefix_of_ip)
}

/// [`prefix_of`] for an IP address.
pub(crate) fn prefix_of_ip(ip: IpAddr) -> Option<IpAddr> {
    if ip.is_loopback() || ip.is_unspecified() {
        return None;
    }
    Some(match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], 0, 0, 0, 0, 0])
        }
    })
}

/// The IP address an address names (loopback included), for limits per
/// source address. IPv6 addresses are cut to their /64: one host has a
/// whole /64 to pick addresses from.
pub(crate) fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => {
            let s = ip.segments();
            Some(IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0]))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_its_rate() {
        let mut r = RateLimits::new(10.0, 20.0);
        let (t0, a, b) = (Instant::now(), 1u8, 2u8);
        assert_eq!((0..25).filter(|_| r.allow(&a, t0)).count(), 20, "a burst");
        assert!(r.allow(&b, t0), "another key has its own share");
        assert!(!r.allow(&a, t0 + Duration::from_millis(50)));
        assert!(r.allow(&a, t0 + Duration::from_millis(150)), "a tenth of a second refills one");
    }

    #[test]
    fn idle_keys_are_forgotten_when_too_many_are_tracked() {
        let mut r = RateLimits::new(1.0, 2.0);
        let t0 = Instant::now();
        for k in 0..MAX_TRACKED {
            r.allow(&k, t0);
        }
        assert!(r.allow(&usize::MAX, t0 + Duration::from_secs(10)));
        assert_eq!(r.tracked(), 1, "every idle bucket had refilled, and went");
    }

    #[test]
    fn one_line_per_kind_per_interval_with_what_was_held_back() {
        let mut l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(l.allow("bad_signature", t0), Some(0));
        for _ in 0..99 {
            assert_eq!(l.allow("bad_signature", t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(l.allow("expired", t0 + Duration::from_secs(1)), Some(0), "kinds are apart");
        assert_eq!(l.allow("bad_signature", t0 + Duration::from_secs(11)), Some(99));
    }

    #[test]
    fn prefixes_group_a_network_and_spare_loopback() {
        let a: Multiaddr = "/ip4/10.1.2.3/tcp/7447".parse().unwrap_or_else(|e| panic!("{e}"));
        let b: Multiaddr = "/ip4/10.1.2.200/udp/7447/quic-v1".parse().unwrap_or_else(|e| panic!("{e}"));
        let c: Multiaddr = "/ip4/10.1.3.3/tcp/7447".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prefix_of(&a), prefix_of(&b));
        assert_ne!(prefix_of(&a), prefix_of(&c));
        let lo: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prefix_of(&lo), None);
        assert!(ip_of(&lo).is_some());
        let v6: Multiaddr = "/ip6/2001:db8:1:2::5/tcp/1".parse().unwrap_or_else(|e| panic!("{e}"));
        let v6b: Multiaddr = "/ip6/2001:db8:1:ffff::9/tcp/1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prefix_of(&v6), prefix_of(&v6b));
        let mem: Multiaddr = "/memory/5".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prefix_of(&mem), None);
    }
}
