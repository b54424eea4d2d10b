//! Calls over a [`Device`]: the signalling requests by name (`call`,
//! `accept`, `hangup`, `signal`, `mark_read`, `ping`, …) expecting success,
//! the call events expected by name (`incoming`, `ringing`, `accepted`,
//! `ended`, …), and the free helpers that set up calls ([`connect_call`],
//! [`fake_sdp`]).

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use signalling::{CallId, ClientToNode, EndReason, ErrorCode, Media, NodeToClient, Notice, Signal};

use crate::{check_error, Device, AUDIO, WAIT};

impl Device {
    // ---- the signalling requests, expecting success ----

    /// Sends a request and expects `ok`.
    pub async fn expect_ok(&mut self, msg: ClientToNode) -> Result<()> {
        let text = msg.to_json();
        match self.request(msg).await? {
            NodeToClient::Ok { .. } => Ok(()),
            other => bail!("{}: expected ok to {text}, got {other:?}", self.label()),
        }
    }

    /// Sends a request and expects an `error` with `code` and the request's id.
    pub async fn expect_error(&mut self, msg: ClientToNode, code: ErrorCode) -> Result<()> {
        let id = msg.id();
        let text = msg.to_json();
        let r = self.request(msg).await?;
        check_error(self.label(), &r, code, Some(id)).with_context(|| format!("reply to {text}"))
    }

    /// `call` with audio only; expects `call_placed`; returns the call id.
    pub async fn call(&mut self, to: &str) -> Result<CallId> {
        self.call_with(to, AUDIO).await
    }

    /// `call` with `media`; expects `call_placed`.
    pub async fn call_with(&mut self, to: &str, media: Media) -> Result<CallId> {
        let id = self.next_id();
        match self.request(ClientToNode::Call { id, to: to.to_owned(), media }).await? {
            NodeToClient::CallPlaced { call, .. } => Ok(call),
            other => bail!("{}: expected call_placed calling {to}, got {other:?}", self.label()),
        }
    }

    /// `accept`; expects `ok`.
    pub async fn accept(&mut self, call: &CallId) -> Result<()> {
        let id = self.next_id();
        self.expect_ok(ClientToNode::Accept { id, call: call.clone() }).await
    }

    /// `reject`; expects `ok`.
    pub async fn reject(&mut self, call: &CallId) -> Result<()> {
        let id = self.next_id();
        self.expect_ok(ClientToNode::Reject { id, call: call.clone() }).await
    }

    /// `hangup`; expects `ok`.
    pub async fn hangup(&mut self, call: &CallId) -> Result<()> {
        let id = self.next_id();
        self.expect_ok(ClientToNode::Hangup { id, call: call.clone() }).await
    }

    /// `signal`; expects `ok`.
    pub async fn signal(&mut self, call: &CallId, signal: Signal) -> Result<()> {
        let id = self.next_id();
        self.expect_ok(ClientToNode::Signal { id, call: call.clone(), signal }).await
    }

    /// `mark_read`; expects `ok`.
    pub async fn mark_read(&mut self, notice: u64) -> Result<()> {
        let id = self.next_id();
        self.expect_ok(ClientToNode::MarkRead { id, notice }).await
    }

    /// `ping`; expects `pong` with the same id.
    pub async fn ping(&mut self) -> Result<()> {
        let id = self.next_id();
        match self.request(ClientToNode::Ping { id }).await? {
            NodeToClient::Pong { id: got } if got == id => Ok(()),
            other => bail!("{}: expected pong to ping {id}, got {other:?}", self.label()),
        }
    }

    // ---- the events, expected ----

    /// Expects `incoming` for `call` from `from`; returns its media.
    pub async fn expect_incoming(&mut self, call: &CallId, from: &str, timeout: Duration) -> Result<Media> {
        let what = format!("incoming {} from {from}", call.0);
        match self
            .expect_event(&what, timeout, |e| matches!(e, NodeToClient::Incoming { call: c, .. } if c == call))
            .await?
        {
            NodeToClient::Incoming { from: got, media, .. } if got.to_string() == from => Ok(media),
            other => bail!("{}: expected {what}, got {other:?}", self.label()),
        }
    }

    /// Expects `incoming` for any call; returns (call, from, media).
    pub async fn expect_any_incoming(&mut self, timeout: Duration) -> Result<(CallId, String, Media)> {
        match self.expect_event("incoming", timeout, |e| matches!(e, NodeToClient::Incoming { .. })).await? {
            NodeToClient::Incoming { call, from, media } => Ok((call, from.to_string(), media)),
            other => bail!("{}: expected incoming, got {other:?}", self.label()),
        }
    }

    /// Calls `to` again and again until it rings (the mesh may not know
    /// the way yet: a new zone, a moved one), for at most `within`; the
    /// call ringing.
    pub async fn call_until_ringing(&mut self, to: &str, within: Duration) -> Result<CallId> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let call = self.call(to).await?;
            let ev = self
                .expect_event("ringing or ended", WAIT, |e| {
                    matches!(e, NodeToClient::Ringing { call: c } | NodeToClient::Ended { call: c, .. } if *c == call)
                })
                .await?;
            match ev {
                NodeToClient::Ringing { .. } => return Ok(call),
                _ if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(300)).await,
                other => bail!("{}: calling {to}: {other:?}", self.label()),
            }
        }
    }

    /// Expects `ringing` for `call`.
    pub async fn expect_ringing(&mut self, call: &CallId, timeout: Duration) -> Result<()> {
        let what = format!("ringing {}", call.0);
        self.expect_event(&what, timeout, |e| matches!(e, NodeToClient::Ringing { call: c } if c == call)).await?;
        Ok(())
    }

    /// Expects `accepted` for `call`.
    pub async fn expect_accepted(&mut self, call: &CallId, timeout: Duration) -> Result<()> {
        let what = format!("accepted {}", call.0);
        self.expect_event(&what, timeout, |e| matches!(e, NodeToClient::Accepted { call: c } if c == call)).await?;
        Ok(())
    }

    /// Expects `ended` for `call` with `reason` (an `ended` with another
    /// reason fails at once).
    pub async fn expect_ended(&mut self, call: &CallId, reason: EndReason, timeout: Duration) -> Result<()> {
        let what = format!("ended {} with reason {reason:?}", call.0);
        match self
            .expect_event(&what, timeout, |e| matches!(e, NodeToClient::Ended { call: c, .. } if c == call))
            .await?
        {
            NodeToClient::Ended { reason: got, .. } if got == reason => Ok(()),
            other => bail!("{}: expected {what}, got {other:?}", self.label()),
        }
    }

    /// Expects a `signal` event for `call`; returns the signal.
    pub async fn expect_signal(&mut self, call: &CallId, timeout: Duration) -> Result<Signal> {
        let what = format!("signal on {}", call.0);
        match self
            .expect_event(&what, timeout, |e| matches!(e, NodeToClient::Signal { call: c, .. } if c == call))
            .await?
        {
            NodeToClient::Signal { signal, .. } => Ok(signal),
            other => bail!("{}: expected {what}, got {other:?}", self.label()),
        }
    }

    /// Expects a `missed_call` event for `call`; returns the notice.
    pub async fn expect_missed_call(&mut self, call: &CallId, timeout: Duration) -> Result<Notice> {
        let what = format!("missed_call for {}", call.0);
        match self
            .expect_event(&what, timeout, |e| matches!(e, NodeToClient::MissedCall { notice } if &notice.call == call))
            .await?
        {
            NodeToClient::MissedCall { notice } => Ok(notice),
            other => bail!("{}: expected {what}, got {other:?}", self.label()),
        }
    }
}

/// Places a call from `caller` to `callee_addr`; waits for `incoming` on
/// `callee` and `ringing` on the caller; has `callee` accept it and waits
/// until the caller sees `accepted`. Returns the call id.
pub async fn connect_call(caller: &mut Device, callee: &mut Device, callee_addr: &str) -> Result<CallId> {
    let call = caller.call(callee_addr).await?;
    let what = format!("incoming {}", call.0);
    callee.expect_event(&what, WAIT, |e| matches!(e, NodeToClient::Incoming { call: c, .. } if *c == call)).await?;
    caller.expect_ringing(&call, WAIT).await?;
    callee.accept(&call).await?;
    caller.expect_accepted(&call, WAIT).await?;
    Ok(call)
}

/// An SDP-looking string of `len` bytes.
pub fn fake_sdp(len: usize) -> String {
    let mut s = String::from("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\n");
    while s.len() < len {
        s.push_str("a=x-pad:0123456789abcdef\r\n");
    }
    s.truncate(len);
    s
}
