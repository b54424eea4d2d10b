//! (b) Many calls set up at once.
//!
//! Every caller and callee device connects first (`hello` + `welcome`).
//! Then all callers are released together; each places one call to its own
//! callee, whose single device accepts on `incoming`. The headline figure
//! runs from the first `call` sent to the last `accepted` read by a
//! caller. Once every call is connected, all callers hang up at once and
//! the time until every callee has read `ended` is measured too (that path
//! includes the node's history writes and group-committed flush).
//!
//! The devices are [`LeanDevice`]s: with two thousand sockets on a
//! two-core machine, the client's own CPU use shows in the figures.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use signalling::EndReason;
use signalling::{CallId, ClientToNode, NodeToClient};
use tokio::sync::watch;
use xarxa_tests::{Node, User, AUDIO};

use super::client::{LeanClient, LeanDevice};

use super::host::{CpuMeter, CpuUse};
use super::stats::{ms, Summary};

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Concurrent calls (twice as many devices connect).
    pub calls: usize,
    /// Sockets opened at once while connecting the devices.
    pub connect_concurrency: usize,
    /// Bound on each step (connecting, setting up, hanging up).
    pub step_timeout: Duration,
}

/// What was measured. `*_ms` figures count from the first `call` sent.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Concurrent calls.
    pub calls: usize,
    /// Devices connected (callers and callees).
    pub devices: usize,
    /// Users the caller devices belong to.
    pub caller_users: usize,
    /// Time to connect and authenticate every device, seconds.
    pub connect_secs: f64,
    /// First to last `call` written by the bench.
    pub last_call_sent_ms: f64,
    /// Until the last caller read `call_placed`.
    pub all_placed_ms: f64,
    /// Until the last callee device read `incoming`.
    pub all_incoming_ms: f64,
    /// Until the last caller read `ringing`.
    pub all_ringing_ms: f64,
    /// Until the last caller read `accepted`: the headline figure.
    pub all_accepted_ms: f64,
    /// Per call: `call` sent → `incoming` read by its callee.
    pub per_call_incoming: Summary,
    /// Per call: `call` sent → `accepted` read.
    pub per_call_accepted: Summary,
    /// First `hangup` sent → last `ended` read by a callee.
    pub all_ended_ms: f64,
    /// Per call: `hangup` sent → `ended` read by the callee.
    pub per_call_ended: Summary,
    /// CPU used from the release of the calls until the last `accepted`.
    pub cpu_setup: CpuUse,
    /// CPU used from the hang-up signal until the last `ended`.
    pub cpu_hangup: CpuUse,
}

/// Pause between the last device connecting and the calls starting.
pub const QUIET: Duration = Duration::from_secs(1);

struct CallerTimes {
    sent: Instant,
    placed: Instant,
    ringing: Instant,
    accepted: Instant,
    hangup_sent: Instant,
}

struct CalleeTimes {
    incoming: Instant,
    ended: Instant,
}

/// Runs `opts.calls` concurrent calls: caller device `i` belongs to
/// `callers[i % callers.len()]` and calls `callees[i]`, which has one device.
pub async fn run(node: &Node, callers: &[User], callees: &[User], opts: Options) -> Result<Outcome> {
    if callers.is_empty() || callees.len() < opts.calls {
        bail!("need at least one caller user and {} callee users", opts.calls);
    }
    let t_connect = Instant::now();
    let client = LeanClient::new(node)?;
    let connect = |token: String| {
        let client = client.clone();
        async move { client.device(&token).await }
    };
    let caller_devices: Vec<LeanDevice> = bounded(opts.step_timeout, "connecting the caller devices", async {
        futures_util::stream::iter((0..opts.calls).map(|i| connect(callers[i % callers.len()].token.clone())))
            .buffered(opts.connect_concurrency.max(1))
            .try_collect()
            .await
    })
    .await?;
    let callee_devices: Vec<LeanDevice> = bounded(opts.step_timeout, "connecting the callee devices", async {
        futures_util::stream::iter((0..opts.calls).map(|i| connect(callees[i].token.clone())))
            .buffered(opts.connect_concurrency.max(1))
            .try_collect()
            .await
    })
    .await?;
    let connect_secs = t_connect.elapsed().as_secs_f64();
    eprintln!("  {} devices connected in {connect_secs:.1} s; the calls start in {QUIET:?}", 2 * opts.calls);
    // Devices are online well before anyone calls them: let the last
    // handshakes' acknowledgements go out before the calls start.
    tokio::time::sleep(QUIET).await;

    let (start_tx, start_rx) = watch::channel(false);
    let (hangup_tx, hangup_rx) = watch::channel(false);
    // Each caller reports once it reads `accepted`, or why it failed before.
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(2 * opts.calls);
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::channel::<()>(opts.calls);
    let step = opts.step_timeout;

    let mut callee_tasks = Vec::with_capacity(opts.calls);
    for (i, d) in callee_devices.into_iter().enumerate() {
        let caller_addr = callers[i % callers.len()].address.clone();
        let ended_tx = ended_tx.clone();
        callee_tasks.push(tokio::spawn(async move {
            let r = callee(d, &caller_addr, step).await.with_context(|| format!("callee device {i}"));
            let _ = ended_tx.send(()).await;
            r
        }));
    }
    let mut caller_tasks = Vec::with_capacity(opts.calls);
    for (i, d) in caller_devices.into_iter().enumerate() {
        let (to, start, hangup, accepted_tx) =
            (callees[i].address.clone(), start_rx.clone(), hangup_rx.clone(), accepted_tx.clone());
        caller_tasks.push(tokio::spawn(async move {
            let r = caller(d, to, start, hangup, &accepted_tx, step).await;
            if let Err(e) = &r {
                let _ = accepted_tx.try_send(Err(format!("caller device {i}: {e:#}")));
            }
            r
        }));
    }
    drop((accepted_tx, ended_tx));

    // Everyone is connected and parked: release the callers together.
    let meter = CpuMeter::start(node.info().pid);
    start_tx.send_replace(true);
    bounded(step, "waiting for every call to be accepted", async {
        for _ in 0..opts.calls {
            match accepted_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => bail!("a caller failed: {e}"),
                None => bail!("every caller task ended before all calls were accepted"),
            }
        }
        Ok(())
    })
    .await?;
    let cpu_setup = meter.stop();
    let meter = CpuMeter::start(node.info().pid);
    hangup_tx.send_replace(true);
    bounded(step, "waiting for every callee to see `ended`", async {
        for _ in 0..opts.calls {
            ended_rx.recv().await.ok_or_else(|| anyhow!("a callee task vanished"))?;
        }
        Ok(())
    })
    .await?;
    let cpu_hangup = meter.stop();

    let mut callers_t = Vec::with_capacity(opts.calls);
    for t in caller_tasks {
        callers_t.push(t.await.context("a caller task panicked")??);
    }
    let mut callees_t = Vec::with_capacity(opts.calls);
    for t in callee_tasks {
        callees_t.push(t.await.context("a callee task panicked")??);
    }

    let first_sent = callers_t.iter().map(|c| c.sent).min().ok_or_else(|| anyhow!("no calls"))?;
    let last = |f: &dyn Fn(&CallerTimes) -> Instant| callers_t.iter().map(f).max().map_or(0.0, |t| ms(t - first_sent));
    let first_hangup = callers_t.iter().map(|c| c.hangup_sent).min().unwrap_or(first_sent);
    let last_ended = callees_t.iter().map(|c| c.ended).max().unwrap_or(first_hangup);
    let per_call_ended: Vec<Duration> =
        callers_t.iter().zip(&callees_t).map(|(c, e)| e.ended.saturating_duration_since(c.hangup_sent)).collect();
    Ok(Outcome {
        calls: opts.calls,
        devices: 2 * opts.calls,
        caller_users: callers.len().min(opts.calls),
        connect_secs,
        last_call_sent_ms: last(&|c| c.sent),
        all_placed_ms: last(&|c| c.placed),
        all_incoming_ms: callees_t.iter().map(|c| c.incoming).max().map_or(0.0, |t| ms(t - first_sent)),
        all_ringing_ms: last(&|c| c.ringing),
        all_accepted_ms: last(&|c| c.accepted),
        per_call_incoming: Summary::of(
            &callers_t
                .iter()
                .zip(&callees_t)
                .map(|(c, e)| e.incoming.saturating_duration_since(c.sent))
                .collect::<Vec<_>>(),
        ),
        per_call_accepted: Summary::of(&callers_t.iter().map(|c| c.accepted - c.sent).collect::<Vec<_>>()),
        all_ended_ms: ms(last_ended.saturating_duration_since(first_hangup)),
        per_call_ended: Summary::of(&per_call_ended),
        cpu_setup,
        cpu_hangup,
    })
}

async fn caller(
    mut d: LeanDevice,
    to: String,
    mut start: watch::Receiver<bool>,
    mut hangup: watch::Receiver<bool>,
    accepted: &tokio::sync::mpsc::Sender<Result<(), String>>,
    step: Duration,
) -> Result<CallerTimes> {
    start.wait_for(|go| *go).await.context("start signal")?;
    let id = d.next_id();
    let sent = Instant::now();
    d.send(&ClientToNode::Call { id, to: to.clone(), media: AUDIO }).await?;
    let call = match d.reply(id, step).await? {
        NodeToClient::CallPlaced { call, .. } => call,
        other => bail!("calling {to}: expected call_placed, got {other:?}"),
    };
    let placed = Instant::now();
    event(&mut d, &call, "ringing", step, |m| matches!(m, NodeToClient::Ringing { call: c } if *c == call)).await?;
    let ringing = Instant::now();
    event(&mut d, &call, "accepted", step, |m| matches!(m, NodeToClient::Accepted { call: c } if *c == call)).await?;
    let accepted_at = Instant::now();
    let _ = accepted.try_send(Ok(()));
    hangup.wait_for(|go| *go).await.context("hang-up signal")?;
    let id = d.next_id();
    let hangup_sent = Instant::now();
    d.send(&ClientToNode::Hangup { id, call: call.clone() }).await?;
    match d.reply(id, step).await? {
        NodeToClient::Ok { .. } => {}
        other => bail!("hanging up: expected ok, got {other:?}"),
    }
    d.close().await;
    Ok(CallerTimes { sent, placed, ringing, accepted: accepted_at, hangup_sent })
}

async fn callee(mut d: LeanDevice, from: &str, step: Duration) -> Result<CalleeTimes> {
    let (call, who) = match d.wait_for("incoming", step, |m| matches!(m, NodeToClient::Incoming { .. })).await? {
        NodeToClient::Incoming { call, from, .. } => (call, from.to_string()),
        other => bail!("expected incoming, got {other:?}"),
    };
    let incoming = Instant::now();
    if who != from {
        bail!("incoming from {who}, expected {from}");
    }
    let id = d.next_id();
    d.send(&ClientToNode::Accept { id, call: call.clone() }).await?;
    match d.reply(id, step).await? {
        NodeToClient::Ok { .. } => {}
        other => bail!("accepting: expected ok, got {other:?}"),
    }
    match event(&mut d, &call, "ended", step, |_| false).await? {
        NodeToClient::Ended { reason: EndReason::HungUp, .. } => {}
        other => bail!("expected ended with reason hung_up, got {other:?}"),
    }
    let ended = Instant::now();
    d.close().await;
    Ok(CalleeTimes { incoming, ended })
}

/// Waits for the event on `call` that `pred` matches, or for `ended` on it
/// (which is returned when `what` is "ended", and an error otherwise).
async fn event(
    d: &mut LeanDevice,
    call: &CallId,
    what: &str,
    step: Duration,
    pred: impl Fn(&NodeToClient) -> bool,
) -> Result<NodeToClient> {
    let m =
        d.wait_for(what, step, |m| pred(m) || matches!(m, NodeToClient::Ended { call: c, .. } if c == call)).await?;
    match m {
        NodeToClient::Ended { reason, .. } if what != "ended" => bail!("expected {what}, the call ended: {reason:?}"),
        m => Ok(m),
    }
}

/// `fut`, failing with `what` after `limit`.
async fn bounded<T>(limit: Duration, what: &str, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(limit, fut).await.map_err(|_| anyhow!("{what}: not done within {limit:?}"))?
}
