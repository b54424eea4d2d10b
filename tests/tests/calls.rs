//! Calls inside one zone, driven over real WebSockets (issue 3, point 1):
//! ring-all, first accept wins, decline by all, ring timeout, cancel, busy,
//! offline, unknown user, hang-up from either side, disconnect and resume,
//! history and missed-call notices on both sides.
//!
//! One node serves every test of this file; each test uses its own users.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Result;
use signalling::{CallId, ClientToNode, DeviceId, EndReason, ErrorCode, HistoryKind, NodeToClient, Outcome, Signal};
use xarxa_tests::{connect_call, fake_sdp, now_ms, Node, AUDIO, AUDIO_VIDEO, WAIT};

/// The ring timeout of this file's node.
const RING: Duration = Duration::from_secs(3);
/// The disconnect grace of this file's node.
const GRACE: Duration = Duration::from_secs(2);
/// How long "nothing else happens" is watched.
const QUIET: Duration = Duration::from_millis(400);

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        Node::start(
            "calls",
            &[
                ("XARXA_TIMEOUTS__RING", "3s"),
                ("XARXA_TIMEOUTS__GRACE", "2s"),
                ("XARXA_LIMITS__REGISTRATIONS_PER_ADDRESS", "100000"),
            ],
        )
        .expect("starting the calls node")
    })
}

fn is_ended(call: &CallId) -> impl Fn(&NodeToClient) -> bool + '_ {
    move |e| matches!(e, NodeToClient::Ended { call: c, .. } if c == call)
}

fn is_missed(e: &NodeToClient) -> bool {
    matches!(e, NodeToClient::MissedCall { .. })
}

#[tokio::test]
async fn ring_all_first_accept_wins_and_signals_reach_only_the_two() -> Result<()> {
    let n = node();
    let u = n.users("ra", &["alice", "bob", "carol"]).await?;
    let (alice, bob, carol) = (&u[0], &u[1], &u[2]);
    let mut a1 = n.device(&alice.token, "alice/a1").await?;
    let mut b1 = n.device(&bob.token, "bob/b1").await?;
    let mut b2 = n.device(&bob.token, "bob/b2").await?;
    let mut b3 = n.device(&bob.token, "bob/b3").await?;
    let mut c1 = n.device(&carol.token, "carol/c1").await?;

    let call = a1.call_with(&bob.address, AUDIO_VIDEO).await?;
    for b in [&mut b1, &mut b2, &mut b3] {
        assert_eq!(b.expect_incoming(&call, &alice.address, WAIT).await?, AUDIO_VIDEO, "{}", b.label());
    }
    a1.expect_ringing(&call, WAIT).await?;

    // Nothing is relayed before the call is answered.
    let id = a1.next_id();
    let offer = ClientToNode::Signal { id, call: call.clone(), signal: Signal::Offer { sdp: fake_sdp(100) } };
    a1.expect_error(offer, ErrorCode::CallNotConnected).await?;

    b2.accept(&call).await?;
    b1.expect_ended(&call, EndReason::AnsweredElsewhere, WAIT).await?;
    b3.expect_ended(&call, EndReason::AnsweredElsewhere, WAIT).await?;
    a1.expect_accepted(&call, WAIT).await?;

    // A late accept from a device that was told "answered elsewhere" is refused.
    let id = b3.next_id();
    let late = b3.request(ClientToNode::Accept { id, call: call.clone() }).await?;
    assert!(
        matches!(late, NodeToClient::Error { code: ErrorCode::AlreadyAnswered | ErrorCode::NotInCall, .. }),
        "late accept on b3 should fail with already_answered or not_in_call, got {late:?}"
    );

    // Offer, answer, ICE both ways, chat and media flags go verbatim between a1 and b2.
    let offer = Signal::Offer { sdp: fake_sdp(3000) };
    a1.signal(&call, offer.clone()).await?;
    assert_eq!(b2.expect_signal(&call, WAIT).await?, offer);
    let answer = Signal::Answer { sdp: fake_sdp(2000) };
    b2.signal(&call, answer.clone()).await?;
    assert_eq!(a1.expect_signal(&call, WAIT).await?, answer);
    let ice_a = Signal::Ice {
        candidate: "candidate:1 1 udp 2122260223 10.1.2.3 54400 typ host".into(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
    };
    let ice_b = Signal::Ice { candidate: String::new(), sdp_mid: None, sdp_m_line_index: None };
    a1.signal(&call, ice_a.clone()).await?;
    b2.signal(&call, ice_b.clone()).await?;
    assert_eq!(b2.expect_signal(&call, WAIT).await?, ice_a);
    assert_eq!(a1.expect_signal(&call, WAIT).await?, ice_b);
    let chat = Signal::Chat { text: "hola, què tal?".into() };
    b2.signal(&call, chat.clone()).await?;
    assert_eq!(a1.expect_signal(&call, WAIT).await?, chat);
    let media = Signal::Media { media: AUDIO };
    a1.signal(&call, media.clone()).await?;
    assert_eq!(b2.expect_signal(&call, WAIT).await?, media);

    // Bob's other devices and a third user saw none of it.
    for d in [&mut b1, &mut b3, &mut c1] {
        d.expect_no_event(QUIET).await?;
    }

    // The callee hangs up: the caller is told, the callee gets `ok` only.
    b2.hangup(&call).await?;
    a1.expect_ended(&call, EndReason::HungUp, WAIT).await?;
    b2.expect_no_event_matching("ended", QUIET, is_ended(&call)).await?;

    let ha = n.history_entry(&alice.token, &call, WAIT).await?;
    assert_eq!(
        (ha.kind, ha.outcome, ha.peer.to_string(), ha.media),
        (HistoryKind::Sent, Outcome::HungUpByCallee, bob.address.clone(), AUDIO_VIDEO)
    );
    let hb = n.history_entry(&bob.token, &call, WAIT).await?;
    assert_eq!(
        (hb.kind, hb.outcome, hb.peer.to_string(), hb.media),
        (HistoryKind::Received, Outcome::HungUpByCallee, alice.address.clone(), AUDIO_VIDEO)
    );
    // An answered call leaves no missed-call notice, and carol has no trace of it.
    assert!(n.notices(&bob.token, true).await?.iter().all(|x| x.call != call), "answered call left a notice");
    assert!(n.history(&carol.token).await?.is_empty(), "carol's history should be empty");
    Ok(())
}

#[tokio::test]
async fn caller_hangs_up_and_history_has_talk_time() -> Result<()> {
    let n = node();
    let u = n.users("hu", &["alice", "bob"]).await?;
    let (alice, bob) = (&u[0], &u[1]);
    let mut a1 = n.device(&alice.token, "alice/a1").await?;
    let mut b1 = n.device(&bob.token, "bob/b1").await?;

    let before_ms = now_ms();
    let call = a1.call(&bob.address).await?;
    let after_ms = now_ms();
    b1.expect_incoming(&call, &alice.address, WAIT).await?;
    a1.expect_ringing(&call, WAIT).await?;
    let accept_sent = Instant::now();
    b1.accept(&call).await?;
    let accept_acked = Instant::now();
    a1.expect_accepted(&call, WAIT).await?;
    // Keep the call up for a while (nothing may happen meanwhile).
    a1.expect_no_event(QUIET).await?;
    b1.expect_no_event(QUIET).await?;

    let hangup_sent = Instant::now();
    a1.hangup(&call).await?;
    let hangup_acked = Instant::now();
    b1.expect_ended(&call, EndReason::HungUp, WAIT).await?;
    a1.expect_no_event_matching("ended", QUIET, is_ended(&call)).await?;

    // Talk time is measured by the node between its accept and its hang-up.
    let least = u64::try_from((hangup_sent - accept_acked).as_millis())?.saturating_sub(2);
    let most = u64::try_from((hangup_acked - accept_sent).as_millis())? + 2;
    for (user, kind) in [(alice, HistoryKind::Sent), (bob, HistoryKind::Received)] {
        let h = n.history_entry(&user.token, &call, WAIT).await?;
        assert_eq!((h.kind, h.outcome, h.media), (kind, Outcome::HungUpByCaller, AUDIO), "{}: {h:?}", user.name);
        assert!(
            (least..=most).contains(&h.duration_ms),
            "{}: duration_ms {} should be within {least}..={most} (talk time seen by the clients)",
            user.name,
            h.duration_ms
        );
        assert!(
            h.started_at_ms + 1000 >= before_ms && h.started_at_ms <= after_ms + 1000,
            "{}: started_at_ms {} is not when the call was placed ({before_ms}..{after_ms})",
            user.name,
            h.started_at_ms
        );
    }
    Ok(())
}

#[tokio::test]
async fn declined_when_every_device_rejects() -> Result<()> {
    let n = node();
    let u = n.users("dc", &["alice", "bob"]).await?;
    let (alice, bob) = (&u[0], &u[1]);
    let mut a1 = n.device(&alice.token, "alice/a1").await?;
    let mut b1 = n.device(&bob.token, "bob/b1").await?;
    let mut b2 = n.device(&bob.token, "bob/b2").await?;
    let mut b3 = n.device(&bob.token, "bob/b3").await?;

    let call = a1.call(&bob.address).await?;
    for b in [&mut b1, &mut b2, &mut b3] {
        b.expect_incoming(&call, &alice.address, WAIT).await?;
    }
    a1.expect_ringing(&call, WAIT).await?;

    b1.reject(&call).await?;
    a1.expect_no_event_matching("ended while a device still rings", QUIET, is_ended(&call)).await?;
    b2.reject(&call).await?;
    a1.expect_no_event_matching("ended while a device still rings", QUIET, is_ended(&call)).await?;
    // `hangup` on a ringing callee device declines on that device.
    b3.hangup(&call).await?;
    a1.expect_ended(&call, EndReason::Declined, WAIT).await?;

    let ha = n.history_entry(&alice.token, &call, WAIT).await?;
    assert_eq!((ha.kind, ha.outcome, ha.duration_ms), (HistoryKind::Sent, Outcome::Declined, 0));
    let hb = n.history_entry(&bob.token, &call, WAIT).await?;
    assert_eq!((hb.kind, hb.outcome, hb.duration_ms), (HistoryKind::Received, Outcome::Declined, 0));
    // Declining is not missing: no notice, no push.
    for b in [&mut b1, &mut b2, &mut b3] {
        b.expect_no_event_matching("missed_call", QUIET, is_missed).await?;
    }
    assert!(n.notices(&bob.token, true).await?.is_empty(), "a declined call must not leave a notice");
    Ok(())
}

#[tokio::test]
async fn no_answer_after_ring_timeout_gives_missed_call_notice() -> Result<()> {
    let n = node();
    let u = n.users("na", &["alice", "bob"]).await?;
    let (alice, bob) = (&u[0], &u[1]);
    let mut a1 = n.device(&alice.token, "alice/a1").await?;
    let mut b1 = n.device(&bob.token, "bob/b1").await?;
    let mut b2 = n.device(&bob.token, "bob/b2").await?;

    let placed = Instant::now();
    let call = a1.call(&bob.address).await?;
    for b in [&mut b1, &mut b2] {
        b.expect_incoming(&call, &alice.address, WAIT).await?;
    }
    a1.expect_ringing(&call, WAIT).await?;
    a1.expect_ended(&call, EndReason::NoAnswer, RING + WAIT).await?;
    let rang = placed.elapsed();
    assert!(
        rang + Duration::from_millis(50) >= RING,
        "ended no_answer after {rang:?}, before the {RING:?} ring timeout"
    );

    let mut pushed = Vec::new();
    for b in [&mut b1, &mut b2] {
        b.expect_ended(&call, EndReason::NoAnswer, WAIT).await?;
        let notice = b.expect_missed_call(&call, WAIT).await?;
        assert_eq!(
            (notice.from.to_string(), notice.reason, notice.read),
            (alice.address.clone(), EndReason::NoAnswer, false)
        );
        pushed.push(notice);
    }
    assert_eq!(pushed[0], pushed[1], "both devices should get the same notice");
    let notice = n.notice_for(&bob.token, &call, WAIT).await?;
    assert_eq!(notice, pushed[0]);
    assert!(n.notices(&alice.token, true).await?.is_empty(), "the caller gets no notice");

    let ha = n.history_entry(&alice.token, &call, WAIT).await?;
    assert_eq!((ha.kind, ha.outcome, ha.duration_ms), (HistoryKind::Sent, Outcome::NoAnswer, 0));
    let hb = n.history_entry(&bob.token, &call, WAIT).await?;
    assert_eq!((hb.kind, hb.outcome, hb.duration_ms), (HistoryKind::Missed, Outcome::NoAnswer, 0));

    // Another user can neither read nor mark bob's notice.
    let path = format!("/api/v1/notices/{}/read", notice.id);
    n.post(&path, Some(&alice.token), serde_json::json!({})).await?.expect_error(404, "not_found")?;
    let id = a1.next_id();
    a1.expect_error(ClientToNode::MarkRead { id, notice: notice.id }, ErrorCode::NotFound).await?;
    let id = b1.next_id();
    b1.expect_error(ClientToNode::MarkRead { id, notice: u64::MAX }, ErrorCode::NotFound).await?;
    assert!(!n.notice_for(&bob.token, &call, WAIT).await?.read, "the notice should still be unread");

    // Bob marks it read from a device: gone from unread, kept (read) in all.
    b1.mark_read(notice.id).await?;
    assert!(n.notices(&bob.token, false).await?.iter().all(|x| x.call != call), "read notice still listed as unread");
    let all = n.notices(&bob.token, true).await?;
    let read = all.iter().find(|x| x.call == call).expect("?all=true lists read notices");
    assert!(read.read, "{read:?} should be read");
    n.post("/api/v1/notices/999999999/read", Some(&bob.token), serde_json::json!({}))
        .await?
        .expect_error(404, "not_found")?;
    Ok(())
}

#[tokio::test]
async fn caller_cancels_while_ringing() -> Result<()> {
    let n = node();
    let u = n.users("cn", &["alice", "bob"]).await?;
    let (alice, bob) = (&u[0], &u[1]);
    let mut a1 = n.device(&alice.token, "alice/a1").await?;
    let mut b1 = n.device(&bob.token, "bob/b1").await?;
    let mut b2 = n.device(&bob.token, "bob/b2").await?;

    let call = a1.call(&bob.address).await?;
    for b in [&mut b1, &mut b2] {
        b.expect_incoming(&call, &alice.address, WAIT).await?;
    }
    a1.expect_ringing(&call, WAIT).await?;
    a1.hangup(&call).await?;
    for b in [&mut b1, &mut b2] {
        b.expect_ended(&call, EndReason::Cancelled, WAIT).await?;
        let notice = b.expect_missed_call(&call, WAIT).await?;
        assert_eq!((notice.from.to_string(), notice.reason), (alice.address.clone(), EndReason::Cancelled));
    }
    a1.expect_no_event_matching("ended (the canceller gets ok)", QUIET, is_ended(&call)).await?;

    // Accepting a cancelled call fails.
    let id = b1.next_id();
    let late = b1.request(ClientToNode::Accept { id, call: call.clone() }).await?;
    assert!(matches!(late, NodeToClient::Error { .. }), "accepting a cancelled call should fail, got {late:?}");

    let ha = n.history_entry(&alice.token, &call, WAIT).await?;
    assert_eq!((ha.kind, ha.outcome), (HistoryKind::Sent, Outcome::Cancelled));
    let hb = n.history_entry(&bob.token, &call, WAIT).await?;
    assert_eq!((hb.kind, hb.outcome), (HistoryKind::Missed, Outcome::Cancelled));
    assert_eq!(n.notice_for(&bob.token, &call, WAIT).await?.reason, EndReason::Cancelled);
    Ok(())
}

#[tokio::test]
async fn busy_when_callee_is_in_another_call() -> Result<()> {
    let n = node();
    let u = n.users("bz", &["alice", "bob", "carol"]).await?;
    let (alice, bob, carol) = (&u[0], &u[1], &u[2]);
    let mut a1 = n.device(&alice.token, "alice/a1").await?;
    let mut b1 = n.device(&bob.token, "bob/b1").await?;
    let mut c1 = n.device(&carol.token, "carol/c1").await?;
    let talk = connect_call(&mut c1, &mut b1, &bob.address).await?;

    let call = a1.call(&bob.address).await?;
    a1.expect_ended(&call, EndReason::Busy, WAIT).await?;
    // Bob's device does not ring; being online and not in *that* call, it is
    // told of the missed call at once (SPEC item 5).
    let pushed = b1.expect_missed_call(&call, WAIT).await?;
    assert_eq!((pushed.reason, pushed.from.to_string()), (EndReason::Busy, alice.address.clone()));
    b1.expect_no_event(QUIET).await?;
    c1.expect_no_event(QUIET).await?;
    // A device in a call cannot place another.
    let id = c1.next_id();
    c1.expect_error(ClientToNode::Call { id, to: alice.address.clone(), media: AUDIO }, ErrorCode::AlreadyInCall)
        .await?;
    // The call in progress still works.
    let chat = Signal::Chat { text: "encara hi ets?".into() };
    c1.signal(&talk, chat.clone()).await?;
    assert_eq!(b1.expect_signal(&talk, WAIT).await?, chat);

    let ha = n.history_entry(&alice.token, &call, WAIT).await?;
    assert_eq!((ha.kind, ha.outcome), (HistoryKind::Sent, Outcome::Busy));
    let hb = n.history_entry(&bob.token, &call, WAIT).await?;
    assert_eq!((hb.kind, hb.outcome, hb.peer.to_string()), (HistoryKind::Missed, Outcome::Busy, alice.address.clone()));
    let notice = n.notice_for(&bob.token, &call, WAIT).await?;
    assert_eq!(notice, pushed);

    // After the call, a new device of bob's gets the unread notice after welcome.
    c1.hangup(&talk).await?;
    b1.expect_ended(&talk, EndReason::HungUp, WAIT).await?;
    let mut b2 = n.device(&bob.token, "bob/b2").await?;
    assert_eq!(b2.expect_missed_call(&call, WAIT).await?, notice);
    Ok(())
}

#[tokio::test]
async fn offline_callee_gets_the_notice_when_connecting() -> Result<()> {
    let n = node();
    let u = n.users("of", &["alice", "bob"]).await?;
    let (alice, bob) = (&u[0], &u[1]);
    let mut a1 = n.device(&alice.token, "alice/a1").await?;

    let call = a1.call(&bob.address).await?;
    a1.expect_ended(&call, EndReason::Offline, WAIT).await?;
    let ha = n.history_entry(&alice.token, &call, WAIT).await?;
    assert_eq!((ha.kind, ha.outcome), (HistoryKind::Sent, Outcome::Offline));
    let hb = n.history_entry(&bob.token, &call, WAIT).await?;
    assert_eq!((hb.kind, hb.outcome), (HistoryKind::Missed, Outcome::Offline));
    let notice = n.notice_for(&bob.token, &call, WAIT).await?;

    let mut b1 = n.device(&bob.token, "bob/b1").await?;
    let pushed = b1.expect_missed_call(&call, WAIT).await?;
    assert_eq!(pushed, notice);
    assert_eq!(
        (pushed.from.to_string(), pushed.reason, pushed.read),
        (alice.address.clone(), EndReason::Offline, false)
    );
    // A second device gets it too, while it is unread; once read, new devices don't.
    let mut b2 = n.device(&bob.token, "bob/b2").await?;
    assert_eq!(b2.expect_missed_call(&call, WAIT).await?, notice);
    b2.mark_read(notice.id).await?;
    let mut b3 = n.device(&bob.token, "bob/b3").await?;
    b3.expect_no_event_matching("missed_call for a read notice", QUIET, is_missed).await?;
    Ok(())
}

#[tokio::test]
async fn unknown_user_bad_address_and_self_call() -> Result<()> {
    let n = node();
    let u = n.users("uu", &["alice"]).await?;
    let alice = &u[0];
    let mut a1 = n.device(&alice.token, "alice/a1").await?;

    let call = a1.call(&n.address("uu-nobody")).await?;
    a1.expect_ended(&call, EndReason::UnknownUser, WAIT).await?;
    let ha = n.history_entry(&alice.token, &call, WAIT).await?;
    assert_eq!((ha.kind, ha.outcome), (HistoryKind::Sent, Outcome::UnknownUser));
    // A bare name means this zone.
    let call = a1.call("uu-nobody2").await?;
    a1.expect_ended(&call, EndReason::UnknownUser, WAIT).await?;

    let id = a1.next_id();
    a1.expect_error(ClientToNode::Call { id, to: "not an address!".into(), media: AUDIO }, ErrorCode::InvalidAddress)
        .await?;
    let id = a1.next_id();
    a1.expect_error(ClientToNode::Call { id, to: alice.address.clone(), media: AUDIO }, ErrorCode::CannotCallSelf)
        .await?;
    Ok(())
}

#[tokio::test]
async fn disconnect_mid_call_ends_with_connection_lost_after_grace() -> Result<()> {
    let n = node();
    let u = n.users("dl", &["alice", "bob"]).await?;
    let (alice, bob) = (&u[0], &u[1]);
    let mut a1 = n.device(&alice.token, "alice/a1").await?;
    let mut b1 = n.device(&bob.token, "bob/b1").await?;
    let call = connect_call(&mut a1, &mut b1, &bob.address).await?;

    let dropped = Instant::now();
    b1.drop_connection();
    a1.expect_ended(&call, EndReason::ConnectionLost, GRACE + WAIT).await?;
    let after = dropped.elapsed();
    assert!(after + Duration::from_millis(50) >= GRACE, "connection_lost after {after:?}, before the {GRACE:?} grace");

    for user in [alice, bob] {
        let h = n.history_entry(&user.token, &call, WAIT).await?;
        assert_eq!(h.outcome, Outcome::ConnectionLost, "{}: {h:?}", user.name);
    }
    // Bob is free again: a new call to him rings his new device.
    let mut b2 = n.device(&bob.token, "bob/b2").await?;
    let again = connect_call(&mut a1, &mut b2, &bob.address).await?;
    b2.hangup(&again).await?;
    a1.expect_ended(&again, EndReason::HungUp, WAIT).await?;
    Ok(())
}

#[tokio::test]
async fn caller_disconnect_mid_call_tells_the_callee() -> Result<()> {
    let n = node();
    let u = n.users("dc2", &["alice", "bob"]).await?;
    let (alice, bob) = (&u[0], &u[1]);
    let mut a1 = n.device(&alice.token, "alice/a1").await?;
    let mut b1 = n.device(&bob.token, "bob/b1").await?;
    let call = connect_call(&mut a1, &mut b1, &bob.address).await?;
    a1.drop_connection();
    b1.expect_ended(&call, EndReason::ConnectionLost, GRACE + WAIT).await?;
    let h = n.history_entry(&bob.token, &call, WAIT).await?;
    assert_eq!((h.kind, h.outcome), (HistoryKind::Received, Outcome::ConnectionLost));
    Ok(())
}

#[tokio::test]
async fn resume_within_grace_keeps_the_call() -> Result<()> {
    let n = node();
    let u = n.users("rs", &["alice", "bob"]).await?;
    let (alice, bob) = (&u[0], &u[1]);
    let mut a1 = n.device(&alice.token, "alice/a1").await?;
    let mut b1 = n.device(&bob.token, "bob/b1").await?;
    let call = connect_call(&mut a1, &mut b1, &bob.address).await?;
    let old: DeviceId = b1.id.clone().expect("welcome gave a device id");

    b1.drop_connection();
    // Someone else cannot take bob's device over. (This round trip also
    // gives the node time to see bob's socket go.)
    let mut intruder = n.connect("alice/intruder").await?;
    let id = intruder.next_id();
    let hello = ClientToNode::Hello { id, version: 1, token: alice.token.clone(), resume: Some(old.clone()) };
    let r = intruder.request(hello).await?;
    xarxa_tests::check_error("alice/intruder", &r, ErrorCode::ResumeFailed, Some(id))?;

    // Sent while bob is away: held for his device and delivered after the new welcome.
    let held = Signal::Chat { text: "hi ha algú?".into() };
    a1.signal(&call, held.clone()).await?;

    let mut b1 = n.connect("bob/b1-again").await?;
    let welcome = b1.hello_with(&bob.token, Some(old.clone())).await?;
    match &welcome {
        NodeToClient::Welcome { resumed, device, .. } => {
            assert!(resumed, "welcome should say resumed: {welcome:?}");
            assert_eq!(device, &old, "the resumed device keeps its id");
        }
        other => panic!("expected welcome, got {other:?}"),
    }
    assert_eq!(b1.expect_signal(&call, WAIT).await?, held);

    // The grace period passes without the call ending.
    a1.expect_no_event_matching("ended after a resume", GRACE + Duration::from_secs(1), is_ended(&call)).await?;
    let back = Signal::Chat { text: "sí, aquí".into() };
    b1.signal(&call, back.clone()).await?;
    assert_eq!(a1.expect_signal(&call, WAIT).await?, back);
    a1.hangup(&call).await?;
    b1.expect_ended(&call, EndReason::HungUp, WAIT).await?;
    let h = n.history_entry(&bob.token, &call, WAIT).await?;
    assert_eq!(h.outcome, Outcome::HungUpByCaller);

    // Resuming a device id nobody has fails.
    let mut b2 = n.connect("bob/b2").await?;
    let id = b2.next_id();
    let hello = ClientToNode::Hello {
        id,
        version: 1,
        token: bob.token.clone(),
        resume: Some(DeviceId("d-no-such-device".into())),
    };
    let r = b2.request(hello).await?;
    xarxa_tests::check_error("bob/b2", &r, ErrorCode::ResumeFailed, Some(id))?;
    Ok(())
}

#[tokio::test]
async fn history_pages_newest_first_and_can_be_deleted() -> Result<()> {
    let n = node();
    let u = n.users("hp", &["alice", "bob"]).await?;
    let (alice, bob) = (&u[0], &u[1]);
    let mut a1 = n.device(&alice.token, "alice/a1").await?;
    // Bob is offline: each call ends at once.
    let mut calls = Vec::new();
    for _ in 0..5 {
        let call = a1.call(&bob.address).await?;
        a1.expect_ended(&call, EndReason::Offline, WAIT).await?;
        calls.push(call);
    }
    n.history_entry(&alice.token, &calls[4], WAIT).await?;

    let mut seen = Vec::new();
    let mut path = "/api/v1/history?limit=2".to_owned();
    for page in 0..3 {
        let r = n.get(&path, Some(&alice.token)).await?.expect_status(200)?;
        let entries: Vec<signalling::HistoryEntry> = serde_json::from_value(r.body["entries"].clone())?;
        let want = if page < 2 { 2 } else { 1 };
        assert_eq!(entries.len(), want, "page {page}: {}", r.body);
        seen.extend(entries);
        let next = &r.body["next"];
        if page < 2 {
            let next = match next {
                serde_json::Value::Number(x) => x.to_string(),
                serde_json::Value::String(s) => s.clone(),
                other => panic!("page {page} should have a next cursor, got {other}"),
            };
            path = format!("/api/v1/history?limit=2&before={next}");
        } else {
            assert!(next.is_null(), "last page should have next: null, got {next}");
        }
    }
    let got: Vec<CallId> = seen.iter().map(|e| e.call.clone()).collect();
    let want: Vec<CallId> = calls.iter().rev().cloned().collect();
    assert_eq!(got, want, "history should list the five calls newest first");
    assert!(seen.windows(2).all(|w| w[0].id > w[1].id), "entry ids should decrease down the list: {seen:?}");

    // Delete one: bob may not, alice may.
    let victim = seen[1].id;
    n.delete(&format!("/api/v1/history/{victim}"), Some(&bob.token)).await?.expect_error(404, "not_found")?;
    n.delete(&format!("/api/v1/history/{victim}"), Some(&alice.token)).await?.expect_status(204)?;
    let left = n.history(&alice.token).await?;
    assert_eq!(left.len(), 4);
    assert!(left.iter().all(|e| e.id != victim));
    n.delete(&format!("/api/v1/history/{victim}"), Some(&alice.token)).await?.expect_error(404, "not_found")?;

    // Delete all of alice's: bob's own history is untouched.
    n.delete("/api/v1/history", Some(&alice.token)).await?.expect_status(204)?;
    assert!(n.history(&alice.token).await?.is_empty());
    assert_eq!(n.history(&bob.token).await?.len(), 5, "bob's history must not change when alice deletes hers");
    Ok(())
}
