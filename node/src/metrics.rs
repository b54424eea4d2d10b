//! What `/metrics` reports, in the Prometheus (OpenMetrics) text format,
//! encoded with `prometheus-client`.
//!
//! Two kinds of figures. Events the node counts as they happen live in
//! [`Metrics`], which the calls service is given: calls by outcome and the
//! call set-up latency. Everything else already has an owner that counts
//! it (the switchboard, the mesh, TURN, the database), and is read from it
//! at scrape time into a [`Snapshot`]; [`encode`] writes both, so no
//! figure is kept twice and none can drift from what `xarxa status` and
//! `xarxa mesh status` show.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use signalling::{Outcome, Stats};

use crate::media::turn::TurnStats;

/// The content type of what [`encode`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A call's outcome, `outcome="…"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// One label for causes and states: `cause="…"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: String,
}

/// Counted as it happens, by the calls service.
#[derive(Clone, Debug)]
pub struct Metrics {
    calls: Family<OutcomeLabel, Counter>,
    setup: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        // 5 ms to ~82 s: a local call rings in milliseconds, one across a
        // lossy mesh in seconds.
        Self { calls: Family::default(), setup: Histogram::new(exponential_buckets(0.005, 2.0, 15)) }
    }
}

impl Metrics {
    /// A call ended, with this outcome (as its history entry says).
    pub fn call_finished(&self, outcome: Outcome) {
        let outcome = serde_json::to_value(outcome).ok().and_then(|v| v.as_str().map(str::to_owned));
        self.calls.get_or_create(&OutcomeLabel { outcome: outcome.unwrap_or_else(|| "unknown".into()) }).inc();
    }

    /// A call rang `took` after the caller asked for it.
    pub fn call_set_up(&self, took: Duration) {
        self.setup.observe(took.as_secs_f64());
    }
}

/// Figures read from their owners at scrape time.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// WebSocket connections open now.
    pub websockets: usize,
    /// The switchboard's counts.
    pub calls: Stats,
    /// Accounts.
    pub users: usize,
    /// Live sessions.
    pub sessions: usize,
    /// The database's size on disk, in bytes.
    pub database_bytes: u64,
    /// The mesh's status, if the mesh is on.
    pub mesh: Option<dht::MeshStatus>,
    /// TURN's counters, if TURN is on.
    pub turn: Option<TurnStats>,
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g = Gauge::<i64>::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// A counter family labelled by `cause`, from a serialised map of counts
/// (a struct of counters, or a map keyed by a cause).
fn counters_by<T: serde::Serialize>(registry: &mut Registry, name: &str, help: &str, counts: &T) {
    let family = Family::<Cause, Counter>::default();
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(counts) {
        for (cause, n) in map {
            family.get_or_create(&Cause { cause }).inc_by(n.as_u64().unwrap_or(0));
        }
    }
    registry.register(name, help, family);
}

/// Writes every metric: the live ones of `live` and the figures of `snap`.
pub fn encode(live: &Metrics, snap: &Snapshot) -> String {
    let mut r = Registry::with_prefix("xarxa");
    r.register("calls", "Calls ended, by outcome (as in the history).", live.calls.clone());
    r.register(
        "call_setup_seconds",
        "Time from a caller's call request to the callee's devices ringing.",
        live.setup.clone(),
    );
    gauge(&mut r, "websockets", "WebSocket connections open.", snap.websockets as u64);
    gauge(&mut r, "devices", "Devices online or in their grace period.", snap.calls.devices as u64);
    gauge(&mut r, "calls_ringing", "Calls ringing now.", snap.calls.ringing as u64);
    gauge(&mut r, "calls_connected", "Calls connected now.", snap.calls.connected as u64);
    gauge(&mut r, "users", "Accounts on this node.", snap.users as u64);
    gauge(&mut r, "sessions", "Live sessions.", snap.sessions as u64);
    gauge(&mut r, "database_bytes", "Size of the database on disk.", snap.database_bytes);
    if let Some(m) = &snap.mesh {
        let held = matches!(m.claim, dht::ClaimState::Held);
        gauge(&mut r, "mesh_claim_held", "1 when this node holds its zone's claim.", u64::from(held));
        gauge(&mut r, "mesh_peers", "Mesh peers connected.", m.peers.len() as u64);
        gauge(&mut r, "mesh_relayed_peers", "Mesh peers reached through a relay.", m.relayed_peers.len() as u64);
        gauge(&mut r, "mesh_routing_table", "Peers in the Kademlia routing table.", m.routing_table as u64);
        gauge(&mut r, "mesh_records_stored", "Mesh records in the local store.", m.stored_records as u64);
        counters_by(&mut r, "mesh_records_rejected", "Mesh records refused, by cause.", &m.rejected);
        counter(&mut r, "mesh_delivered", "Requests delivered to other nodes.", m.delivered);
        counter(&mut r, "mesh_failed_deliveries", "Requests to other nodes that failed.", m.failed_deliveries);
        counter(&mut r, "mesh_lookups", "Mesh lookups made.", m.lookups);
        counter(&mut r, "mesh_failed_lookups", "Mesh lookups that found nothing.", m.failed_lookups);
        counters_by(&mut r, "mesh_refused_requests", "Other nodes' requests refused, by cause.", &m.refused_requests);
        counters_by(&mut r, "mesh_refused_peers", "Peers kept out of the routing table, by cause.", &m.refused_peers);
    }
    if let Some(t) = &snap.turn {
        gauge(&mut r, "turn_allocations", "TURN allocations live.", t.allocations as u64);
        counter(&mut r, "turn_allocated", "TURN allocations granted.", t.allocated);
        counter(&mut r, "turn_bytes_to_peers", "Payload bytes relayed from clients to peers.", t.bytes_to_peers);
        counter(&mut r, "turn_bytes_to_clients", "Payload bytes relayed from peers to clients.", t.bytes_to_clients);
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_and_read_figures_are_written() {
        let live = Metrics::default();
        live.call_finished(Outcome::NoAnswer);
        live.call_finished(Outcome::NoAnswer);
        live.call_set_up(Duration::from_millis(12));
        let snap = Snapshot { websockets: 3, users: 2, database_bytes: 4096, ..Snapshot::default() };
        let text = encode(&live, &snap);
        assert!(text.contains("xarxa_calls_total{outcome=\"no_answer\"} 2"), "{text}");
        assert!(text.contains("xarxa_call_setup_seconds_count 1"), "{text}");
        assert!(text.contains("xarxa_websockets 3"), "{text}");
        assert!(text.contains("xarxa_database_bytes 4096"), "{text}");
        assert!(!text.contains("xarxa_mesh_"), "no mesh, no mesh figures: {text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
