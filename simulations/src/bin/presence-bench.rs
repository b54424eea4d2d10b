//! Presence fan-out on a real 5-node mesh on loopback: one user with
//! `--contacts` accepted contacts spread evenly over the 5 zones (her own
//! included), each contact with a connected device (a simulated client: a
//! real WebSocket in this process). Each round she changes her status over
//! `PUT /api/v1/presence`; the figure is the time from that request to
//! each contact's device receiving the `presence` frame, over every
//! delivery of the round. Her node sends one update per remote zone; each
//! zone's node fans it out to its users.
//!
//! `cargo run --release -p xarxa-simulations --bin presence-bench -- --contacts 1000 --rounds 10`

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures_util::stream::{FuturesUnordered, StreamExt};
use signalling::contacts::PresenceState;
use signalling::NodeToClient;
use xarxa_simulations::bench::stats::Summary;
use xarxa_tests::{Device, Node, User, WAIT};

/// Presence change to N contacts over 5 zones.
#[derive(Parser)]
struct Args {
    /// Contacts of the user whose presence changes, spread over 5 zones.
    #[arg(long, default_value_t = 1000)]
    contacts: usize,
    /// Presence changes measured.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

const ZONES: usize = 5;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut nodes = Vec::new();
    let result = run(&args, &mut nodes).await;
    if result.is_err() {
        for n in &nodes {
            eprintln!("--- {} ---\n{}", n.zone(), n.log_tail(40));
        }
    }
    result
}

async fn run(args: &Args, nodes: &mut Vec<Node>) -> Result<()> {
    let env = [
        ("XARXA_LOG", "warn"),
        ("XARXA_LIMITS__WS_MESSAGES_PER_SECOND", "10000"),
        ("XARXA_LIMITS__REGISTRATIONS_PER_ADDRESS", "1000000"),
        ("XARXA_LIMITS__MAX_PENDING_CONTACT_REQUESTS", "100000"),
        ("XARXA_LIMITS__MAX_CONTACTS_PER_USER", "100000"),
        ("XARXA_LIMITS__MAX_SESSIONS_PER_USER", "10"),
        ("XARXA_MESH__REPUBLISH", "5s"),
    ];
    let z0 = Node::start("z0", &env)?;
    let boot = format!("[\"{}\"]", z0.info().mesh.first().context("mesh address")?);
    nodes.push(z0);
    for i in 1..ZONES {
        let mut e = env.to_vec();
        e.push(("XARXA_MESH__BOOTSTRAP", boot.as_str()));
        nodes.push(Node::start(&format!("z{i}"), &e)?);
    }
    let center = nodes[0].user("center").await?;
    let mut center_dev = nodes[0].device(&center.token, "center").await?;
    let t = Instant::now();
    let mut contacts: Vec<(usize, User)> = Vec::new();
    let per_zone = args.contacts.div_ceil(ZONES);
    for (zi, node) in nodes.iter().enumerate() {
        let names: Vec<String> = (0..per_zone).map(|k| format!("p{zi}x{k}")).collect();
        for chunk in names.chunks(50) {
            let made = futures_util::future::try_join_all(chunk.iter().map(|n| node.user(n))).await?;
            contacts.extend(made.into_iter().map(|u| (zi, u)));
        }
    }
    contacts.truncate(args.contacts);
    eprintln!("{} users in {:.1} s", contacts.len(), t.elapsed().as_secs_f64());
    // Each asks the center; she accepts each.
    let t = Instant::now();
    for chunk in contacts.chunks(25) {
        futures_util::future::try_join_all(
            chunk.iter().map(|(zi, u)| nodes[*zi].ask_contact_when_reachable(&u.token, &center.address)),
        )
        .await?;
        futures_util::future::try_join_all(
            chunk
                .iter()
                .map(|(_, u)| async { nodes[0].accept_contact(&center.token, &u.address).await?.expect_status(204) }),
        )
        .await?;
    }
    center_dev.drain_events();
    eprintln!("{} contacts accepted in {:.1} s", contacts.len(), t.elapsed().as_secs_f64());
    let mut devices: Vec<Device> = Vec::new();
    for chunk in contacts.chunks(100) {
        let made = futures_util::future::try_join_all(chunk.iter().map(|(zi, u)| nodes[*zi].device(&u.token, &u.name)))
            .await?;
        devices.extend(made);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for d in &mut devices {
        d.drain_events();
    }
    let mut rounds = Vec::new();
    let mut all = Vec::new();
    for r in 0..args.rounds {
        let status = format!("round {r}");
        let availability = if r % 2 == 0 { "busy" } else { "online" };
        let want = if r % 2 == 0 { PresenceState::Busy } else { PresenceState::Online };
        let t0 = Instant::now();
        nodes[0].set_presence(&center.token, availability, &status).await?;
        let mut waits: FuturesUnordered<_> = devices
            .iter_mut()
            .map(|d| {
                let status = status.clone();
                async move {
                    d.expect_event("the round's presence", WAIT * 3, |e| {
                        matches!(e, NodeToClient::Presence { presence, .. } if presence.status == status && presence.state == want)
                    })
                    .await
                    .map(|_| t0.elapsed())
                }
            })
            .collect();
        let mut got = Vec::with_capacity(args.contacts);
        while let Some(res) = waits.next().await {
            got.push(res?);
        }
        drop(waits);
        if got.len() != contacts.len() {
            bail!("round {r}: {} of {} deliveries", got.len(), contacts.len());
        }
        let s = Summary::of(&got);
        println!(
            "round {r:>2}: {} deliveries, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            s.n, s.p50_ms, s.p99_ms, s.max_ms
        );
        all.extend(got);
        rounds.push(s);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let total = Summary::of(&all);
    let mut p99s: Vec<f64> = rounds.iter().map(|s| s.p99_ms).collect();
    p99s.sort_by(f64::total_cmp);
    println!(
        "presence change to {} contacts over {ZONES} zones, {} rounds: p50 {:.1} ms, p99 {:.1} ms (round p99 min {:.1} / median {:.1} / max {:.1})",
        contacts.len(),
        rounds.len(),
        total.p50_ms,
        total.p99_ms,
        p99s.first().copied().unwrap_or_default(),
        p99s.get(p99s.len() / 2).copied().unwrap_or_default(),
        p99s.last().copied().unwrap_or_default(),
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&serde_json::json!({"all": total, "rounds": rounds}))?)?;
    }
    Ok(())
}
