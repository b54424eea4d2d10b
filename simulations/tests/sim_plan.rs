//! The simulator's plans are reproducible: the same seed gives the same
//! topology and workload (the same digest), another seed another; every
//! shipped scenario parses and plans.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use xarxa_simulations::sim::plan::Action;
use xarxa_simulations::sim::{Plan, Scenario};

fn scenario(name: &str) -> Scenario {
    Scenario::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(name)).unwrap()
}

#[test]
fn same_seed_same_topology_and_workload() {
    for name in ["smoke.toml", "churn-1000.toml", "partition-1000.toml", "nat-200.toml"] {
        let s = scenario(name);
        let (a, b) = (Plan::new(&s), Plan::new(&s));
        assert_eq!(a, b, "{name}: two plans from one seed differ");
        assert_eq!(a.digest(), b.digest());
        let mut other = s.clone();
        other.seed += 1;
        assert_ne!(Plan::new(&other).digest(), a.digest(), "{name}: another seed gave the same plan");
    }
}

#[test]
fn every_shipped_scenario_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!Plan::new(&s).actions.is_empty());
            n += 1;
        }
    }
    assert!(n >= 5);
}

#[test]
fn plans_have_what_the_scenarios_ask_for() {
    let churn = Plan::new(&scenario("churn-1000.toml"));
    let leaves = churn.actions.iter().filter(|a| matches!(a.action, Action::Leave { .. })).count();
    assert_eq!(leaves, 200, "20% of 1000 nodes leave");
    assert!(churn.nodes.len() > 1000, "replacements join");
    assert!(churn.actions.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    let part = Plan::new(&scenario("partition-1000.toml"));
    let far = part.actions.iter().find_map(|a| match &a.action {
        Action::Partition { far } => Some(far.len()),
        _ => None,
    });
    assert!(far.is_some_and(|f| (200..=400).contains(&f)), "a subtree of about 30%: {far:?}");
    let nat = Plan::new(&scenario("nat-200.toml"));
    let behind = nat.nodes.iter().filter(|n| n.nat).count();
    assert!((10..=50).contains(&behind), "about 15% behind NAT: {behind}");
    assert!(nat.nodes.iter().filter(|n| n.nat).all(|n| n.via.is_some_and(|r| nat.nodes[r].relay)));
    // Workload targets are live, aged users on other nodes.
    let smoke = Plan::new(&scenario("smoke.toml"));
    let (lookups, calls) = smoke.operations();
    assert!(lookups > 200 && calls > 50, "{lookups} lookups, {calls} calls");
    for a in &smoke.actions {
        if let Action::Lookup { from, target, .. } = &a.action {
            assert_ne!(*from, target.node);
        }
    }
}
