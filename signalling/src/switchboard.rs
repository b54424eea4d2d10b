//! The call state machine of one node: which devices are online, which
//! calls ring or are connected, and what each device must be told.
//!
//! Sans-IO: no sockets, no clock, no tasks. See the crate docs for the run
//! loop and the drain rule.

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::address::Address;
use crate::msg::{
    CallId, ClientToNode, DeviceId, EndReason, ErrorCode, Media, NodeToClient, NodeToNode, Outcome, RequestId, Signal,
};

/// A point in time, in milliseconds from an arbitrary origin chosen by the
/// driver (monotonic; the simulator may run it faster than real time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Time(pub u64);

impl Time {
    /// `self + ms`, saturating.
    pub fn plus_ms(self, ms: u64) -> Time {
        Time(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// Timing rules of a [`Switchboard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// How long a call rings before it ends with [`EndReason::NoAnswer`].
    pub ring_timeout_ms: u64,
    /// How long a device in a call may be gone before its call ends with
    /// [`EndReason::ConnectionLost`]; a reconnect within it resumes.
    pub grace_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self { ring_timeout_ms: 30_000, grace_ms: 10_000 }
    }
}

/// Extra time a caller's node waits beyond the ring timeout for a remote
/// callee's node to report the end (its own timer normally fires first).
pub const REMOTE_RING_MARGIN_MS: u64 = 5_000;

/// What the driver tells the switchboard.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Input {
    /// A device authenticated (or re-authenticated to resume).
    DeviceOnline {
        /// The device.
        device: DeviceId,
        /// Its user.
        user: Address,
    },
    /// A device's connection closed. A device in a call gets the grace
    /// period; any other is forgotten at once.
    DeviceLost {
        /// The device.
        device: DeviceId,
    },
    /// A device logged out or was revoked: forgotten at once, its call ends.
    DeviceGone {
        /// The device.
        device: DeviceId,
    },
    /// A device asks to call `callee`. The driver has parsed the address
    /// and looked the user up.
    Dial {
        /// The calling device.
        device: DeviceId,
        /// The request id to answer.
        id: RequestId,
        /// A fresh, unique call id chosen by the driver.
        call: CallId,
        /// Who to call.
        callee: Address,
        /// How to reach the callee.
        route: Route,
        /// Media offered.
        media: Media,
    },
    /// A call request from a device: `accept`, `reject`, `hangup` or
    /// `signal` (anything else is answered with an error).
    Request {
        /// The device.
        device: DeviceId,
        /// The message.
        msg: ClientToNode,
    },
    /// Another node invites a local user (a [`NodeToNode::Invite`] the
    /// driver has checked came from the caller's home node).
    Invited {
        /// The call.
        call: CallId,
        /// The remote caller.
        from: Address,
        /// The local callee.
        to: Address,
        /// Media offered.
        media: Media,
        /// `None` when the callee's account exists here, else why not.
        refused: Option<EndReason>,
    },
    /// A message from the other node of a call (anything but `Invite`). The
    /// driver has checked it came from that call's other node.
    FromNode {
        /// The message.
        msg: NodeToNode,
    },
    /// The other node of a call could not be found or reached: the call ends.
    RouteFailed {
        /// The call.
        call: CallId,
        /// [`EndReason::UnknownZone`], [`EndReason::UnknownUser`] or
        /// [`EndReason::UnreachableZone`].
        reason: EndReason,
    },
}

/// How a dialled user is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The callee's account is on this node.
    Local,
    /// This node has no such account: the call is refused at once.
    Refused(EndReason),
    /// The callee lives on another node: signalling goes through the mesh.
    Remote,
}

/// What the switchboard tells the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Output {
    /// Send `msg` to `to`.
    Send {
        /// The device.
        to: DeviceId,
        /// The message.
        msg: NodeToClient,
    },
    /// Send `msg` to the home node of `peer`, the remote party of `msg`'s call.
    ToNode {
        /// The remote party (the callee on the caller's node, and the
        /// caller on the callee's node).
        peer: Address,
        /// The message.
        msg: NodeToNode,
    },
    /// A call ended: write history (and a missed-call notice) for its
    /// local parties.
    CallFinished(CallRecord),
    /// A device is forgotten: the driver may drop what it keeps for it.
    DeviceRemoved {
        /// The device.
        device: DeviceId,
    },
}

/// Which party of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller.
    Caller,
    /// The callee.
    Callee,
}

/// Everything known about a finished call: what history and notices need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The call.
    pub call: CallId,
    /// Who called.
    pub caller: Address,
    /// Who was called.
    pub callee: Address,
    /// Whether the caller is a user of this node (history is written only
    /// for local users).
    pub caller_local: bool,
    /// Whether the callee is a user of this node with an account here.
    pub callee_local: bool,
    /// Media offered.
    pub media: Media,
    /// When it was placed.
    pub placed_at: Time,
    /// When it was answered, if it was.
    pub answered_at: Option<Time>,
    /// When it ended.
    pub ended_at: Time,
    /// Why it ended, as the caller was told.
    pub reason: EndReason,
    /// Who ended it by hanging up, cancelling, declining remotely or
    /// vanishing (`None` when it ended by itself: no answer, refused).
    pub ended_by: Option<Side>,
}

impl CallRecord {
    /// Talk time in milliseconds (zero if never answered).
    pub fn duration_ms(&self) -> u64 {
        self.answered_at.map_or(0, |a| self.ended_at.since(a))
    }

    /// How the call ended, as history shows it.
    pub fn outcome(&self) -> Outcome {
        if self.answered_at.is_some() {
            return match (self.reason, self.ended_by) {
                (EndReason::ConnectionLost, _) => Outcome::ConnectionLost,
                (_, Some(Side::Callee)) => Outcome::HungUpByCallee,
                _ => Outcome::HungUpByCaller,
            };
        }
        match self.reason {
            EndReason::Declined => Outcome::Declined,
            EndReason::Cancelled => Outcome::Cancelled,
            EndReason::Busy => Outcome::Busy,
            EndReason::Offline => Outcome::Offline,
            EndReason::UnknownUser => Outcome::UnknownUser,
            EndReason::UnknownZone => Outcome::UnknownZone,
            EndReason::UnreachableZone => Outcome::UnreachableZone,
            _ => Outcome::NoAnswer,
        }
    }

    /// Whether the callee gets a missed-call notice (on this node).
    pub fn is_missed(&self) -> bool {
        self.callee_local && self.answered_at.is_none() && self.reason.is_missed()
    }
}

/// Counts for monitoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Devices known (online or in grace).
    pub devices: usize,
    /// Calls ringing.
    pub ringing: usize,
    /// Calls connected.
    pub connected: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Ring(CallId),
    Grace(DeviceId),
}

#[derive(Debug)]
struct Device {
    user: Address,
    /// The call this device is a party of (as caller, or as the callee
    /// device that accepted). Ringing does not count.
    call: Option<CallId>,
    /// Set while the connection is gone: when the grace period ends.
    lost_until: Option<Time>,
}

/// Where one party of a call is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Leg {
    /// A device on this node.
    Local(DeviceId),
    /// Behind another node of the mesh.
    Remote,
}

#[derive(Debug)]
enum Phase {
    /// `devices` are this node's ringing devices (none if the callee is remote).
    Ringing {
        devices: BTreeSet<DeviceId>,
        deadline: Time,
    },
    Connected {
        callee: Leg,
        since: Time,
    },
}

#[derive(Debug)]
struct Call {
    caller: Address,
    caller_leg: Leg,
    callee: Address,
    callee_remote: bool,
    media: Media,
    placed_at: Time,
    phase: Phase,
}

/// The call state machine for all devices and calls of one node.
#[derive(Debug, Default)]
pub struct Switchboard {
    config: Config,
    now: Time,
    devices: HashMap<DeviceId, Device>,
    users: HashMap<Address, BTreeSet<DeviceId>>,
    calls: HashMap<CallId, Call>,
    timers: BTreeSet<(Time, Timer)>,
    out: VecDeque<Output>,
}

impl Switchboard {
    /// A switchboard with no devices and no calls.
    pub fn new(config: Config) -> Self {
        Self { config, ..Self::default() }
    }

    /// Feeds one input at time `now` (which must not go backwards).
    pub fn handle_input(&mut self, now: Time, input: Input) {
        self.now = self.now.max(now);
        match input {
            Input::DeviceOnline { device, user } => self.device_online(device, user),
            Input::DeviceLost { device } => self.device_lost(device),
            Input::DeviceGone { device } => self.device_gone(&device),
            Input::Dial { device, id, call, callee, route, media } => self.dial(device, id, call, callee, route, media),
            Input::Request { device, msg } => self.request(device, msg),
            Input::Invited { call, from, to, media, refused } => self.invited(call, from, to, media, refused),
            Input::FromNode { msg } => self.node_message(msg),
            Input::RouteFailed { call, reason } => self.route_failed(&call, reason),
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = self.now.max(now);
        while let Some((at, _)) = self.timers.first() {
            if *at > self.now {
                break;
            }
            let Some((_, timer)) = self.timers.pop_first() else { break };
            match timer {
                Timer::Ring(call) => self.ring_expired(&call),
                Timer::Grace(device) => self.device_gone(&device),
            }
        }
    }

    /// The next output to act on; call until `None` after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Switchboard::handle_timeout`] must next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// The devices of `user` that are online (not in grace).
    pub fn online_devices<'a>(&'a self, user: &Address) -> impl Iterator<Item = &'a DeviceId> + 'a {
        let devices = &self.devices;
        self.users
            .get(user)
            .into_iter()
            .flatten()
            .filter(move |d| devices.get(*d).is_some_and(|s| s.lost_until.is_none()))
    }

    /// The call `device` is a party of, if any.
    pub fn call_of(&self, device: &DeviceId) -> Option<&CallId> {
        self.devices.get(device).and_then(|d| d.call.as_ref())
    }

    /// The user a known device (online or in grace) belongs to.
    pub fn user_of(&self, device: &DeviceId) -> Option<&Address> {
        self.devices.get(device).map(|d| &d.user)
    }

    /// How many devices `user` has (online or in grace).
    pub fn device_count(&self, user: &Address) -> usize {
        self.users.get(user).map_or(0, BTreeSet::len)
    }

    /// Whether any device of `user` (online or in grace) is a party of a
    /// call, placing or connected: what presence shows as "in a call".
    pub fn in_call(&self, user: &Address) -> bool {
        let devices = &self.devices;
        self.users.get(user).into_iter().flatten().any(|d| devices.get(d).is_some_and(|s| s.call.is_some()))
    }

    /// The remote party of a call that crosses nodes, if `call` is one.
    pub fn remote_party(&self, call: &CallId) -> Option<&Address> {
        let c = self.calls.get(call)?;
        if c.callee_remote {
            Some(&c.callee)
        } else if c.caller_leg == Leg::Remote {
            Some(&c.caller)
        } else {
            None
        }
    }

    /// Counts for monitoring.
    pub fn stats(&self) -> Stats {
        let connected = self.calls.values().filter(|c| matches!(c.phase, Phase::Connected { .. })).count();
        Stats { devices: self.devices.len(), ringing: self.calls.len() - connected, connected }
    }

    fn send(&mut self, to: &DeviceId, msg: NodeToClient) {
        self.out.push_back(Output::Send { to: to.clone(), msg });
    }

    fn send_node(&mut self, peer: &Address, msg: NodeToNode) {
        self.out.push_back(Output::ToNode { peer: peer.clone(), msg });
    }

    fn reply_err(&mut self, to: &DeviceId, id: RequestId, code: ErrorCode, message: &str) {
        self.send(to, NodeToClient::error(Some(id), code, message));
    }

    fn device_online(&mut self, device: DeviceId, user: Address) {
        if let Some(d) = self.devices.get_mut(&device) {
            // A resume: the connection is back within the grace period.
            if let Some(until) = d.lost_until.take() {
                self.timers.remove(&(until, Timer::Grace(device)));
            }
            return;
        }
        self.users.entry(user.clone()).or_default().insert(device.clone());
        self.devices.insert(device.clone(), Device { user: user.clone(), call: None, lost_until: None });
        // A call already ringing for this user rings the new device too.
        let ringing: Vec<(CallId, Address, Media)> = self
            .calls
            .iter_mut()
            .filter(|(_, c)| c.callee == user && !c.callee_remote)
            .filter_map(|(id, c)| match &mut c.phase {
                Phase::Ringing { devices, .. } => {
                    devices.insert(device.clone());
                    Some((id.clone(), c.caller.clone(), c.media))
                }
                Phase::Connected { .. } => None,
            })
            .collect();
        for (call, from, media) in ringing {
            self.send(&device, NodeToClient::Incoming { call, from, media });
        }
    }

    fn device_lost(&mut self, device: DeviceId) {
        let Some(d) = self.devices.get_mut(&device) else { return };
        if d.call.is_some() {
            if d.lost_until.is_none() {
                let until = self.now.plus_ms(self.config.grace_ms);
                d.lost_until = Some(until);
                self.timers.insert((until, Timer::Grace(device)));
            }
        } else {
            self.device_gone(&device);
        }
    }

    /// Forgets a device: stops it ringing, ends its call, drops it.
    fn device_gone(&mut self, device: &DeviceId) {
        let Some(d) = self.devices.remove(device) else { return };
        if let Some(until) = d.lost_until {
            self.timers.remove(&(until, Timer::Grace(device.clone())));
        }
        if let Some(set) = self.users.get_mut(&d.user) {
            set.remove(device);
            if set.is_empty() {
                self.users.remove(&d.user);
            }
        }
        if let Some(call_id) = d.call {
            self.party_lost(&call_id, device);
        }
        let rung: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, c)| matches!(&c.phase, Phase::Ringing { devices, .. } if devices.contains(device)))
            .map(|(id, _)| id.clone())
            .collect();
        for call in rung {
            self.stop_ringing(&call, device, EndReason::NoAnswer);
        }
        self.out.push_back(Output::DeviceRemoved { device: device.clone() });
    }

    /// A local party's device of `call_id` is gone for good.
    fn party_lost(&mut self, call_id: &CallId, device: &DeviceId) {
        let Some(call) = self.calls.get(call_id) else { return };
        let side = if call.caller_leg == Leg::Local(device.clone()) { Side::Caller } else { Side::Callee };
        match (&call.phase, side) {
            // The caller vanished while it rang: the callee missed it.
            (Phase::Ringing { .. }, _) => self.finish(call_id, EndReason::Cancelled, Some(side), EndReason::Cancelled),
            (Phase::Connected { .. }, _) => {
                self.finish(call_id, EndReason::ConnectionLost, Some(side), EndReason::ConnectionLost)
            }
        }
    }

    /// `device` no longer rings for `call`; the call ends with `if_last`
    /// when it was the last ringing device.
    fn stop_ringing(&mut self, call_id: &CallId, device: &DeviceId, if_last: EndReason) {
        let Some(call) = self.calls.get_mut(call_id) else { return };
        let Phase::Ringing { devices, .. } = &mut call.phase else { return };
        devices.remove(device);
        if devices.is_empty() && !call.callee_remote {
            self.finish(call_id, if_last, None, if_last);
        }
    }

    /// Whether any device of `user` is a party of a call.
    fn is_busy(&self, user: &Address) -> bool {
        self.users.get(user).into_iter().flatten().any(|d| self.call_of(d).is_some())
    }

    /// Emits the record of a call refused before it could ring.
    fn refused_record(
        &mut self,
        call: CallId,
        (caller, callee): (Address, Address),
        (caller_local, callee_local): (bool, bool),
        media: Media,
        reason: EndReason,
    ) {
        self.out.push_back(Output::CallFinished(CallRecord {
            call,
            caller,
            callee,
            caller_local,
            callee_local,
            media,
            placed_at: self.now,
            answered_at: None,
            ended_at: self.now,
            reason,
            ended_by: None,
        }));
    }

    fn dial(&mut self, device: DeviceId, id: RequestId, call: CallId, callee: Address, route: Route, media: Media) {
        let Some(dev) = self.devices.get(&device) else { return };
        if dev.call.is_some() {
            return self.reply_err(&device, id, ErrorCode::AlreadyInCall, "this device is already in a call");
        }
        let caller = dev.user.clone();
        if caller == callee {
            return self.reply_err(&device, id, ErrorCode::CannotCallSelf, "you cannot call yourself");
        }
        if self.calls.contains_key(&call) {
            return self.reply_err(&device, id, ErrorCode::Internal, "call id collision");
        }
        self.send(&device, NodeToClient::CallPlaced { id, call: call.clone() });
        let online: BTreeSet<DeviceId> = self.online_devices(&callee).cloned().collect();
        let refused = match route {
            Route::Refused(reason) => Some(reason),
            Route::Remote => None,
            Route::Local if online.is_empty() => Some(EndReason::Offline),
            Route::Local if self.is_busy(&callee) => Some(EndReason::Busy),
            Route::Local => None,
        };
        if let Some(reason) = refused {
            self.send(&device, NodeToClient::Ended { call: call.clone(), reason });
            let local = route == Route::Local;
            return self.refused_record(call, (caller, callee), (true, local), media, reason);
        }
        let remote = route == Route::Remote;
        let deadline = if remote {
            self.send_node(
                &callee,
                NodeToNode::Invite { call: call.clone(), from: caller.clone(), to: callee.clone(), media },
            );
            self.now.plus_ms(self.config.ring_timeout_ms + REMOTE_RING_MARGIN_MS)
        } else {
            for d in &online {
                self.send(d, NodeToClient::Incoming { call: call.clone(), from: caller.clone(), media });
            }
            self.send(&device, NodeToClient::Ringing { call: call.clone() });
            self.now.plus_ms(self.config.ring_timeout_ms)
        };
        self.timers.insert((deadline, Timer::Ring(call.clone())));
        if let Some(dev) = self.devices.get_mut(&device) {
            dev.call = Some(call.clone());
        }
        let devices = if remote { BTreeSet::new() } else { online };
        self.calls.insert(
            call,
            Call {
                caller,
                caller_leg: Leg::Local(device),
                callee,
                callee_remote: remote,
                media,
                placed_at: self.now,
                phase: Phase::Ringing { devices, deadline },
            },
        );
    }

    fn invited(&mut self, call: CallId, from: Address, to: Address, media: Media, refused: Option<EndReason>) {
        if self.calls.contains_key(&call) {
            return; // A retried invite that was already delivered.
        }
        let online: BTreeSet<DeviceId> = self.online_devices(&to).cloned().collect();
        let refused = refused
            .or_else(|| online.is_empty().then_some(EndReason::Offline))
            .or_else(|| self.is_busy(&to).then_some(EndReason::Busy));
        if let Some(reason) = refused {
            self.send_node(&from, NodeToNode::Ended { call: call.clone(), reason });
            let local = reason != EndReason::UnknownUser;
            return self.refused_record(call, (from, to), (false, local), media, reason);
        }
        let deadline = self.now.plus_ms(self.config.ring_timeout_ms);
        for d in &online {
            self.send(d, NodeToClient::Incoming { call: call.clone(), from: from.clone(), media });
        }
        self.send_node(&from, NodeToNode::Ringing { call: call.clone() });
        self.timers.insert((deadline, Timer::Ring(call.clone())));
        self.calls.insert(
            call,
            Call {
                caller: from,
                caller_leg: Leg::Remote,
                callee: to,
                callee_remote: false,
                media,
                placed_at: self.now,
                phase: Phase::Ringing { devices: online, deadline },
            },
        );
    }

    fn node_message(&mut self, msg: NodeToNode) {
        let Some(call) = self.calls.get_mut(msg.call()) else { return };
        // Which side is remote decides what the message may do.
        let remote_side = if call.callee_remote { Side::Callee } else { Side::Caller };
        let caller_device = match &call.caller_leg {
            Leg::Local(d) => Some(d.clone()),
            Leg::Remote => None,
        };
        match (msg, remote_side) {
            (NodeToNode::Ringing { call: id }, Side::Callee) => {
                if let (Phase::Ringing { .. }, Some(d)) = (&call.phase, caller_device) {
                    self.send(&d, NodeToClient::Ringing { call: id });
                }
            }
            (NodeToNode::Accepted { call: id }, Side::Callee) => {
                if let Phase::Ringing { deadline, .. } = call.phase {
                    self.timers.remove(&(deadline, Timer::Ring(id.clone())));
                    call.phase = Phase::Connected { callee: Leg::Remote, since: self.now };
                    if let Some(d) = caller_device {
                        self.send(&d, NodeToClient::Accepted { call: id });
                    }
                }
            }
            (NodeToNode::Ended { call: id, reason }, side) => self.finish(&id, reason, Some(side), reason),
            (NodeToNode::Signal { call: id, signal }, side) => {
                let target = match (&call.phase, side) {
                    (Phase::Connected { .. }, Side::Callee) => caller_device,
                    (Phase::Connected { callee: Leg::Local(d), .. }, Side::Caller) => Some(d.clone()),
                    _ => None,
                };
                if let Some(d) = target {
                    self.send(&d, NodeToClient::Signal { call: id, signal });
                }
            }
            // Ringing or Accepted from a caller's node, or an Invite here:
            // not something the remote side may say; ignored.
            _ => {}
        }
    }

    fn route_failed(&mut self, call_id: &CallId, reason: EndReason) {
        let Some(call) = self.calls.get(call_id) else { return };
        let side = if call.callee_remote { Side::Callee } else { Side::Caller };
        let connected = matches!(call.phase, Phase::Connected { .. });
        let (to_caller, to_callee) = match (connected, side) {
            (true, _) => (EndReason::ConnectionLost, EndReason::ConnectionLost),
            (false, Side::Callee) => (reason, reason),
            (false, Side::Caller) => (EndReason::Cancelled, EndReason::Cancelled),
        };
        self.finish(call_id, to_caller, Some(side), to_callee);
    }

    fn request(&mut self, device: DeviceId, msg: ClientToNode) {
        if !self.devices.contains_key(&device) {
            return;
        }
        match msg {
            ClientToNode::Accept { id, call } => self.accept(device, id, call),
            ClientToNode::Reject { id, call } => self.reject(device, id, call),
            ClientToNode::Hangup { id, call } => self.hangup(device, id, call),
            ClientToNode::Signal { id, call, signal } => self.relay(device, id, call, signal),
            other => {
                self.reply_err(&device, other.id(), ErrorCode::BadMessage, "not a call request");
            }
        }
    }

    fn is_ringing_on(&self, call: &CallId, device: &DeviceId) -> bool {
        self.calls
            .get(call)
            .is_some_and(|c| matches!(&c.phase, Phase::Ringing { devices, .. } if devices.contains(device)))
    }

    fn accept(&mut self, device: DeviceId, id: RequestId, call_id: CallId) {
        if !self.is_ringing_on(&call_id, &device) {
            let elsewhere = self.calls.get(&call_id).is_some_and(|c| {
                matches!(c.phase, Phase::Connected { .. })
                    && !c.callee_remote
                    && self.devices.get(&device).is_some_and(|d| d.user == c.callee)
            });
            return if elsewhere {
                self.reply_err(&device, id, ErrorCode::AlreadyAnswered, "the call was answered on another device")
            } else {
                self.reply_err(&device, id, ErrorCode::NotInCall, "no such call ringing on this device")
            };
        }
        if self.call_of(&device).is_some() {
            return self.reply_err(&device, id, ErrorCode::AlreadyInCall, "this device is already in a call");
        }
        let Some(call) = self.calls.get_mut(&call_id) else { return };
        let Phase::Ringing { devices, deadline } = &call.phase else { return };
        let others: Vec<DeviceId> = devices.iter().filter(|d| **d != device).cloned().collect();
        self.timers.remove(&(*deadline, Timer::Ring(call_id.clone())));
        call.phase = Phase::Connected { callee: Leg::Local(device.clone()), since: self.now };
        let caller_leg = call.caller_leg.clone();
        let caller = call.caller.clone();
        if let Some(d) = self.devices.get_mut(&device) {
            d.call = Some(call_id.clone());
        }
        self.send(&device, NodeToClient::Ok { id });
        match caller_leg {
            Leg::Local(d) => self.send(&d, NodeToClient::Accepted { call: call_id.clone() }),
            Leg::Remote => self.send_node(&caller, NodeToNode::Accepted { call: call_id.clone() }),
        }
        for d in others {
            self.send(&d, NodeToClient::Ended { call: call_id.clone(), reason: EndReason::AnsweredElsewhere });
        }
    }

    fn reject(&mut self, device: DeviceId, id: RequestId, call_id: CallId) {
        if !self.is_ringing_on(&call_id, &device) {
            return self.reply_err(&device, id, ErrorCode::NotInCall, "no such call ringing on this device");
        }
        self.send(&device, NodeToClient::Ok { id });
        self.stop_ringing(&call_id, &device, EndReason::Declined);
    }

    fn hangup(&mut self, device: DeviceId, id: RequestId, call_id: CallId) {
        if self.is_ringing_on(&call_id, &device) {
            return self.reject(device, id, call_id);
        }
        let Some(call) = self.calls.get(&call_id) else {
            return self.reply_err(&device, id, ErrorCode::NotInCall, "no such call on this device");
        };
        let me = Leg::Local(device.clone());
        let side = if call.caller_leg == me {
            Side::Caller
        } else if matches!(&call.phase, Phase::Connected { callee, .. } if *callee == me) {
            Side::Callee
        } else {
            return self.reply_err(&device, id, ErrorCode::NotInCall, "no such call on this device");
        };
        let ringing = matches!(call.phase, Phase::Ringing { .. });
        self.send(&device, NodeToClient::Ok { id });
        let reason = if ringing { EndReason::Cancelled } else { EndReason::HungUp };
        self.finish(&call_id, reason, Some(side), reason);
    }

    fn relay(&mut self, device: DeviceId, id: RequestId, call_id: CallId, signal: Signal) {
        let Some(call) = self.calls.get(&call_id) else {
            return self.reply_err(&device, id, ErrorCode::NotInCall, "no such call on this device");
        };
        let me = Leg::Local(device.clone());
        let (peer_leg, peer) = match &call.phase {
            Phase::Connected { callee, .. } if *callee == me => (call.caller_leg.clone(), call.caller.clone()),
            Phase::Connected { callee, .. } if call.caller_leg == me => (callee.clone(), call.callee.clone()),
            Phase::Ringing { devices, .. } if call.caller_leg == me || devices.contains(&device) => {
                return self.reply_err(&device, id, ErrorCode::CallNotConnected, "the call has not been answered yet");
            }
            _ => return self.reply_err(&device, id, ErrorCode::NotInCall, "no such call on this device"),
        };
        self.send(&device, NodeToClient::Ok { id });
        match peer_leg {
            Leg::Local(d) => self.send(&d, NodeToClient::Signal { call: call_id, signal }),
            Leg::Remote => self.send_node(&peer, NodeToNode::Signal { call: call_id, signal }),
        }
    }

    fn ring_expired(&mut self, call_id: &CallId) {
        if matches!(self.calls.get(call_id).map(|c| &c.phase), Some(Phase::Ringing { .. })) {
            self.finish(call_id, EndReason::NoAnswer, None, EndReason::NoAnswer);
        }
    }

    /// Removes a call, tells whoever still needs telling, emits its record.
    /// `to_caller` is what the caller hears, `to_callee` what ringing or
    /// connected callee devices (or the callee's node) hear; the party that
    /// ended the call (`ended_by`) is not told.
    fn finish(&mut self, call_id: &CallId, to_caller: EndReason, ended_by: Option<Side>, to_callee: EndReason) {
        let Some(call) = self.calls.remove(call_id) else { return };
        let answered_at = match &call.phase {
            Phase::Ringing { deadline, .. } => {
                self.timers.remove(&(*deadline, Timer::Ring(call_id.clone())));
                None
            }
            Phase::Connected { since, .. } => Some(*since),
        };
        let callee_devices: Vec<DeviceId> = match call.phase {
            Phase::Ringing { devices, .. } => devices.into_iter().collect(),
            Phase::Connected { callee: Leg::Local(d), .. } => vec![d],
            Phase::Connected { callee: Leg::Remote, .. } => Vec::new(),
        };
        let mut parties = callee_devices.clone();
        if let Leg::Local(d) = &call.caller_leg {
            parties.push(d.clone());
        }
        for d in &parties {
            if let Some(dev) = self.devices.get_mut(d) {
                if dev.call.as_ref() == Some(call_id) {
                    dev.call = None;
                }
            }
        }
        if ended_by != Some(Side::Caller) {
            let msg = NodeToClient::Ended { call: call_id.clone(), reason: to_caller };
            match &call.caller_leg {
                Leg::Local(d) => self.send(d, msg),
                Leg::Remote => {
                    self.send_node(&call.caller, NodeToNode::Ended { call: call_id.clone(), reason: to_caller })
                }
            }
        }
        if ended_by != Some(Side::Callee) {
            for d in &callee_devices {
                self.send(d, NodeToClient::Ended { call: call_id.clone(), reason: to_callee });
            }
            if call.callee_remote {
                self.send_node(&call.callee, NodeToNode::Ended { call: call_id.clone(), reason: to_callee });
            }
        }
        // A device whose connection is gone and whose call just ended has
        // nothing left to resume.
        for d in &parties {
            if self.devices.get(d).is_some_and(|dev| dev.lost_until.is_some() && dev.call.is_none()) {
                self.device_gone(d);
            }
        }
        self.out.push_back(Output::CallFinished(CallRecord {
            call: call_id.clone(),
            caller: call.caller,
            callee: call.callee,
            caller_local: call.caller_leg != Leg::Remote,
            callee_local: !call.callee_remote,
            media: call.media,
            placed_at: call.placed_at,
            answered_at,
            ended_at: self.now,
            reason: to_caller,
            ended_by,
        }));
    }
}

#[cfg(test)]
#[path = "switchboard_tests.rs"]
mod tests;
