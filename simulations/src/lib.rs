//! Load benchmarks of Xarxa zone nodes (and, later, seeded simulations of
//! many zones).
//!
//! The [`bench`] module drives a real `xarxa run` process on `127.0.0.1`
//! the way browsers do (HTTPS for accounts, one TLS WebSocket per device)
//! and measures what issue 3 asks for: call set-up latency, the time to
//! set up many concurrent calls, and the memory of a node holding many idle
//! sockets. The `xarxa-bench` binary runs it and records the figures.

pub mod bench;
pub mod sim;
