//! The calls service: one task that drives the [`Switchboard`] and owns
//! every device's outgoing channel.
//!
//! WebSocket handlers send [`Command`]s over a bounded channel. Each turn
//! of the loop takes every queued command (or a due timer), runs it through
//! the switchboard, writes history rows and notices the outputs ask for,
//! makes them durable with one flush for the whole turn (group commit), and
//! only then delivers the frames, in order. A device whose channel is full
//! (it does not read) is disconnected rather than buffered without bound.
//!
//! A call that crosses nodes gets a delivery task of its own, which
//! resolves the other node and carries the call's messages to it in order
//! (`remote.rs`).
//!
//! Other services reach devices through it too: [`Command::Push`] sends an
//! event to every online device of some users (a contact's presence, a
//! room's message), and the service tells the presence service whenever a
//! user's devices come, go, fall idle or enter or leave a call
//! ([`Activity`]).

mod remote;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use dht::mesh::PeerId;
use dht::{Mesh, Responder};
use rand::RngCore;
use signalling::service::CallService;
use signalling::{
    Address, CallId, CallRecord, ClientToNode, Config as SbConfig, DeviceId, EndReason, ErrorCode, HistoryEntry,
    HistoryKind, Input, Media, NodeToClient, NodeToNode, Notice, Output, RequestId, Route, Stats, Switchboard, Time,
    UserName, ZoneName,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use remote::{deliver, RemoteLeg, REMOTE_QUEUE};

use crate::metrics::Metrics;
use crate::pii::Pii;
use crate::services::accounts::now_ms;
use crate::store::Store;

/// Frames queued per device before it counts as stuck.
pub const DEVICE_QUEUE: usize = 256;
/// Frames held for a device in its grace period.
const HELD_MAX: usize = 64;
/// Commands queued before senders wait.
const COMMAND_QUEUE: usize = 4096;

/// What a connection's writer task sends.
#[derive(Debug)]
pub enum Outgoing {
    /// A text frame.
    Text(String),
    /// Close the socket with this code and reason.
    Close(u16, &'static str),
}

/// A request to the calls service.
#[derive(Debug)]
#[non_exhaustive]
pub enum Command {
    /// A socket authenticated: register (or resume) its device. The
    /// `welcome` goes out on `tx` first.
    Connect {
        /// The `hello`'s request id.
        hello: RequestId,
        /// The user.
        user: Address,
        /// The session id the socket authenticated with.
        session: String,
        /// When that session expires (ms since the epoch).
        expires_at_ms: u64,
        /// A device to resume, from `hello`.
        resume: Option<DeviceId>,
        /// A number unique to this socket.
        conn: u64,
        /// The socket's outgoing channel.
        tx: mpsc::Sender<Outgoing>,
        /// The device id, or why not.
        reply: oneshot::Sender<Result<DeviceId, ErrorCode>>,
    },
    /// The socket `conn` of `device` closed.
    Disconnected {
        /// The device.
        device: DeviceId,
        /// The socket.
        conn: u64,
    },
    /// A `call` request, with the callee looked up.
    Dial {
        /// The calling device.
        device: DeviceId,
        /// The request id.
        id: RequestId,
        /// The callee.
        to: Address,
        /// How to reach the callee.
        route: Route,
        /// Media offered.
        media: Media,
    },
    /// `accept`, `reject`, `hangup` or `signal`.
    Request {
        /// The device.
        device: DeviceId,
        /// The message.
        msg: ClientToNode,
    },
    /// These sessions were revoked: close their sockets, forget their devices.
    SessionsRevoked {
        /// Session ids.
        ids: Vec<String>,
    },
    /// Another node invites a local user (the sender is verified to hold
    /// the caller's zone, and to act for the caller).
    Invited {
        /// The inviting node.
        peer: PeerId,
        /// The call.
        call: CallId,
        /// The remote caller.
        from: Address,
        /// The local callee.
        to: Address,
        /// Media offered.
        media: Media,
        /// `None` if the callee exists here, else why not.
        refused: Option<EndReason>,
        /// The delivery receipt.
        reply: Responder<CallService>,
    },
    /// A message from another node about a call crossing nodes.
    FromNode {
        /// The sending node.
        peer: PeerId,
        /// The message.
        msg: NodeToNode,
        /// The delivery receipt.
        reply: Responder<CallService>,
    },
    /// The home node of a remote callee was found and took the invite.
    PeerResolved {
        /// The call.
        call: CallId,
        /// That node.
        peer: PeerId,
    },
    /// The other node of a call could not be found or reached.
    RouteFailed {
        /// The call.
        call: CallId,
        /// What to tell the caller.
        reason: EndReason,
    },
    /// Send `text` (a [`NodeToClient`] event) to every online device of
    /// each of `users` (of this zone).
    Push {
        /// The users.
        users: Vec<UserName>,
        /// The frame.
        text: String,
    },
    /// The person at `device` is idle, or back.
    Idle {
        /// The device.
        device: DeviceId,
        /// Idle now.
        idle: bool,
    },
    /// Report counts.
    Stats {
        /// Where to send them.
        reply: oneshot::Sender<Stats>,
    },
    /// The node is stopping: refuse new calls and connections, tell every
    /// device, let running calls end within `grace`, then end the rest,
    /// write their history, close every socket and hand the last messages
    /// to other nodes. `done` fires when all that is durable and sent.
    Shutdown {
        /// How long running calls may go on.
        grace: Duration,
        /// Told when the service has wound down.
        done: oneshot::Sender<()>,
    },
}

/// A cheap handle to the calls service.
#[derive(Clone, Debug)]
pub struct Calls {
    tx: mpsc::Sender<Command>,
}

/// What the presence service hears of a user's devices: sent whenever one
/// of these changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Activity {
    /// Devices connected (or in their grace period after a drop).
    pub devices: usize,
    /// Every online device is idle.
    pub idle: bool,
    /// A device is in a call.
    pub in_call: bool,
}

/// Where [`Activity`] goes: the presence service's inbox.
pub type ActivitySink = mpsc::UnboundedSender<(UserName, Activity)>;

struct Conn {
    user: Address,
    idle: bool,
    session: String,
    expires_at_ms: u64,
    conn: u64,
    tx: Option<mpsc::Sender<Outgoing>>,
    held: VecDeque<String>,
}

struct Actor {
    sb: Switchboard,
    epoch: Instant,
    store: Store,
    max_devices: usize,
    max_history: usize,
    conns: HashMap<DeviceId, Conn>,
    pending: Vec<(DeviceId, Outgoing)>,
    notices: Vec<(Address, CallId, Notice)>,
    dirty: bool,
    mesh: Option<Mesh>,
    me: mpsc::Sender<Command>,
    /// Calls that cross nodes: the other node (once known) and the queue
    /// of messages for it.
    remote: HashMap<CallId, RemoteLeg>,
    /// Calls placed here that do not ring yet, and when they were placed
    /// (an entry goes when the call rings or ends).
    dialed: HashMap<CallId, Time>,
    metrics: Metrics,
    /// The tasks carrying calls' messages to other nodes.
    deliveries: tokio::task::JoinSet<()>,
    /// Set once shutting down: until when running calls may go on, and
    /// whom to tell when done.
    closing: Option<(Instant, oneshot::Sender<()>)>,
    zone: ZoneName,
    /// Users whose activity may have changed this turn.
    touched: std::collections::HashSet<Address>,
    /// The activity last told, per user with devices.
    told: HashMap<Address, Activity>,
    activity: Option<ActivitySink>,
}

/// How long a shutdown waits for the last messages to other nodes.
const LAST_DELIVERIES: Duration = Duration::from_secs(5);

/// A fresh random id: 16 random bytes in hex, with a prefix.
pub fn random_id(prefix: &str) -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    format!("{prefix}{}", hex::encode(b))
}

impl Calls {
    /// Starts the service; it runs until every handle is dropped.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn(
        store: Store,
        mesh: Option<Mesh>,
        zone: ZoneName,
        ring: Duration,
        grace: Duration,
        max_devices: usize,
        max_history: usize,
        metrics: Metrics,
        activity: Option<ActivitySink>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let actor = Actor {
            sb: Switchboard::new(SbConfig {
                ring_timeout_ms: ring.as_millis() as u64,
                grace_ms: grace.as_millis() as u64,
            }),
            epoch: Instant::now(),
            store,
            max_devices,
            max_history,
            conns: HashMap::new(),
            pending: Vec::new(),
            notices: Vec::new(),
            dirty: false,
            mesh,
            me: tx.clone(),
            remote: HashMap::new(),
            dialed: HashMap::new(),
            metrics,
            deliveries: tokio::task::JoinSet::new(),
            closing: None,
            zone,
            touched: Default::default(),
            told: HashMap::new(),
            activity,
        };
        tokio::spawn(actor.run(rx));
        Self { tx }
    }

    /// Sends a command, waiting for room.
    pub async fn send(&self, cmd: Command) {
        if self.tx.send(cmd).await.is_err() {
            warn!("calls service is gone");
        }
    }

    /// Winds the service down for a node shutdown (see
    /// [`Command::Shutdown`]); returns once it has, or if it is gone.
    pub async fn shutdown(&self, grace: Duration) {
        let (done, rx) = oneshot::channel();
        self.send(Command::Shutdown { grace, done }).await;
        let _ = rx.await;
    }

    /// Sends `msg` to every online device of each of `users`.
    pub async fn push(&self, users: Vec<UserName>, msg: &NodeToClient) {
        if !users.is_empty() {
            self.send(Command::Push { users, text: msg.to_json() }).await;
        }
    }

    /// Current counts.
    pub async fn stats(&self) -> Stats {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Stats { reply }).await;
        rx.await.unwrap_or_default()
    }
}

impl Actor {
    fn now(&self) -> Time {
        Time(self.epoch.elapsed().as_millis() as u64)
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(256);
        let mut sweep = tokio::time::interval(Duration::from_secs(30));
        loop {
            let mut wake = self.sb.poll_timeout().map(|t| self.epoch + Duration::from_millis(t.0));
            if let Some((until, _)) = &self.closing {
                wake = Some(wake.map_or(*until, |w| w.min(*until)));
            }
            tokio::select! {
                n = rx.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        break;
                    }
                    for cmd in batch.drain(..) {
                        self.command(cmd);
                        self.drain();
                    }
                }
                () = sleep_until_opt(wake) => {
                    let now = self.now();
                    self.sb.handle_timeout(now);
                    self.drain();
                }
                _ = sweep.tick() => self.expire_sessions(),
            }
            self.commit().await;
            while self.deliveries.try_join_next().is_some() {}
            if self.closing.as_ref().is_some_and(|(until, _)| {
                let s = self.sb.stats();
                s.ringing + s.connected == 0 || Instant::now() >= *until
            }) {
                self.wind_down().await;
                break;
            }
        }
        debug!("calls service stopped");
    }

    /// The end of a shutdown: ends every call still running (as if each
    /// device had gone, so history and notices are written and the other
    /// nodes told), closes every socket, and waits (bounded) for the
    /// messages to other nodes to go out.
    async fn wind_down(&mut self) {
        let sockets: Vec<mpsc::Sender<Outgoing>> = self.conns.values().filter_map(|c| c.tx.clone()).collect();
        let devices: Vec<DeviceId> = self.conns.keys().cloned().collect();
        for device in devices {
            // One at a time, delivering as it goes: the other party of a
            // call hears it ended before its own socket closes.
            let now = self.now();
            self.sb.handle_input(now, Input::DeviceGone { device });
            self.drain();
            self.commit().await;
        }
        for tx in sockets {
            let _ = tx.try_send(Outgoing::Close(1001, "node shutting down"));
        }
        // Every call's queue to another node goes with its call; each
        // task ends once it has sent what it holds.
        self.remote.clear();
        let _ =
            tokio::time::timeout(LAST_DELIVERIES, async { while self.deliveries.join_next().await.is_some() {} }).await;
        if let Some((_, done)) = self.closing.take() {
            let _ = done.send(());
        }
    }

    /// Makes this turn's writes durable, then delivers its frames.
    async fn commit(&mut self) {
        if self.dirty {
            self.dirty = false;
            if let Err(e) = self.store.flush().await {
                warn!(error = %e, "flush failed");
            }
        }
        for (user, call, notice) in std::mem::take(&mut self.notices) {
            let msg = NodeToClient::MissedCall { notice }.to_json();
            let targets: Vec<DeviceId> =
                self.sb.online_devices(&user).filter(|d| self.sb.call_of(d) != Some(&call)).cloned().collect();
            for d in targets {
                self.pending.push((d, Outgoing::Text(msg.clone())));
            }
        }
        for (device, out) in std::mem::take(&mut self.pending) {
            self.deliver(device, out);
        }
        self.tell_activity();
    }

    /// Tells the presence service of every touched user whose activity
    /// changed.
    fn tell_activity(&mut self) {
        for user in std::mem::take(&mut self.touched) {
            let devices = self.sb.device_count(&user);
            let mut online = self.sb.online_devices(&user).peekable();
            let any_online = online.peek().is_some();
            let idle = any_online && online.all(|d| self.conns.get(d).is_some_and(|c| c.idle));
            let now = Activity { devices, idle, in_call: devices > 0 && self.sb.in_call(&user) };
            let before = self.told.get(&user).copied().unwrap_or_default();
            if now == before {
                continue;
            }
            if devices == 0 {
                self.told.remove(&user);
            } else {
                self.told.insert(user.clone(), now);
            }
            if let Some(sink) = &self.activity {
                let _ = sink.send((user.name, now));
            }
        }
    }

    fn touch(&mut self, device: &DeviceId) {
        if let Some(c) = self.conns.get(device) {
            self.touched.insert(c.user.clone());
        }
    }

    fn deliver(&mut self, device: DeviceId, out: Outgoing) {
        let Some(conn) = self.conns.get_mut(&device) else { return };
        let Some(tx) = &conn.tx else {
            if let Outgoing::Text(t) = out {
                if conn.held.len() == HELD_MAX {
                    conn.held.pop_front();
                }
                conn.held.push_back(t);
            }
            return;
        };
        if let Err(e) = tx.try_send(out) {
            let stuck = matches!(e, mpsc::error::TrySendError::Full(_));
            if stuck {
                warn!(device = %device.0, "device does not read its socket; disconnecting it");
                let _ = tx.try_send(Outgoing::Close(1008, "too slow"));
            }
            conn.tx = None;
            self.touched.insert(conn.user.clone());
            let now = self.now();
            self.sb.handle_input(now, Input::DeviceLost { device });
            self.drain();
        }
    }

    fn queue(&mut self, device: &DeviceId, msg: &NodeToClient) {
        self.touch(device);
        if let NodeToClient::Ringing { call } = msg {
            if let Some(placed) = self.dialed.remove(call) {
                self.metrics.call_set_up(Duration::from_millis(self.now().since(placed)));
            }
        }
        self.pending.push((device.clone(), Outgoing::Text(msg.to_json())));
    }

    fn command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Connect { reply, .. } if self.closing.is_some() => {
                let _ = reply.send(Err(ErrorCode::ShuttingDown));
            }
            Command::Connect { hello, user, session, expires_at_ms, resume, conn, tx, reply } => {
                let result = self.connect(now, hello, user, session, expires_at_ms, resume, conn, tx);
                let _ = reply.send(result);
            }
            Command::Disconnected { device, conn } => {
                let Some(c) = self.conns.get_mut(&device) else { return };
                if c.conn != conn {
                    return; // An older socket of a device that has since resumed.
                }
                c.tx = None;
                self.touched.insert(c.user.clone());
                self.sb.handle_input(now, Input::DeviceLost { device });
            }
            Command::Dial { device, id, .. } if self.closing.is_some() => {
                self.queue(
                    &device,
                    &NodeToClient::error(Some(id), ErrorCode::ShuttingDown, "the node is shutting down"),
                );
            }
            Command::Dial { device, id, to, route, media } => {
                let call = CallId(random_id(""));
                info!(call = %call.0, to = %Pii(&to), "dial");
                self.dialed.insert(call.clone(), now);
                self.sb.handle_input(now, Input::Dial { device, id, call, callee: to, route, media });
            }
            Command::Request { device, msg } => self.sb.handle_input(now, Input::Request { device, msg }),
            Command::SessionsRevoked { ids } => {
                let gone: Vec<DeviceId> =
                    self.conns.iter().filter(|(_, c)| ids.contains(&c.session)).map(|(d, _)| d.clone()).collect();
                for d in gone {
                    self.touch(&d);
                    // Close now: the device is forgotten below, so a queued
                    // frame would find no connection to go to.
                    if let Some(tx) = self.conns.get_mut(&d).and_then(|c| c.tx.take()) {
                        let _ = tx.try_send(Outgoing::Close(1008, "session revoked"));
                    }
                    self.sb.handle_input(now, Input::DeviceGone { device: d });
                }
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.sb.stats());
            }
            Command::Push { users, text } => {
                for name in users {
                    let user = Address::new(name, self.zone.clone());
                    let devices: Vec<DeviceId> = self.sb.online_devices(&user).cloned().collect();
                    for d in devices {
                        self.pending.push((d, Outgoing::Text(text.clone())));
                    }
                }
            }
            Command::Idle { device, idle } => {
                if let Some(c) = self.conns.get_mut(&device) {
                    c.idle = idle;
                    self.touched.insert(c.user.clone());
                }
            }
            Command::Shutdown { grace, done } => {
                info!(grace_ms = grace.as_millis() as u64, "calls: shutting down");
                let within_ms = grace.as_millis() as u64;
                let online: Vec<DeviceId> =
                    self.conns.iter().filter(|(_, c)| c.tx.is_some()).map(|(d, _)| d.clone()).collect();
                for d in online {
                    self.queue(&d, &NodeToClient::GoingAway { within_ms });
                }
                self.closing = Some((Instant::now() + grace, done));
            }
            Command::Invited { reply, .. } if self.closing.is_some() => {
                tokio::spawn(reply.refuse("the node is shutting down"));
            }
            Command::Invited { peer, call, from, to, media, refused, reply } => {
                if !self.remote.contains_key(&call) {
                    let leg = RemoteLeg { peer: Some(peer), local: Some(to.name.clone()), queue: None };
                    self.remote.insert(call.clone(), leg);
                    info!(call = %call.0, from = %Pii(&from), "invited from another zone");
                    self.sb.handle_input(now, Input::Invited { call, from, to, media, refused });
                }
                tokio::spawn(reply.ok(()));
            }
            Command::FromNode { peer, msg, reply } => {
                let known = self.remote.get(msg.call()).is_some_and(|r| r.peer == Some(peer));
                if known {
                    self.sb.handle_input(now, Input::FromNode { msg });
                    tokio::spawn(reply.ok(()));
                } else {
                    tokio::spawn(reply.refuse("no such call with this node"));
                }
            }
            Command::PeerResolved { call, peer } => {
                if let Some(r) = self.remote.get_mut(&call) {
                    r.peer = Some(peer);
                }
            }
            Command::RouteFailed { call, reason } => {
                self.sb.handle_input(now, Input::RouteFailed { call, reason });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn connect(
        &mut self,
        now: Time,
        hello: RequestId,
        user: Address,
        session: String,
        expires_at_ms: u64,
        resume: Option<DeviceId>,
        conn: u64,
        tx: mpsc::Sender<Outgoing>,
    ) -> Result<DeviceId, ErrorCode> {
        let (device, resumed) = match resume {
            Some(d) => {
                let ok = self.sb.user_of(&d) == Some(&user) && self.conns.contains_key(&d);
                if !ok {
                    return Err(ErrorCode::ResumeFailed);
                }
                (d, true)
            }
            None => {
                if self.sb.device_count(&user) >= self.max_devices {
                    return Err(ErrorCode::TooManyDevices);
                }
                (DeviceId(random_id("d")), false)
            }
        };
        let held = match self.conns.remove(&device) {
            Some(mut old) => {
                if let Some(old_tx) = old.tx.take() {
                    let _ = old_tx.try_send(Outgoing::Close(4000, "resumed on another connection"));
                }
                old.held
            }
            None => VecDeque::new(),
        };
        self.touched.insert(user.clone());
        let conn =
            Conn { user: user.clone(), idle: false, session, expires_at_ms, conn, tx: Some(tx), held: VecDeque::new() };
        self.conns.insert(device.clone(), conn);
        self.queue(&device, &NodeToClient::Welcome { id: hello, device: device.clone(), user: user.clone(), resumed });
        for text in held {
            self.pending.push((device.clone(), Outgoing::Text(text)));
        }
        self.sb.handle_input(now, Input::DeviceOnline { device: device.clone(), user: user.clone() });
        if !resumed {
            match self.store.notices(user.name.as_str(), false) {
                Ok(list) => {
                    for notice in list {
                        self.queue(&device, &NodeToClient::MissedCall { notice });
                    }
                }
                Err(e) => warn!(error = %e, "reading notices failed"),
            }
        }
        Ok(device)
    }

    fn expire_sessions(&mut self) {
        let now_ms = now_ms();
        let expired: Vec<String> =
            self.conns.values().filter(|c| c.expires_at_ms <= now_ms).map(|c| c.session.clone()).collect();
        if !expired.is_empty() {
            self.command(Command::SessionsRevoked { ids: expired });
            self.drain();
        }
    }

    /// Acts on every switchboard output.
    fn drain(&mut self) {
        while let Some(out) = self.sb.poll_output() {
            match out {
                Output::Send { to, msg } => self.queue(&to, &msg),
                Output::CallFinished(record) => {
                    self.remote.remove(&record.call);
                    self.dialed.remove(&record.call);
                    self.metrics.call_finished(record.outcome());
                    self.record(&record);
                }
                Output::ToNode { peer, msg } => self.send_node(peer, msg),
                Output::DeviceRemoved { device } => {
                    if let Some(c) = self.conns.remove(&device) {
                        self.touched.insert(c.user);
                    }
                }
                _ => {}
            }
        }
    }

    /// Queues `msg` for the other node of its call, starting the call's
    /// delivery task on its first message.
    fn send_node(&mut self, peer_user: Address, msg: NodeToNode) {
        let Some(mesh) = self.mesh.clone() else {
            let call = msg.call().clone();
            let now = self.now();
            self.sb.handle_input(now, Input::RouteFailed { call, reason: EndReason::UnknownZone });
            return;
        };
        let call = msg.call().clone();
        // The caller's node learns its local party from the invite; the
        // callee's node set it when invited.
        let caller = match &msg {
            NodeToNode::Invite { from, .. } => Some(from.name.clone()),
            _ => None,
        };
        let leg = self.remote.entry(call.clone()).or_insert(RemoteLeg { peer: None, local: caller, queue: None });
        let queue = leg.queue.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel(REMOTE_QUEUE);
            let ends = remote::Ends { peer: leg.peer, local: leg.local.clone(), remote: peer_user };
            self.deliveries.spawn(deliver(mesh, ends, call.clone(), rx, self.me.clone()));
            tx
        });
        if queue.try_send(msg).is_err() {
            warn!(call = %call.0, "remote call queue full; ending the call");
            let now = self.now();
            self.sb.handle_input(now, Input::RouteFailed { call, reason: EndReason::UnreachableZone });
        }
    }

    /// Writes history for both sides and a notice for a missed call.
    fn record(&mut self, r: &CallRecord) {
        let wall_now = now_ms();
        let started_at_ms = wall_now.saturating_sub(self.now().since(r.placed_at));
        let entry = |kind, peer: &Address| HistoryEntry {
            id: 0,
            call: r.call.clone(),
            kind,
            peer: peer.clone(),
            media: r.media,
            started_at_ms,
            duration_ms: r.duration_ms(),
            outcome: r.outcome(),
        };
        info!(call = %r.call.0, outcome = ?r.outcome(), duration_ms = r.duration_ms(), "call finished");
        let mut writes = Vec::new();
        if r.caller_local {
            writes.push((r.caller.clone(), entry(HistoryKind::Sent, &r.callee)));
        }
        if r.callee_local {
            let kind = if r.is_missed() { HistoryKind::Missed } else { HistoryKind::Received };
            writes.push((r.callee.clone(), entry(kind, &r.caller)));
        }
        for (user, e) in writes {
            if let Err(err) = self.store.add_history(user.name.as_str(), e, self.max_history) {
                warn!(error = %err, "writing history failed");
            }
        }
        if r.is_missed() {
            let notice = Notice {
                id: 0,
                call: r.call.clone(),
                from: r.caller.clone(),
                at_ms: started_at_ms,
                reason: r.reason,
                read: false,
            };
            match self.store.add_notice(r.callee.name.as_str(), notice) {
                Ok(n) => self.notices.push((r.callee.clone(), r.call.clone(), n)),
                Err(err) => warn!(error = %err, "writing notice failed"),
            }
        }
        self.dirty = true;
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Shared reference to the calls service.
pub type SharedCalls = Arc<Calls>;
