//! Cross-zone call set-up on a real 5-node mesh on loopback: the time from
//! the caller's `call` frame to the callee device's `incoming` frame, for a
//! callee never called before (cold: one DHT lookup of the user record, the
//! zone claims already cached) and for one called before (warm: the route
//! is cached, one direct message).
//!
//! `cargo run --release -p xarxa-simulations --bin xarxa-mesh-bench -- --cold 100 --warm 500`

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use signalling::{EndReason, NodeToClient};
use xarxa_simulations::bench::stats::Summary;
use xarxa_tests::{Device, Node, AUDIO, WAIT};

/// Cross-zone offer-to-ringing latency on a 5-node loopback mesh.
#[derive(Parser)]
struct Args {
    /// Callees called once each (cold lookups), spread over 4 zones.
    #[arg(long, default_value_t = 100)]
    cold: usize,
    /// Calls to already-resolved callees (warm).
    #[arg(long, default_value_t = 500)]
    warm: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Places one call and measures until the callee's device rings, then
/// cancels it and waits until the callee hears the end.
async fn one(caller: &mut Device, callee: &mut Device, to: &str) -> Result<Duration> {
    let t0 = Instant::now();
    let call = caller.call_with(to, AUDIO).await?;
    let ev = callee
        .expect_event("incoming", WAIT, |e| matches!(e, NodeToClient::Incoming { .. }))
        .await
        .with_context(|| format!("calling {to}"))?;
    let rang = t0.elapsed();
    let NodeToClient::Incoming { call: c, .. } = ev else { bail!("not incoming") };
    if c != call {
        bail!("rang for another call");
    }
    caller.hangup(&call).await?;
    callee.expect_ended(&call, EndReason::Cancelled, WAIT).await?;
    caller.drain_events();
    Ok(rang)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let quiet = [
        ("XARXA_LOG", "warn"),
        ("XARXA_LIMITS__WS_MESSAGES_PER_SECOND", "10000"),
        ("XARXA_LIMITS__REGISTRATIONS_PER_ADDRESS", "100000"),
    ];
    let z0 = Node::start("z0", &quiet)?;
    let boot = format!("[\"{}\"]", z0.info().mesh.first().context("mesh address")?);
    let mut zones = vec![];
    for i in 1..5 {
        let mut env = quiet.to_vec();
        env.push(("XARXA_MESH__BOOTSTRAP", boot.as_str()));
        zones.push(Node::start(&format!("z{i}"), &env)?);
    }
    let caller_user = z0.user("caller").await?;
    let mut caller = z0.device(&caller_user.token, "caller").await?;
    let per_zone = args.cold.div_ceil(4).max(1);
    let mut callees = Vec::new();
    for (zi, z) in zones.iter().enumerate() {
        for k in 0..per_zone {
            let u = z.user(&format!("c{zi}x{k}")).await?;
            let d = z.device(&u.token, &u.address).await?;
            callees.push((u.address.clone(), d));
        }
    }
    // Let records propagate, and cache each zone's claim with one call to a
    // user set aside for it, so "cold" measures the user lookup itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for z in &zones {
        let warmup = z.user("warmup").await?;
        let mut d = z.device(&warmup.token, "warmup").await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while one(&mut caller, &mut d, &warmup.address).await.is_err() {
            if Instant::now() > deadline {
                bail!("{} never became reachable", z.zone());
            }
            caller.drain_events();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let mut cold = Vec::new();
    for (to, d) in callees.iter_mut().take(args.cold) {
        cold.push(one(&mut caller, d, to).await?);
    }
    let mut warm = Vec::new();
    let n = callees.len().min(args.cold).max(1);
    for i in 0..args.warm {
        let (to, d) = &mut callees[i % n];
        warm.push(one(&mut caller, d, to).await?);
    }
    let (c, w) = (Summary::of(&cold), Summary::of(&warm));
    println!("cross-zone offer-to-ringing on a 5-node loopback mesh (ms)");
    println!("{:<6} {:>6} {:>8} {:>8} {:>8} {:>8}", "", "n", "p50", "p90", "p99", "max");
    for (name, s) in [("cold", c), ("warm", w)] {
        println!("{name:<6} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2}", s.n, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms);
    }
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&serde_json::json!({"cold": c, "warm": w}))?)?;
    }
    Ok(())
}
