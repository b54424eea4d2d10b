//! Virtual-time tests of the switchboard: every transition, and random
//! sequences checked against invariants.

use super::*;
use proptest::prelude::*;

const AUDIO: Media = Media { audio: true, video: false };

struct Harness {
    sb: Switchboard,
    now: Time,
    sent: Vec<(DeviceId, NodeToClient)>,
    records: Vec<CallRecord>,
    removed: Vec<DeviceId>,
    to_nodes: Vec<(Address, NodeToNode)>,
    next_call: u64,
    next_req: u64,
}

fn dev(s: &str) -> DeviceId {
    DeviceId(s.to_string())
}

fn addr(s: &str) -> Address {
    Address::parse(s).expect("test address")
}

impl Harness {
    fn new() -> Self {
        Self {
            sb: Switchboard::new(Config { ring_timeout_ms: 30_000, grace_ms: 10_000 }),
            now: Time(1_000),
            sent: Vec::new(),
            records: Vec::new(),
            removed: Vec::new(),
            to_nodes: Vec::new(),
            next_call: 0,
            next_req: 100,
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.sb.poll_output() {
            match o {
                Output::Send { to, msg } => self.sent.push((to, msg)),
                Output::CallFinished(r) => self.records.push(r),
                Output::DeviceRemoved { device } => self.removed.push(device),
                Output::ToNode { peer, msg } => self.to_nodes.push((peer, msg)),
            }
        }
    }

    fn input(&mut self, i: Input) {
        self.sb.handle_input(self.now, i);
        self.drain();
    }

    /// Jumps virtual time forward by `ms`, firing every timer on the way.
    fn advance(&mut self, ms: u64) {
        let end = self.now.plus_ms(ms);
        while let Some(t) = self.sb.poll_timeout().filter(|t| *t <= end) {
            self.now = t;
            self.sb.handle_timeout(t);
            self.drain();
        }
        self.now = end;
    }

    fn online(&mut self, d: &str, user: &str) {
        self.input(Input::DeviceOnline { device: dev(d), user: addr(user) });
    }

    fn take(&mut self) -> Vec<(DeviceId, NodeToClient)> {
        std::mem::take(&mut self.sent)
    }

    fn dial_known(&mut self, d: &str, to: &str, known: bool) -> CallId {
        self.next_call += 1;
        self.next_req += 1;
        let call = CallId(format!("call{}", self.next_call));
        self.input(Input::Dial {
            device: dev(d),
            id: self.next_req,
            call: call.clone(),
            callee: addr(to),
            route: if known { Route::Local } else { Route::Refused(EndReason::UnknownUser) },
            media: AUDIO,
        });
        call
    }

    fn dial(&mut self, d: &str, to: &str) -> CallId {
        self.dial_known(d, to, true)
    }

    fn req(&mut self, d: &str, make: impl FnOnce(RequestId) -> ClientToNode) -> RequestId {
        self.next_req += 1;
        let id = self.next_req;
        self.input(Input::Request { device: dev(d), msg: make(id) });
        id
    }

    fn accept(&mut self, d: &str, call: &CallId) -> RequestId {
        let call = call.clone();
        self.req(d, |id| ClientToNode::Accept { id, call })
    }

    fn reject(&mut self, d: &str, call: &CallId) -> RequestId {
        let call = call.clone();
        self.req(d, |id| ClientToNode::Reject { id, call })
    }

    fn hangup(&mut self, d: &str, call: &CallId) -> RequestId {
        let call = call.clone();
        self.req(d, |id| ClientToNode::Hangup { id, call })
    }

    fn signal(&mut self, d: &str, call: &CallId, text: &str) -> RequestId {
        let call = call.clone();
        let signal = Signal::Chat { text: text.into() };
        self.req(d, |id| ClientToNode::Signal { id, call, signal })
    }
}

fn ended(call: &CallId, reason: EndReason) -> NodeToClient {
    NodeToClient::Ended { call: call.clone(), reason }
}

fn to(d: &str, m: NodeToClient) -> (DeviceId, NodeToClient) {
    (dev(d), m)
}

fn error_code(sent: &[(DeviceId, NodeToClient)], d: &str) -> Option<ErrorCode> {
    sent.iter().find_map(|(to, m)| match m {
        NodeToClient::Error { code, .. } if *to == dev(d) => Some(*code),
        _ => None,
    })
}

/// alice on a1; bob on b1, b2, b3.
fn three_devices() -> Harness {
    let mut h = Harness::new();
    h.online("a1", "alice@gracia");
    for d in ["b1", "b2", "b3"] {
        h.online(d, "bob@gracia");
    }
    h.take();
    h
}

#[test]
fn rings_all_devices_and_first_accept_wins() {
    let mut h = three_devices();
    let c = h.dial("a1", "bob@gracia");
    let sent = h.take();
    for d in ["b1", "b2", "b3"] {
        assert!(
            sent.contains(&to(d, NodeToClient::Incoming { call: c.clone(), from: addr("alice@gracia"), media: AUDIO }))
        );
    }
    assert!(sent.contains(&to("a1", NodeToClient::Ringing { call: c.clone() })));
    let id = h.accept("b2", &c);
    let sent = h.take();
    assert_eq!(
        sent,
        vec![
            to("b2", NodeToClient::Ok { id }),
            to("a1", NodeToClient::Accepted { call: c.clone() }),
            to("b1", ended(&c, EndReason::AnsweredElsewhere)),
            to("b3", ended(&c, EndReason::AnsweredElsewhere)),
        ]
    );
    // A late accept on another device is refused with a typed error.
    h.accept("b3", &c);
    assert_eq!(error_code(&h.take(), "b3"), Some(ErrorCode::AlreadyAnswered));
    assert_eq!(h.sb.stats(), Stats { devices: 4, ringing: 0, connected: 1 });
}

#[test]
fn signals_reach_only_the_other_party() {
    let mut h = three_devices();
    h.online("e1", "eve@gracia");
    let c = h.dial("a1", "bob@gracia");
    // Before answer: not connected.
    h.signal("a1", &c, "early");
    assert_eq!(error_code(&h.take(), "a1"), Some(ErrorCode::CallNotConnected));
    h.accept("b1", &c);
    h.take();
    h.signal("a1", &c, "hi");
    let sent = h.take();
    assert_eq!(sent.len(), 2);
    assert!(
        sent.contains(&to("b1", NodeToClient::Signal { call: c.clone(), signal: Signal::Chat { text: "hi".into() } }))
    );
    h.signal("b1", &c, "hello");
    assert!(h
        .take()
        .contains(&to("a1", NodeToClient::Signal { call: c.clone(), signal: Signal::Chat { text: "hello".into() } })));
    // Another device of the callee, and a third user, are not in the call.
    h.signal("b2", &c, "intrude");
    assert_eq!(error_code(&h.take(), "b2"), Some(ErrorCode::NotInCall));
    h.signal("e1", &c, "intrude");
    let sent = h.take();
    assert_eq!(error_code(&sent, "e1"), Some(ErrorCode::NotInCall));
    assert!(sent.iter().all(|(d, _)| *d == dev("e1")));
    h.hangup("e1", &c);
    assert_eq!(error_code(&h.take(), "e1"), Some(ErrorCode::NotInCall));
}

#[test]
fn reject_by_all_is_declined() {
    let mut h = three_devices();
    let c = h.dial("a1", "bob@gracia");
    h.take();
    h.reject("b1", &c);
    h.reject("b2", &c);
    let sent = h.take();
    assert!(!sent.iter().any(|(d, _)| *d == dev("a1")), "caller keeps waiting while a device rings");
    h.reject("b3", &c);
    let sent = h.take();
    assert!(sent.contains(&to("a1", ended(&c, EndReason::Declined))));
    assert_eq!(h.records.len(), 1);
    assert_eq!(h.records[0].outcome(), Outcome::Declined);
    assert!(!h.records[0].is_missed());
    assert_eq!(h.sb.call_of(&dev("a1")), None);
}

#[test]
fn ring_timeout_is_no_answer_and_missed() {
    let mut h = three_devices();
    let c = h.dial("a1", "bob@gracia");
    h.take();
    assert_eq!(h.sb.poll_timeout(), Some(h.now.plus_ms(30_000)));
    h.advance(29_999);
    assert!(h.take().is_empty());
    h.advance(1);
    let sent = h.take();
    for d in ["a1", "b1", "b2", "b3"] {
        assert!(sent.contains(&to(d, ended(&c, EndReason::NoAnswer))), "{d} told");
    }
    assert!(h.records[0].is_missed());
    assert_eq!(h.sb.poll_timeout(), None);
}

#[test]
fn cancel_stops_ringing() {
    let mut h = three_devices();
    let c = h.dial("a1", "bob@gracia");
    h.take();
    let id = h.hangup("a1", &c);
    let sent = h.take();
    assert!(sent.contains(&to("a1", NodeToClient::Ok { id })));
    for d in ["b1", "b2", "b3"] {
        assert!(sent.contains(&to(d, ended(&c, EndReason::Cancelled))));
    }
    assert!(!sent.contains(&to("a1", ended(&c, EndReason::Cancelled))), "the canceller is not told twice");
    assert_eq!(h.records[0].outcome(), Outcome::Cancelled);
    assert!(h.records[0].is_missed());
    assert_eq!(h.sb.poll_timeout(), None, "ring timer cleared");
}

#[test]
fn busy_offline_unknown() {
    let mut h = three_devices();
    h.online("c1", "carol@gracia");
    let c = h.dial("a1", "bob@gracia");
    h.accept("b1", &c);
    h.take();
    let c2 = h.dial("c1", "bob@gracia");
    assert!(h.take().contains(&to("c1", ended(&c2, EndReason::Busy))));
    // A caller is busy too while its own call rings.
    let c3 = h.dial("c1", "alice@gracia");
    assert!(h.take().contains(&to("c1", ended(&c3, EndReason::Busy))));
    let c4 = h.dial("c1", "dave@gracia");
    assert!(h.take().contains(&to("c1", ended(&c4, EndReason::Offline))));
    let c5 = h.dial_known("c1", "nobody@gracia", false);
    assert!(h.take().contains(&to("c1", ended(&c5, EndReason::UnknownUser))));
    let outcomes: Vec<_> = h.records.iter().map(|r| (r.outcome(), r.is_missed())).collect();
    assert_eq!(
        outcomes,
        vec![(Outcome::Busy, true), (Outcome::Busy, true), (Outcome::Offline, true), (Outcome::UnknownUser, false)]
    );
    assert_eq!(h.sb.call_of(&dev("c1")), None, "refused calls hold nothing");
}

#[test]
fn self_call_and_double_dial_refused() {
    let mut h = three_devices();
    h.dial("a1", "alice@gracia");
    assert_eq!(error_code(&h.take(), "a1"), Some(ErrorCode::CannotCallSelf));
    h.dial("a1", "bob@gracia");
    h.take();
    h.dial("a1", "bob@gracia");
    assert_eq!(error_code(&h.take(), "a1"), Some(ErrorCode::AlreadyInCall));
}

#[test]
fn hangup_from_either_side() {
    for (hanger, other, side) in [("a1", "b1", Side::Caller), ("b1", "a1", Side::Callee)] {
        let mut h = three_devices();
        let c = h.dial("a1", "bob@gracia");
        h.advance(2_000);
        h.accept("b1", &c);
        h.advance(5_000);
        h.take();
        let id = h.hangup(hanger, &c);
        assert_eq!(h.take(), vec![to(hanger, NodeToClient::Ok { id }), to(other, ended(&c, EndReason::HungUp))]);
        let r = &h.records[0];
        assert_eq!(r.ended_by, Some(side));
        assert_eq!(r.duration_ms(), 5_000);
        assert!(!r.is_missed());
        assert_eq!(h.sb.stats().connected, 0);
    }
}

#[test]
fn disconnect_mid_call_ends_after_grace() {
    let mut h = three_devices();
    let c = h.dial("a1", "bob@gracia");
    h.accept("b1", &c);
    h.take();
    h.input(Input::DeviceLost { device: dev("b1") });
    assert!(h.take().is_empty());
    assert_eq!(h.sb.online_devices(&addr("bob@gracia")).count(), 2, "lost device is not online");
    h.advance(9_999);
    assert!(h.take().is_empty());
    h.advance(1);
    assert_eq!(h.take(), vec![to("a1", ended(&c, EndReason::ConnectionLost))]);
    assert_eq!(h.records[0].outcome(), Outcome::ConnectionLost);
    assert_eq!(h.removed, vec![dev("b1")]);
    assert_eq!(h.sb.user_of(&dev("b1")), None);
}

#[test]
fn reconnect_within_grace_resumes() {
    let mut h = three_devices();
    let c = h.dial("a1", "bob@gracia");
    h.accept("b1", &c);
    h.take();
    h.input(Input::DeviceLost { device: dev("a1") });
    h.advance(5_000);
    h.online("a1", "alice@gracia");
    h.advance(60_000);
    assert!(h.take().is_empty(), "no end after resume");
    h.signal("a1", &c, "still here");
    assert!(h.take().iter().any(|(d, m)| *d == dev("b1") && matches!(m, NodeToClient::Signal { .. })));
}

#[test]
fn ringing_device_disconnecting_stops_ringing_only_there() {
    let mut h = three_devices();
    let c = h.dial("a1", "bob@gracia");
    h.take();
    h.input(Input::DeviceLost { device: dev("b1") });
    h.input(Input::DeviceLost { device: dev("b2") });
    assert_eq!(h.removed, vec![dev("b1"), dev("b2")]);
    assert!(h.take().is_empty());
    h.input(Input::DeviceLost { device: dev("b3") });
    assert!(h.take().contains(&to("a1", ended(&c, EndReason::NoAnswer))));
}

#[test]
fn caller_lost_while_ringing_cancels_after_grace() {
    let mut h = three_devices();
    let c = h.dial("a1", "bob@gracia");
    h.take();
    h.input(Input::DeviceLost { device: dev("a1") });
    h.advance(10_000);
    let sent = h.take();
    for d in ["b1", "b2", "b3"] {
        assert!(sent.contains(&to(d, ended(&c, EndReason::Cancelled))));
    }
}

#[test]
fn new_device_of_callee_rings_too() {
    let mut h = three_devices();
    let c = h.dial("a1", "bob@gracia");
    h.take();
    h.online("b4", "bob@gracia");
    assert_eq!(
        h.take(),
        vec![to("b4", NodeToClient::Incoming { call: c.clone(), from: addr("alice@gracia"), media: AUDIO })]
    );
    h.accept("b4", &c);
    assert!(h.take().contains(&to("a1", NodeToClient::Accepted { call: c })));
}

#[test]
fn device_gone_ends_call_at_once() {
    let mut h = three_devices();
    let c = h.dial("a1", "bob@gracia");
    h.accept("b3", &c);
    h.take();
    h.input(Input::DeviceGone { device: dev("a1") });
    assert_eq!(h.take(), vec![to("b3", ended(&c, EndReason::ConnectionLost))]);
    assert_eq!(h.sb.poll_timeout(), None);
}

#[test]
fn non_call_requests_get_typed_errors() {
    let mut h = three_devices();
    h.req("a1", |id| ClientToNode::Ping { id });
    assert_eq!(error_code(&h.take(), "a1"), Some(ErrorCode::BadMessage));
    let bogus = CallId("nope".into());
    h.accept("b1", &bogus);
    h.reject("b1", &bogus);
    h.hangup("b1", &bogus);
    h.signal("b1", &bogus, "x");
    let codes: Vec<_> = h
        .take()
        .into_iter()
        .filter_map(|(_, m)| match m {
            NodeToClient::Error { code, .. } => Some(code),
            _ => None,
        })
        .collect();
    assert_eq!(codes, vec![ErrorCode::NotInCall; 4]);
}

/// Two nodes: zone `a` (alice: a1) and zone `b` (bob: b1, b2), with the
/// mesh replaced by handing each node's `ToNode` outputs to the other.
struct Mesh {
    a: Harness,
    b: Harness,
    b_users: Vec<&'static str>,
}

impl Mesh {
    fn new() -> Self {
        let mut m = Self { a: Harness::new(), b: Harness::new(), b_users: vec!["bob@b"] };
        m.a.online("a1", "alice@a");
        m.b.online("b1", "bob@b");
        m.b.online("b2", "bob@b");
        m.a.take();
        m.b.take();
        m
    }

    fn deliver(to: &mut Harness, msg: NodeToNode, known: &[&str]) {
        let input = match msg {
            NodeToNode::Invite { call, from, to: callee, media } => {
                let refused = (!known.contains(&callee.to_string().as_str())).then_some(EndReason::UnknownUser);
                Input::Invited { call, from, to: callee, media, refused }
            }
            msg => Input::FromNode { msg },
        };
        to.input(input);
    }

    /// Moves node-to-node messages until both sides are quiet.
    fn pump(&mut self) {
        loop {
            let from_a = std::mem::take(&mut self.a.to_nodes);
            let from_b = std::mem::take(&mut self.b.to_nodes);
            if from_a.is_empty() && from_b.is_empty() {
                return;
            }
            for (_, msg) in from_a {
                Self::deliver(&mut self.b, msg, &self.b_users);
            }
            for (_, msg) in from_b {
                Self::deliver(&mut self.a, msg, &["alice@a"]);
            }
        }
    }

    fn dial(&mut self, to: &str) -> CallId {
        self.a.next_call += 1;
        let call = CallId(format!("x{}", self.a.next_call));
        self.a.input(Input::Dial {
            device: dev("a1"),
            id: 1,
            call: call.clone(),
            callee: addr(to),
            route: Route::Remote,
            media: AUDIO,
        });
        self.pump();
        call
    }

    fn advance(&mut self, ms: u64) {
        self.a.advance(ms);
        self.b.advance(ms);
        self.pump();
    }
}

#[test]
fn cross_node_call_rings_all_connects_and_relays_only_between_the_two() {
    let mut m = Mesh::new();
    let c = m.dial("bob@b");
    let a_sent = m.a.take();
    assert!(a_sent.contains(&to("a1", NodeToClient::CallPlaced { id: 1, call: c.clone() })));
    assert!(a_sent.contains(&to("a1", NodeToClient::Ringing { call: c.clone() })), "ringing comes back from b");
    let b_sent = m.b.take();
    for d in ["b1", "b2"] {
        assert!(
            b_sent.contains(&to(d, NodeToClient::Incoming { call: c.clone(), from: addr("alice@a"), media: AUDIO }))
        );
    }
    m.advance(3_000);
    m.b.accept("b2", &c);
    m.pump();
    assert!(m.b.take().contains(&to("b1", ended(&c, EndReason::AnsweredElsewhere))));
    assert_eq!(m.a.take(), vec![to("a1", NodeToClient::Accepted { call: c.clone() })]);
    m.a.signal("a1", &c, "offer");
    m.pump();
    let b_sent = m.b.take();
    assert_eq!(
        b_sent,
        vec![to("b2", NodeToClient::Signal { call: c.clone(), signal: Signal::Chat { text: "offer".into() } })]
    );
    m.b.signal("b2", &c, "answer");
    m.pump();
    assert!(m
        .a
        .take()
        .contains(&to("a1", NodeToClient::Signal { call: c.clone(), signal: Signal::Chat { text: "answer".into() } })));
    m.b.signal("b1", &c, "intrude");
    assert_eq!(error_code(&m.b.take(), "b1"), Some(ErrorCode::NotInCall));
    m.advance(7_000);
    m.b.hangup("b2", &c);
    m.pump();
    assert_eq!(m.a.take(), vec![to("a1", ended(&c, EndReason::HungUp))]);
    let (ra, rb) = (&m.a.records[0], &m.b.records[0]);
    assert!(ra.caller_local && !ra.callee_local);
    assert!(!rb.caller_local && rb.callee_local);
    assert_eq!((ra.outcome(), rb.outcome()), (Outcome::HungUpByCallee, Outcome::HungUpByCallee));
    assert_eq!(ra.duration_ms(), 7_000);
    assert_eq!(rb.duration_ms(), 7_000);
    assert_eq!((m.a.sb.stats(), m.b.sb.stats().connected), (Stats { devices: 1, ringing: 0, connected: 0 }, 0));
}

#[test]
fn cross_node_refusals_reach_the_caller() {
    let mut m = Mesh::new();
    let c = m.dial("nobody@b");
    assert!(m.a.take().contains(&to("a1", ended(&c, EndReason::UnknownUser))));
    assert!(!m.b.records[0].is_missed());
    m.b_users.push("carol@b");
    let c = m.dial("carol@b");
    assert!(m.a.take().contains(&to("a1", ended(&c, EndReason::Offline))));
    assert!(m.b.records[1].is_missed(), "offline callee gets a notice on its own node");
    m.b.online("c1", "carol@b");
    m.b.online("d1", "dave@b");
    m.b.dial("c1", "dave@b");
    let c = m.dial("carol@b");
    assert!(m.a.take().contains(&to("a1", ended(&c, EndReason::Busy))));
    assert_eq!(m.a.sb.call_of(&dev("a1")), None);
}

#[test]
fn cross_node_cancel_decline_and_no_answer() {
    let mut m = Mesh::new();
    let c = m.dial("bob@b");
    m.b.take();
    m.a.hangup("a1", &c);
    m.pump();
    let b_sent = m.b.take();
    assert!(b_sent.contains(&to("b1", ended(&c, EndReason::Cancelled))));
    assert!(m.b.records[0].is_missed());
    let c = m.dial("bob@b");
    m.a.take();
    m.b.reject("b1", &c);
    m.b.reject("b2", &c);
    m.pump();
    assert!(m.a.take().contains(&to("a1", ended(&c, EndReason::Declined))));
    let c = m.dial("bob@b");
    m.a.take();
    m.advance(30_000);
    assert!(m.a.take().contains(&to("a1", ended(&c, EndReason::NoAnswer))));
    assert_eq!(m.a.records.last().map(CallRecord::outcome), Some(Outcome::NoAnswer));
    assert_eq!(m.a.sb.poll_timeout(), None, "the caller's margin timer is cleared");
}

#[test]
fn cross_node_failures() {
    let mut m = Mesh::new();
    m.a.input(Input::Dial {
        device: dev("a1"),
        id: 1,
        call: CallId("u".into()),
        callee: addr("bob@b"),
        route: Route::Remote,
        media: AUDIO,
    });
    m.a.to_nodes.clear();
    m.a.input(Input::RouteFailed { call: CallId("u".into()), reason: EndReason::UnreachableZone });
    assert!(m.a.take().contains(&to("a1", ended(&CallId("u".into()), EndReason::UnreachableZone))));
    assert!(m.a.to_nodes.is_empty(), "nothing sent to an unreachable node");
    // The callee's node disappears mid-call.
    let c = m.dial("bob@b");
    m.b.accept("b1", &c);
    m.pump();
    m.a.take();
    m.a.input(Input::RouteFailed { call: c.clone(), reason: EndReason::UnreachableZone });
    assert!(m.a.take().contains(&to("a1", ended(&c, EndReason::ConnectionLost))));
    // And the caller's node disappears on the callee side.
    let mut m = Mesh::new();
    let c = m.dial("bob@b");
    m.b.take();
    m.b.input(Input::RouteFailed { call: c.clone(), reason: EndReason::UnreachableZone });
    assert!(m.b.take().contains(&to("b1", ended(&c, EndReason::Cancelled))));
    // A message about a call nobody knows is ignored.
    m.b.input(Input::FromNode { msg: NodeToNode::Accepted { call: CallId("ghost".into()) } });
    assert!(m.b.take().is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Online(usize),
    Lost(usize),
    Gone(usize),
    Dial(usize, usize),
    Accept(usize),
    Reject(usize),
    Hangup(usize),
    Signal(usize),
    Advance(u64),
}

const DEVICES: [(&str, &str); 6] =
    [("a1", "alice@z"), ("a2", "alice@z"), ("b1", "bob@z"), ("b2", "bob@z"), ("b3", "bob@z"), ("c1", "carol@z")];
const USERS: [&str; 3] = ["alice@z", "bob@z", "carol@z"];

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..6usize).prop_map(Op::Online),
        (0..6usize).prop_map(Op::Lost),
        (0..6usize).prop_map(Op::Gone),
        (0..6usize, 0..3usize).prop_map(|(d, u)| Op::Dial(d, u)),
        (0..6usize).prop_map(Op::Accept),
        (0..6usize).prop_map(Op::Reject),
        (0..6usize).prop_map(Op::Hangup),
        (0..6usize).prop_map(Op::Signal),
        (0..40_000u64).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random sequences never break the invariants: every request gets one
    /// reply, signals reach only the other party, every placed call ends
    /// exactly once, and once everyone leaves nothing is left behind.
    #[test]
    fn invariants_hold(ops in proptest::collection::vec(arb_op(), 1..80)) {
        let mut h = Harness::new();
        let mut calls: Vec<CallId> = Vec::new();
        for op in ops {
            let before_req = h.next_req;
            let expect_reply: bool;
            let mut relayed: Option<(DeviceId, CallId)> = None;
            match op {
                Op::Online(i) => { h.online(DEVICES[i].0, DEVICES[i].1); expect_reply = false; }
                Op::Lost(i) => { h.input(Input::DeviceLost { device: dev(DEVICES[i].0) }); expect_reply = false; }
                Op::Gone(i) => { h.input(Input::DeviceGone { device: dev(DEVICES[i].0) }); expect_reply = false; }
                Op::Advance(ms) => { h.advance(ms); expect_reply = false; }
                Op::Dial(i, u) => {
                    let known = h.sb.user_of(&dev(DEVICES[i].0)).is_some();
                    calls.push(h.dial(DEVICES[i].0, USERS[u]));
                    expect_reply = known;
                }
                Op::Accept(i) | Op::Reject(i) | Op::Hangup(i) | Op::Signal(i) => {
                    let d = DEVICES[i].0;
                    expect_reply = h.sb.user_of(&dev(d)).is_some();
                    let call = calls.last().cloned().unwrap_or_else(|| CallId("none".into()));
                    match op {
                        Op::Accept(_) => { h.accept(d, &call); }
                        Op::Reject(_) => { h.reject(d, &call); }
                        Op::Hangup(_) => { h.hangup(d, &call); }
                        _ => { h.signal(d, &call, "x"); relayed = Some((dev(d), call)); }
                    }
                }
            }
            let sent = h.take();
            if expect_reply {
                let id = h.next_req;
                prop_assert!(id > before_req);
                let replies = sent.iter().filter(|(_, m)| matches!(m,
                    NodeToClient::Ok { id: r } | NodeToClient::CallPlaced { id: r, .. } if *r == id)
                    || matches!(m, NodeToClient::Error { id: Some(r), .. } if *r == id)).count();
                prop_assert_eq!(replies, 1, "exactly one reply");
            }
            if let Some((from, call)) = relayed {
                for (to, m) in &sent {
                    if matches!(m, NodeToClient::Signal { .. }) {
                        prop_assert_ne!(to, &from);
                        let rec = h.sb.call_of(to).cloned();
                        prop_assert_eq!(rec, Some(call.clone()), "signal only to a party of the call");
                    }
                }
            }
        }
        for (d, _) in DEVICES {
            h.input(Input::DeviceGone { device: dev(d) });
        }
        h.advance(100_000);
        prop_assert_eq!(h.sb.stats(), Stats::default());
        prop_assert_eq!(h.sb.poll_timeout(), None);
        let mut ids: Vec<_> = h.records.iter().map(|r| r.call.clone()).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        prop_assert_eq!(ids.len(), n, "each call finishes once");
    }
}
