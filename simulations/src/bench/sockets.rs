//! (c) Memory of a node holding many idle authenticated WebSockets.
//!
//! The node's RSS is read from `/proc/PID/status` once before (the node
//! freshly started, idle, with the users already in its database), then
//! after every socket has said `hello` and read `welcome` and the node has
//! settled, and once more after the sockets are closed. The sockets are
//! spread over users, several devices each, as people with a phone, a
//! laptop and a desk phone would. They stay idle: each is read (so the
//! node's keep-alive pings are answered) but sends nothing.
//!
//! The sockets are opened by the lean [`super::client`]: quick to connect,
//! small beside the node it measures. `--socket-stage` stops them after TLS
//! or after the WebSocket upgrade instead, which splits the per-socket
//! memory between TLS, WebSocket and device registration.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch, Semaphore};
use xarxa_tests::{Node, User};

use super::client::LeanClient;
pub use super::client::Stage;

use super::host::{self, CpuMeter, CpuUse, Memory};
use super::stats::Summary;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Sockets to hold.
    pub sockets: usize,
    /// Devices (sockets) per user.
    pub devices_per_user: usize,
    /// Sockets being opened at once.
    pub connect_concurrency: usize,
    /// Wait after the last `welcome` before reading the node's memory.
    pub settle: Duration,
    /// Bound on connecting every socket.
    pub step_timeout: Duration,
    /// How far each socket goes before it idles.
    pub stage: Stage,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Sockets held.
    pub sockets: usize,
    /// How far each went.
    pub stage: Stage,
    /// Users they belong to.
    pub users: usize,
    /// Time to open every socket (TCP, TLS, WebSocket, `hello` → `welcome`), seconds.
    pub connect_secs: f64,
    /// Per socket: connect start → `welcome`.
    pub connect: Summary,
    /// CPU used while opening the sockets.
    pub cpu_connect: CpuUse,
    /// The node before: started, idle, users in its database.
    pub baseline: Memory,
    /// The node holding every socket, settled.
    pub loaded: Memory,
    /// The node a moment after every socket closed.
    pub after_close: Memory,
    /// `loaded.rss_kib - baseline.rss_kib`.
    pub delta_kib: u64,
    /// `delta_kib / sockets`.
    pub per_socket_kib: f64,
    /// Devices the node itself counted (`xarxa status`) while loaded.
    pub node_devices: Option<u64>,
    /// Sockets still open when the memory was read.
    pub open_at_measure: usize,
    /// The bench process's own RSS while loaded, KiB.
    pub bench_rss_kib: u64,
}

/// Holds `opts.sockets` idle sockets of `users` (`opts.devices_per_user`
/// each) on `node` and measures the node's memory.
pub async fn run(node: &Node, users: &[User], opts: Options) -> Result<Outcome> {
    let per_user = opts.devices_per_user.max(1);
    // Only authenticated sockets need users (and their tokens).
    let needed = if opts.stage == Stage::Authenticated { opts.sockets.div_ceil(per_user) } else { 0 };
    if users.len() < needed {
        bail!("need {needed} users for {} sockets at {per_user} per user", opts.sockets);
    }
    let pid = node.info().pid;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = host::memory(pid)?;

    let client = LeanClient::new(node)?;
    let gate = Arc::new(Semaphore::new(opts.connect_concurrency.max(1)));
    let open = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<Duration, String>>(opts.sockets);
    let stage = opts.stage;
    let meter = CpuMeter::start(pid);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(opts.sockets);
    for i in 0..opts.sockets {
        let (client, gate, open, ready) = (client.clone(), gate.clone(), open.clone(), ready_tx.clone());
        let token = users.get(i / per_user).map(|u| u.token.clone()).unwrap_or_default();
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let t0 = Instant::now();
            let mut held = match client.open(&token, stage).await {
                Ok(ws) => ws,
                Err(e) => {
                    let _ = ready.try_send(Err(format!("socket {i}: {e:#}")));
                    return;
                }
            };
            drop(permit);
            open.fetch_add(1, Ordering::Relaxed);
            let _ = ready.try_send(Ok(t0.elapsed()));
            held.idle(&mut stop).await;
            open.fetch_sub(1, Ordering::Relaxed);
            held.close().await;
        }));
    }
    drop(ready_tx);
    let mut connect = Vec::with_capacity(opts.sockets);
    let collected = tokio::time::timeout(opts.step_timeout, async {
        while connect.len() < opts.sockets {
            match ready_rx.recv().await {
                Some(Ok(d)) => connect.push(d),
                Some(Err(e)) => bail!("{e}"),
                None => bail!("the socket tasks ended early"),
            }
        }
        Ok(())
    })
    .await;
    let connect_secs = started.elapsed().as_secs_f64();
    let cpu_connect = meter.stop();
    let failed = match collected {
        Err(_) => Some(anyhow!("{} of {} sockets open after {:?}", connect.len(), opts.sockets, opts.step_timeout)),
        Ok(Err(e)) => Some(e),
        Ok(Ok(())) => None,
    };
    if let Some(e) = failed {
        stop_tx.send_replace(true);
        return Err(e.context(format!("node log tail:\n{}", node.log_tail(10))));
    }

    tokio::time::sleep(opts.settle).await;
    let loaded = settled_memory(pid).await?;
    let open_at_measure = open.load(Ordering::Relaxed);
    let node_devices = node_status(node.data_dir()).await.ok().and_then(|v| v["devices"].as_u64());
    let bench_rss_kib = host::memory(std::process::id()).map_or(0, |m| m.rss_kib);

    stop_tx.send_replace(true);
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_close = host::memory(pid)?;

    let delta_kib = loaded.rss_kib.saturating_sub(baseline.rss_kib);
    Ok(Outcome {
        sockets: opts.sockets,
        stage: opts.stage,
        users: needed,
        connect_secs,
        connect: Summary::of(&connect),
        cpu_connect,
        baseline,
        loaded,
        after_close,
        delta_kib,
        per_socket_kib: delta_kib as f64 / opts.sockets.max(1) as f64,
        node_devices,
        open_at_measure,
        bench_rss_kib,
    })
}

/// Samples the RSS of `pid` every half second until two samples in a row
/// differ by less than 0.5 % (at most ten seconds), and returns the last.
async fn settled_memory(pid: u32) -> Result<Memory> {
    let mut last = host::memory(pid)?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = host::memory(pid)?;
        let moved = now.rss_kib.abs_diff(last.rss_kib) as f64 / last.rss_kib.max(1) as f64;
        last = now;
        if moved < 0.005 {
            break;
        }
    }
    Ok(last)
}

/// The node's own counts, from its admin socket (what `xarxa status` prints).
pub async fn node_status(data_dir: &Path) -> Result<serde_json::Value> {
    let mut stream = UnixStream::connect(data_dir.join("admin.sock")).await.context("connecting to admin.sock")?;
    stream.write_all(b"{\"op\":\"status\"}\n").await.context("writing the status request")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).await.context("reading the status answer")?;
    let v: serde_json::Value = serde_json::from_str(&line).context("parsing the status answer")?;
    if v["result"] != "ok" {
        bail!("status failed: {line}");
    }
    Ok(v["data"].clone())
}
