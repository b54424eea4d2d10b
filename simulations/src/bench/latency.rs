//! (a) Call set-up latency between two devices on loopback, one call at a
//! time.
//!
//! Each round: the caller sends `call`; the time until the callee device
//! reads `incoming` is the headline figure (the node's work to make a phone
//! ring), with `call_placed` and `ringing` at the caller beside it. Then
//! the callee accepts (accept → `accepted` at the caller) and the caller
//! hangs up (hangup → `ended` at the callee, which includes the node's
//! durable history write). The next round starts only when both sides have
//! seen the end, so rounds never overlap.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;
use signalling::{ClientToNode, EndReason, NodeToClient};
use xarxa_tests::{Device, Node, User, AUDIO, WAIT};

use super::host::{CpuMeter, CpuUse};
use super::stats::Summary;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Measured rounds.
    pub calls: usize,
    /// Rounds run first and not measured.
    pub warmup: usize,
}

/// What was measured.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Measured rounds.
    pub calls: usize,
    /// Unmeasured rounds before them.
    pub warmup: usize,
    /// Caller sends `call` → the callee device reads `incoming`.
    pub call_to_incoming: Summary,
    /// Caller sends `call` → the caller reads `call_placed`.
    pub call_to_placed: Summary,
    /// Caller sends `call` → the caller reads `ringing`.
    pub call_to_ringing: Summary,
    /// Callee sends `accept` → the caller reads `accepted`.
    pub accept_to_accepted: Summary,
    /// Caller sends `hangup` → the callee reads `ended` (after the node's
    /// history write and flush).
    pub hangup_to_ended: Summary,
    /// Wall time of all rounds, seconds.
    pub wall_secs: f64,
    /// CPU used by the node and the bench over the measured rounds.
    pub cpu: CpuUse,
}

#[derive(Default)]
struct Samples {
    incoming: Vec<Duration>,
    placed: Vec<Duration>,
    ringing: Vec<Duration>,
    accepted: Vec<Duration>,
    ended: Vec<Duration>,
}

/// Runs `opts.warmup + opts.calls` sequential calls from one device of
/// `caller` to one device of `callee`.
pub async fn run(node: &Node, caller: &User, callee: &User, opts: Options) -> Result<Outcome> {
    let mut a = node.device(&caller.token, "latency-caller").await?;
    let mut b = node.device(&callee.token, "latency-callee").await?;
    let mut s = Samples::default();
    let started = Instant::now();
    let mut meter = CpuMeter::start(node.info().pid);
    for round in 0..opts.warmup + opts.calls {
        if round == opts.warmup {
            meter = CpuMeter::start(node.info().pid);
        }
        let r = one_round(&mut a, &mut b, &callee.address).await?;
        b.drain_events();
        a.drain_events();
        if round >= opts.warmup {
            s.incoming.push(r.incoming);
            s.placed.push(r.placed);
            s.ringing.push(r.ringing);
            s.accepted.push(r.accepted);
            s.ended.push(r.ended);
        }
    }
    let wall_secs = started.elapsed().as_secs_f64();
    let cpu = meter.stop();
    a.close().await?;
    b.close().await?;
    Ok(Outcome {
        calls: opts.calls,
        warmup: opts.warmup,
        call_to_incoming: Summary::of(&s.incoming),
        call_to_placed: Summary::of(&s.placed),
        call_to_ringing: Summary::of(&s.ringing),
        accept_to_accepted: Summary::of(&s.accepted),
        hangup_to_ended: Summary::of(&s.ended),
        wall_secs,
        cpu,
    })
}

struct Round {
    incoming: Duration,
    placed: Duration,
    ringing: Duration,
    accepted: Duration,
    ended: Duration,
}

async fn one_round(a: &mut Device, b: &mut Device, to: &str) -> Result<Round> {
    let id = a.next_id();
    let t0 = Instant::now();
    a.send(&ClientToNode::Call { id, to: to.to_owned(), media: AUDIO }).await?;
    let (at_caller, at_callee) = tokio::join!(
        async {
            let reply = a.reply_to(id, WAIT).await?;
            let placed = t0.elapsed();
            let NodeToClient::CallPlaced { call, .. } = reply else {
                bail!("expected call_placed, got {reply:?}");
            };
            a.expect_ringing(&call, WAIT).await?;
            Ok((call, placed, t0.elapsed()))
        },
        async {
            let (call, _from, _media) = b.expect_any_incoming(WAIT).await?;
            Ok::<_, anyhow::Error>((call, t0.elapsed()))
        }
    );
    let (call, placed, ringing) = at_caller?;
    let (rung, incoming) = at_callee?;
    if rung != call {
        bail!("the callee rang for call {} while the caller placed {}", rung.0, call.0);
    }

    let t1 = Instant::now();
    let (accepted_ok, accepted) =
        tokio::join!(b.accept(&call), async { a.expect_accepted(&call, WAIT).await.map(|()| t1.elapsed()) });
    accepted_ok?;
    let accepted = accepted?;

    let t2 = Instant::now();
    let (hung_up, ended) = tokio::join!(a.hangup(&call), async {
        b.expect_ended(&call, EndReason::HungUp, WAIT).await.map(|()| t2.elapsed())
    });
    hung_up?;
    Ok(Round { incoming, placed, ringing, accepted, ended: ended? })
}
