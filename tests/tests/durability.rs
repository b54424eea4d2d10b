//! What the node acknowledged is still there after a restart (issue 3,
//! point 1's last item) and after `kill -9` (point 2). Each test has its own
//! node, since each restarts it.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use futures_util::future::try_join_all;
use serde_json::json;
use signalling::{CallId, EndReason, HistoryKind, Outcome};
use xarxa_tests::{connect_call, Node, PASSWORD, WAIT};

const QUIET: std::time::Duration = std::time::Duration::from_millis(400);

fn start(zone: &str) -> Result<Node> {
    Node::start(
        zone,
        &[
            ("XARXA_TIMEOUTS__RING", "2s"),
            ("XARXA_TIMEOUTS__GRACE", "1s"),
            ("XARXA_LIMITS__REGISTRATIONS_PER_ADDRESS", "100000"),
        ],
    )
}

#[tokio::test]
async fn history_and_notices_survive_a_restart() -> Result<()> {
    let mut n = start("restart")?;
    let u = n.users("r", &["alice", "bob"]).await?;
    let (alice, bob) = (u[0].clone(), u[1].clone());
    let mut a1 = n.device(&alice.token, "alice/a1").await?;
    // 1: bob offline (he has never connected).
    let offline = a1.call(&bob.address).await?;
    a1.expect_ended(&offline, EndReason::Offline, WAIT).await?;
    let mut b1 = n.device(&bob.token, "bob/b1").await?;
    let mut b2 = n.device(&bob.token, "bob/b2").await?;
    b1.expect_missed_call(&offline, WAIT).await?;
    b2.expect_missed_call(&offline, WAIT).await?;

    // 2: answered on b1, alice hangs up.
    let answered = connect_call(&mut a1, &mut b1, &bob.address).await?;
    b2.expect_ended(&answered, EndReason::AnsweredElsewhere, WAIT).await?;
    a1.hangup(&answered).await?;
    b1.expect_ended(&answered, EndReason::HungUp, WAIT).await?;
    // 3: declined by both devices.
    let declined = a1.call(&bob.address).await?;
    for b in [&mut b1, &mut b2] {
        b.expect_incoming(&declined, &alice.address, WAIT).await?;
        b.reject(&declined).await?;
    }
    a1.expect_ended(&declined, EndReason::Declined, WAIT).await?;
    // 4: nobody answers.
    let unanswered = a1.call(&bob.address).await?;
    a1.expect_ended(&unanswered, EndReason::NoAnswer, WAIT + WAIT).await?;
    // 5: alice cancels.
    let cancelled = a1.call(&bob.address).await?;
    b1.expect_incoming(&cancelled, &alice.address, WAIT).await?;
    a1.hangup(&cancelled).await?;
    b1.expect_ended(&cancelled, EndReason::Cancelled, WAIT).await?;
    drop((b1, b2));

    let want: Vec<(CallId, HistoryKind, Outcome, HistoryKind, Outcome)> = vec![
        (cancelled.clone(), HistoryKind::Sent, Outcome::Cancelled, HistoryKind::Missed, Outcome::Cancelled),
        (unanswered.clone(), HistoryKind::Sent, Outcome::NoAnswer, HistoryKind::Missed, Outcome::NoAnswer),
        (declined.clone(), HistoryKind::Sent, Outcome::Declined, HistoryKind::Received, Outcome::Declined),
        (answered.clone(), HistoryKind::Sent, Outcome::HungUpByCaller, HistoryKind::Received, Outcome::HungUpByCaller),
        (offline.clone(), HistoryKind::Sent, Outcome::Offline, HistoryKind::Missed, Outcome::Offline),
    ];
    n.history_entry(&alice.token, &cancelled, WAIT).await?;
    n.history_entry(&bob.token, &cancelled, WAIT).await?;
    let ha = n.history(&alice.token).await?;
    let hb = n.history(&bob.token).await?;
    let summary =
        |h: &[signalling::HistoryEntry]| h.iter().map(|e| (e.call.clone(), e.kind, e.outcome)).collect::<Vec<_>>();
    assert_eq!(summary(&ha), want.iter().map(|w| (w.0.clone(), w.1, w.2)).collect::<Vec<_>>(), "alice's history");
    assert_eq!(summary(&hb), want.iter().map(|w| (w.0.clone(), w.3, w.4)).collect::<Vec<_>>(), "bob's history");

    let notices = n.notices(&bob.token, true).await?;
    let by_call: HashMap<CallId, EndReason> = notices.iter().map(|x| (x.call.clone(), x.reason)).collect();
    assert_eq!(
        by_call,
        HashMap::from([
            (unanswered.clone(), EndReason::NoAnswer),
            (cancelled.clone(), EndReason::Cancelled),
            (offline.clone(), EndReason::Offline),
        ]),
        "bob's notices: {notices:?}"
    );
    assert!(n.notices(&alice.token, true).await?.is_empty());
    // Mark one read over HTTP.
    let read = notices.iter().find(|x| x.call == unanswered).unwrap().id;
    n.post(&format!("/api/v1/notices/{read}/read"), Some(&bob.token), json!({})).await?.expect_status(204)?;
    let notices = n.notices(&bob.token, true).await?;
    drop(a1);

    // A clean stop removes node.json; the restarted node has it all.
    assert!(n.stop()?, "the node should stop on SIGTERM");
    assert!(!n.data_dir().join("node.json").exists(), "node.json should be removed on clean shutdown");
    n.start_again()?;

    assert_eq!(n.history(&alice.token).await?, ha, "alice's history after restart (her session survives too)");
    assert_eq!(n.history(&bob.token).await?, hb, "bob's history after restart");
    assert_eq!(n.notices(&bob.token, true).await?, notices, "bob's notices after restart");
    let unread: Vec<CallId> = n.notices(&bob.token, false).await?.into_iter().map(|x| x.call).collect();
    assert_eq!(unread, vec![offline.clone(), cancelled.clone()], "unread notices, oldest first");

    // A device connecting now gets the unread ones after welcome, not the read one.
    let mut b3 = n.device(&bob.token, "bob/b3").await?;
    b3.expect_missed_call(&offline, WAIT).await?;
    b3.expect_missed_call(&cancelled, WAIT).await?;
    b3.expect_no_event_matching(
        "missed_call for the read notice",
        QUIET,
        |e| matches!(e, signalling::NodeToClient::MissedCall { notice } if notice.call == unanswered),
    )
    .await?;
    Ok(())
}

/// Outcomes of the calls in the batch, as (alice's, bob's) history outcome.
#[derive(Clone, Copy, Debug)]
enum Ending {
    Answered,
    Declined,
    Cancelled,
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() -> Result<()> {
    const USERS: usize = 200;
    const CALLS: usize = 12;
    let mut n = start("kill")?;

    // A batch of registrations, each acknowledged with 201.
    let names: Vec<String> = (0..USERS).map(|i| format!("k{i:03}")).collect();
    for chunk in names.chunks(8) {
        try_join_all(chunk.iter().map(|name| n.register(name, PASSWORD))).await?;
    }

    // A batch of calls that end, each end acknowledged (ok to one side, ended to the other).
    let u = n.users("kc", &["alice", "bob", "carol", "dave"]).await?;
    let (alice, bob, carol, dave) = (u[0].clone(), u[1].clone(), u[2].clone(), u[3].clone());
    let mut a1 = n.device(&alice.token, "alice/a1").await?;
    let mut b1 = n.device(&bob.token, "bob/b1").await?;
    let mut calls: Vec<(CallId, Ending)> = Vec::new();
    let mut read_notice = 0;
    let mut deleted = 0;
    let mut carol_other = String::new();
    for i in 0..CALLS {
        if i == CALLS / 2 {
            // Halfway, account changes, each acknowledged.
            let first_cancelled = calls.iter().find(|c| matches!(c.1, Ending::Cancelled)).unwrap().0.clone();
            read_notice = n.notice_for(&bob.token, &first_cancelled, WAIT).await?.id;
            b1.mark_read(read_notice).await?;
            deleted = n.history_entry(&alice.token, &calls[0].0, WAIT).await?.id;
            n.delete(&format!("/api/v1/history/{deleted}"), Some(&alice.token)).await?.expect_status(204)?;
            carol_other = n.login(&carol.name, PASSWORD).await?;
            let change = json!({"old": PASSWORD, "new": "a brand new secret"});
            n.post("/api/v1/password", Some(&carol.token), change).await?.expect_status(204)?;
            n.post("/api/v1/logout", Some(&dave.token), json!({})).await?.expect_status(204)?;
        }
        let ending = [Ending::Answered, Ending::Declined, Ending::Cancelled][i % 3];
        let call = a1.call(&bob.address).await?;
        b1.expect_incoming(&call, &alice.address, WAIT).await?;
        match ending {
            Ending::Answered => {
                b1.accept(&call).await?;
                a1.expect_accepted(&call, WAIT).await?;
                a1.hangup(&call).await?;
                b1.expect_ended(&call, EndReason::HungUp, WAIT).await?;
            }
            Ending::Declined => {
                b1.reject(&call).await?;
                a1.expect_ended(&call, EndReason::Declined, WAIT).await?;
            }
            Ending::Cancelled => {
                a1.hangup(&call).await?;
                b1.expect_ended(&call, EndReason::Cancelled, WAIT).await?;
                b1.expect_missed_call(&call, WAIT).await?;
            }
        }
        calls.push((call, ending));
    }

    // Crash right after the last acknowledgement.
    n.kill9()?;
    drop((a1, b1));
    n.start_again()?;

    for chunk in names.chunks(20) {
        let replies = try_join_all(chunk.iter().map(|name| n.try_register(name, "another password"))).await?;
        for (name, r) in chunk.iter().zip(replies) {
            r.expect_error(409, "name_taken").with_context(|| format!("{name} was acknowledged before the crash"))?;
        }
    }
    for name in [&names[0], &names[USERS / 2], &names[USERS - 1]] {
        n.login(name, PASSWORD).await.with_context(|| format!("{name} logs in after the crash"))?;
    }
    n.get("/api/v1/me", Some(&alice.token)).await?.expect_status(200).context("sessions survive")?;
    n.try_login(&carol.name, PASSWORD, None).await?.expect_error(401, "invalid_credentials")?;
    n.login(&carol.name, "a brand new secret").await.context("carol's new password survives")?;
    n.get("/api/v1/me", Some(&carol.token)).await?.expect_status(200).context("the changing session stays")?;
    n.get("/api/v1/me", Some(&carol_other)).await?.expect_error(401, "invalid_token").context("other session ended")?;
    n.get("/api/v1/me", Some(&dave.token)).await?.expect_error(401, "invalid_token").context("logout survives")?;

    let ha = n.history(&alice.token).await?;
    let hb = n.history(&bob.token).await?;
    assert!(ha.iter().all(|e| e.id != deleted), "the deleted entry came back: {ha:?}");
    assert_eq!(ha.len(), CALLS - 1, "alice's history: {ha:?}");
    assert_eq!(hb.len(), CALLS, "bob's history: {hb:?}");
    for (call, ending) in &calls {
        let (kind_b, outcome) = match ending {
            Ending::Answered => (HistoryKind::Received, Outcome::HungUpByCaller),
            Ending::Declined => (HistoryKind::Received, Outcome::Declined),
            Ending::Cancelled => (HistoryKind::Missed, Outcome::Cancelled),
        };
        let b = hb.iter().find(|e| &e.call == call).with_context(|| format!("bob lost call {}", call.0))?;
        assert_eq!((b.kind, b.outcome), (kind_b, outcome), "bob, call {}", call.0);
        if call != &calls[0].0 {
            let a = ha.iter().find(|e| &e.call == call).with_context(|| format!("alice lost call {}", call.0))?;
            assert_eq!((a.kind, a.outcome), (HistoryKind::Sent, outcome), "alice, call {}", call.0);
        }
    }
    let notices = n.notices(&bob.token, true).await?;
    let cancelled: Vec<&CallId> = calls.iter().filter(|c| matches!(c.1, Ending::Cancelled)).map(|c| &c.0).collect();
    assert_eq!(notices.len(), cancelled.len(), "bob's notices: {notices:?}");
    for call in cancelled {
        let x = notices.iter().find(|x| &x.call == call).with_context(|| format!("notice for {} lost", call.0))?;
        assert_eq!(x.read, x.id == read_notice, "read flag of notice {x:?}");
    }
    Ok(())
}
