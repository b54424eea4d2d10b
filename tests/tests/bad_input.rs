//! Bad input on the signalling WebSocket (issue 3, point 3): each gets its
//! typed error, the node keeps running, and a call between two other users
//! that is in progress meanwhile goes on untouched.
//!
//! One node serves every test of this file (except the expired-token test,
//! which needs short sessions); each test uses its own users.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Result;
use signalling::{CallId, ClientToNode, EndReason, ErrorCode, Media, NodeToClient, Signal};
use xarxa_tests::{check_error, connect_call, fake_sdp, now_ms, Device, Node, User, WAIT};

const MAX_FRAME: usize = 65536;
const MAX_SDP: usize = 16384;
const MAX_CHAT: usize = 4096;
const QUIET: Duration = Duration::from_millis(400);

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        Node::start(
            "bad",
            &[
                ("XARXA_LIMITS__MAX_FRAME_BYTES", "65536"),
                ("XARXA_LIMITS__MAX_SDP_BYTES", "16384"),
                ("XARXA_LIMITS__MAX_CHAT_BYTES", "4096"),
                ("XARXA_LIMITS__WS_MESSAGES_PER_SECOND", "50"),
                ("XARXA_TIMEOUTS__HELLO", "2s"),
                ("XARXA_LIMITS__REGISTRATIONS_PER_ADDRESS", "100000"),
            ],
        )
        .expect("starting the bad-input node")
    })
}

/// Two users in a connected call that bad input elsewhere must not disturb.
struct Bystanders {
    c: Device,
    d: Device,
    call: CallId,
    round: u32,
}

impl Bystanders {
    async fn start(n: &Node, prefix: &str) -> Result<Self> {
        let u = n.users(prefix, &["carol", "dave"]).await?;
        let mut c = n.device(&u[0].token, "carol (bystander)").await?;
        let mut d = n.device(&u[1].token, "dave (bystander)").await?;
        let call = connect_call(&mut c, &mut d, &u[1].address).await?;
        Ok(Self { c, d, call, round: 0 })
    }

    /// Fails unless the node runs and the bystanders' call still relays
    /// both ways, with nothing else having reached them.
    async fn check(&mut self, n: &Node, after: &str) -> Result<()> {
        n.assert_alive().await.map_err(|e| e.context(format!("after {after}")))?;
        self.round += 1;
        self.c.expect_no_event(Duration::ZERO).await?;
        self.d.expect_no_event(Duration::ZERO).await?;
        let there = Signal::Chat { text: format!("still here after {after} ({})", self.round) };
        self.c.signal(&self.call, there.clone()).await?;
        assert_eq!(self.d.expect_signal(&self.call, WAIT).await?, there, "bystander call after {after}");
        let back = Signal::Chat { text: format!("me too ({})", self.round) };
        self.d.signal(&self.call, back.clone()).await?;
        assert_eq!(self.c.expect_signal(&self.call, WAIT).await?, back, "bystander call after {after}");
        Ok(())
    }
}

async fn attacker(n: &Node, prefix: &str) -> Result<(User, Device)> {
    let u = n.users(prefix, &["eve"]).await?;
    let d = n.device(&u[0].token, "eve").await?;
    Ok((u[0].clone(), d))
}

#[tokio::test]
async fn malformed_json_gets_bad_json() -> Result<()> {
    let n = node();
    let mut by = Bystanders::start(n, "bj").await?;
    let (_, mut eve) = attacker(n, "bj").await?;
    for frame in ["{not json", "", "[1, 2", "\u{0}\u{1}", r#"{"type":"ping","id":1"#] {
        eve.send_raw(frame).await?;
        let r = eve.next_reply(WAIT).await?;
        check_error("eve", &r, ErrorCode::BadJson, None).map_err(|e| e.context(format!("frame {frame:?}")))?;
        eve.ping().await?; // the socket is still usable
        by.check(n, &format!("bad JSON {frame:?}")).await?;
    }
    Ok(())
}

#[tokio::test]
async fn unknown_type_and_bad_fields_get_typed_errors() -> Result<()> {
    let n = node();
    let mut by = Bystanders::start(n, "ut").await?;
    let (_, mut eve) = attacker(n, "ut").await?;
    eve.send_raw(r#"{"type":"fly","id":7}"#).await?;
    eve.expect_error_reply(ErrorCode::UnknownType, Some(7)).await?;
    by.check(n, "unknown type").await?;
    eve.send_raw(r#"{"id":8}"#).await?;
    eve.expect_error_reply(ErrorCode::UnknownType, Some(8)).await?;
    eve.send_raw(r#"{"type":"call","id":9}"#).await?;
    eve.expect_error_reply(ErrorCode::BadMessage, Some(9)).await?;
    eve.send_raw(r#"{"type":"accept","id":10,"call":12345}"#).await?;
    eve.expect_error_reply(ErrorCode::BadMessage, Some(10)).await?;
    eve.ping().await?;
    by.check(n, "bad fields").await?;
    Ok(())
}

#[tokio::test]
async fn frame_over_the_limit_gets_frame_too_large() -> Result<()> {
    let n = node();
    let mut by = Bystanders::start(n, "ft").await?;
    let (_, mut eve) = attacker(n, "ft").await?;
    let pad = "x".repeat(MAX_FRAME + 10);
    eve.send_raw(format!(r#"{{"type":"ping","id":11,"pad":"{pad}"}}"#)).await?;
    let r = eve.next_reply(WAIT).await?;
    check_error("eve", &r, ErrorCode::FrameTooLarge, None)?;
    eve.ping().await?;
    by.check(n, "an oversized frame").await?;

    // Over four times the limit, the socket is closed with 1009.
    // (The node may close while the frame is still being written: then the
    // write fails, and the connection may be reset before the close frame
    // is read; what must not happen is the socket staying open, or another
    // close code.)
    let u = n.users("ft2", &["eve"]).await?;
    let mut eve2 = n.device(&u[0].token, "eve2").await?;
    let _ = eve2.send_raw("y".repeat(4 * MAX_FRAME + 1024)).await;
    let code = eve2.expect_closed(WAIT).await?;
    assert!(matches!(code, Some(1009) | None), "close code for a frame over 4x the limit: {code:?}, want 1009");
    by.check(n, "a far oversized frame").await?;
    Ok(())
}

#[tokio::test]
async fn binary_frame_gets_binary_not_supported() -> Result<()> {
    let n = node();
    let mut by = Bystanders::start(n, "bf").await?;
    let (_, mut eve) = attacker(n, "bf").await?;
    eve.send_binary(br#"{"type":"ping","id":1}"#.to_vec()).await?;
    let r = eve.next_reply(WAIT).await?;
    check_error("eve", &r, ErrorCode::BinaryNotSupported, None)?;
    eve.send_binary(vec![0xff; 1000]).await?;
    let r = eve.next_reply(WAIT).await?;
    check_error("eve", &r, ErrorCode::BinaryNotSupported, None)?;
    eve.ping().await?;
    by.check(n, "binary frames").await?;
    Ok(())
}

#[tokio::test]
async fn messages_for_a_call_the_device_is_not_in_get_not_in_call() -> Result<()> {
    let n = node();
    let mut by = Bystanders::start(n, "nc").await?;
    let (_, mut eve) = attacker(n, "nc").await?;
    let theirs = by.call.clone();
    let made_up = CallId("0123456789abcdef0123456789abcdef".into());
    for call in [&theirs, &made_up] {
        let id = eve.next_id();
        let offer = Signal::Offer { sdp: fake_sdp(300) };
        eve.expect_error(ClientToNode::Signal { id, call: call.clone(), signal: offer }, ErrorCode::NotInCall).await?;
        let id = eve.next_id();
        eve.expect_error(ClientToNode::Accept { id, call: call.clone() }, ErrorCode::NotInCall).await?;
        let id = eve.next_id();
        eve.expect_error(ClientToNode::Reject { id, call: call.clone() }, ErrorCode::NotInCall).await?;
        let id = eve.next_id();
        eve.expect_error(ClientToNode::Hangup { id, call: call.clone() }, ErrorCode::NotInCall).await?;
    }
    // The bystanders' call was neither ended nor fed eve's offer.
    by.check(n, "messages for someone else's call").await?;

    // A callee device that was told "answered elsewhere" is not in the call either.
    let u = n.users("nc", &["fay", "gil"]).await?;
    let mut f1 = n.device(&u[0].token, "fay/f1").await?;
    let mut g1 = n.device(&u[1].token, "gil/g1").await?;
    let mut g2 = n.device(&u[1].token, "gil/g2").await?;
    let call = f1.call(&u[1].address).await?;
    g2.expect_incoming(&call, &u[0].address, WAIT).await?;
    g1.expect_incoming(&call, &u[0].address, WAIT).await?;
    f1.expect_ringing(&call, WAIT).await?;
    g1.accept(&call).await?;
    g2.expect_ended(&call, EndReason::AnsweredElsewhere, WAIT).await?;
    let id = g2.next_id();
    let chat = Signal::Chat { text: "psst".into() };
    g2.expect_error(ClientToNode::Signal { id, call: call.clone(), signal: chat }, ErrorCode::NotInCall).await?;
    let id = g2.next_id();
    g2.expect_error(ClientToNode::Hangup { id, call: call.clone() }, ErrorCode::NotInCall).await?;
    f1.expect_accepted(&call, WAIT).await?;
    f1.expect_no_event(QUIET).await?;
    g1.expect_no_event(QUIET).await?;
    Ok(())
}

#[tokio::test]
async fn sdp_over_the_limit_gets_sdp_too_large() -> Result<()> {
    let n = node();
    let mut by = Bystanders::start(n, "sd").await?;
    let u = n.users("sd", &["eve", "frank"]).await?;
    let mut eve = n.device(&u[0].token, "eve").await?;
    let mut frank = n.device(&u[1].token, "frank").await?;
    let call = connect_call(&mut eve, &mut frank, &u[1].address).await?;

    for big in [Signal::Offer { sdp: fake_sdp(MAX_SDP + 1) }, Signal::Answer { sdp: fake_sdp(MAX_SDP * 3) }] {
        let id = eve.next_id();
        eve.expect_error(ClientToNode::Signal { id, call: call.clone(), signal: big }, ErrorCode::SdpTooLarge).await?;
    }
    let id = eve.next_id();
    let long_chat = Signal::Chat { text: "z".repeat(MAX_CHAT + 1) };
    eve.expect_error(ClientToNode::Signal { id, call: call.clone(), signal: long_chat }, ErrorCode::TextTooLarge)
        .await?;
    frank.expect_no_event(QUIET).await?;
    by.check(n, "oversized SDP").await?;

    // At the limit it passes, and the call goes on.
    let fits = Signal::Offer { sdp: fake_sdp(MAX_SDP) };
    eve.signal(&call, fits.clone()).await?;
    assert_eq!(frank.expect_signal(&call, WAIT).await?, fits);
    let media = Signal::Media { media: Media { audio: false, video: false } };
    frank.signal(&call, media.clone()).await?;
    assert_eq!(eve.expect_signal(&call, WAIT).await?, media);
    Ok(())
}

#[tokio::test]
async fn forged_revoked_and_missing_tokens_are_refused() -> Result<()> {
    let n = node();
    let mut by = Bystanders::start(n, "tk").await?;
    let u = n.users("tk", &["eve"]).await?;
    let eve = &u[0];

    let forged = [
        "forged".to_owned(),
        String::new(),
        format!("xt_{}", "0".repeat(64)),
        format!("{}x", eve.token),
        eve.token.chars().rev().collect(),
    ];
    for token in forged {
        let mut d = n.connect("eve (forged)").await?;
        let id = d.next_id();
        let r = d.request(ClientToNode::Hello { id, version: 1, token: token.clone(), resume: None }).await?;
        check_error("eve (forged)", &r, ErrorCode::InvalidToken, Some(id))
            .map_err(|e| e.context(format!("token {token:?}")))?;
        assert_eq!(d.expect_closed(WAIT).await?, Some(1008), "close code after invalid_token");
        by.check(n, "a forged token").await?;
    }

    // A request before hello.
    let mut d = n.connect("eve (no hello)").await?;
    let id = d.next_id();
    let r =
        d.request(ClientToNode::Call { id, to: "tk-carol".into(), media: Media { audio: true, video: false } }).await?;
    check_error("eve (no hello)", &r, ErrorCode::NotAuthenticated, Some(id))?;
    assert_eq!(d.expect_closed(WAIT).await?, Some(1008), "close code after not_authenticated");

    // A protocol version this node does not speak.
    let mut d = n.connect("eve (v99)").await?;
    let id = d.next_id();
    let r = d.request(ClientToNode::Hello { id, version: 99, token: eve.token.clone(), resume: None }).await?;
    check_error("eve (v99)", &r, ErrorCode::UnsupportedVersion, Some(id))?;
    assert_eq!(d.expect_closed(WAIT).await?, Some(1008), "close code after unsupported_version");

    // A second hello on a good socket.
    let mut d = n.device(&eve.token, "eve").await?;
    let id = d.next_id();
    let r = d.request(ClientToNode::Hello { id, version: 1, token: eve.token.clone(), resume: None }).await?;
    check_error("eve", &r, ErrorCode::AlreadyAuthenticated, Some(id))?;
    d.ping().await?;

    // No hello at all: the socket is closed after the hello timeout (2 s here).
    let mut silent = n.connect("eve (silent)").await?;
    silent.expect_closed(Duration::from_secs(2) + WAIT).await?;

    // Logout revokes the token: its open socket is closed, and it cannot say hello again.
    n.post("/api/v1/logout", Some(&eve.token), serde_json::json!({})).await?.expect_status(204)?;
    d.expect_closed(WAIT).await?;
    let mut d = n.connect("eve (revoked)").await?;
    let id = d.next_id();
    let r = d.request(ClientToNode::Hello { id, version: 1, token: eve.token.clone(), resume: None }).await?;
    check_error("eve (revoked)", &r, ErrorCode::InvalidToken, Some(id))?;
    by.check(n, "token errors").await?;
    Ok(())
}

#[tokio::test]
async fn expired_token_is_refused() -> Result<()> {
    let n = Node::start("expiry", &[("XARXA_TIMEOUTS__SESSION", "2s")])?;
    n.register("eve", xarxa_tests::PASSWORD).await?;
    let s = n.login_session("eve", xarxa_tests::PASSWORD, None).await?;
    let left = s.expires_at_ms.saturating_sub(now_ms());
    assert!(left <= 5_000, "with a 2s session timeout the session should expire soon, expires in {left} ms");
    let mut d = n.device(&s.token, "eve (fresh)").await?;
    d.ping().await?;

    // Wait (bounded) until the session's own expiry has passed.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while now_ms() <= s.expires_at_ms + 100 {
        assert!(std::time::Instant::now() < deadline, "clock did not reach expires_at_ms");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n.get("/api/v1/me", Some(&s.token)).await?.expect_error(401, "invalid_token")?;
    let mut d = n.connect("eve (expired)").await?;
    let id = d.next_id();
    let r = d.request(ClientToNode::Hello { id, version: 1, token: s.token.clone(), resume: None }).await?;
    check_error("eve (expired)", &r, ErrorCode::InvalidToken, Some(id))?;
    assert_eq!(d.expect_closed(WAIT).await?, Some(1008));
    n.assert_alive().await?;
    Ok(())
}

#[tokio::test]
async fn flood_gets_rate_limited_with_one_reply_per_request() -> Result<()> {
    let n = node();
    let mut by = Bystanders::start(n, "rl").await?;
    let (_, mut eve) = attacker(n, "rl").await?;
    let ids: Vec<u64> = (0..300).map(|_| eve.next_id()).collect();
    for id in &ids {
        eve.send(&ClientToNode::Ping { id: *id }).await?;
    }
    let mut limited = 0;
    for id in &ids {
        match eve.reply_to(*id, WAIT).await? {
            NodeToClient::Pong { .. } => {}
            NodeToClient::Error { code: ErrorCode::RateLimited, .. } => limited += 1,
            other => panic!("ping {id}: expected pong or rate_limited, got {other:?}"),
        }
    }
    assert!(limited > 0, "300 pings at once (limit 50/s, burst 100) were never rate limited");
    by.check(n, "a flood").await?;
    // Once the flood stops, the device is served again (bounded retry while the bucket refills).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let id = eve.next_id();
        match eve.request(ClientToNode::Ping { id }).await? {
            NodeToClient::Pong { .. } => break,
            other => {
                assert!(std::time::Instant::now() < deadline, "still refused after the flood: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    Ok(())
}
