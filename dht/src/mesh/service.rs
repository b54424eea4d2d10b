//! The node-to-node service layer: every request one zone node makes of
//! another, whatever the feature, takes this one path.
//!
//! - **Out**: [`Mesh::request`] wraps a service's typed request in a
//!   versioned [`NodeRequest`] (the service's name, this node's zone, the
//!   user it acts for) and delivers it with a receipt, a timeout and
//!   retries; [`Mesh::send`] resolves a user's home node first.
//! - **In**: the swarm task hands every inbound request, unread, to one
//!   router task, which refuses what it must with a typed [`Refusal`] —
//!   another envelope version, a service this node does not run, a body
//!   over the service's size, a peer over its request rate, a peer that
//!   does not hold the claim of the zone it speaks for — and gives the
//!   rest to the service's [`Incoming`] queue, which a node registers with
//!   [`Mesh::serve`]. The service answers through the [`Responder`].
//!
//! A new service is a [`Service`] type and a handler reading its
//! [`Incoming`]: the swarm task, the router and the delivery code stay as
//! they are.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::core::Multiaddr;
use libp2p::request_response::ResponseChannel;
use libp2p::PeerId;
use signalling::service::{NodeReply, NodeRequest, Refusal, Service, ENVELOPE_VERSION};
use signalling::{Address, UserName, ZoneName};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::debug;

use super::limits::RateLimits;
use super::swarm::Cmd;
use super::{lock, Mesh, MeshError, RouteError, Shared};

/// Requests being authenticated at once (each may need a claim lookup);
/// past that they are refused as busy.
const MAX_AUTHENTICATING: usize = 256;
/// How long a peer found to hold a zone is believed without asking again
/// (protocol time): a conversation's requests cost one check, whatever
/// `cache_ttl` is.
const AUTH_TTL: Duration = Duration::from_secs(60);
/// How long a peer found not to hold a zone is refused without asking
/// again (protocol time): naming zones it does not hold costs a peer one
/// lookup per zone and ten seconds, not one per request.
const DENY_TTL: Duration = Duration::from_secs(10);
/// (peer, zone) pairs remembered either way; past that, all are
/// forgotten.
const MAX_AUTHENTICATED: usize = 4096;
/// Checks one peer may have under way at once; past that its requests are
/// refused as busy, so one peer cannot take every check.
const MAX_CHECKS_PER_PEER: usize = 4;

/// An inbound request as the swarm task hands it over: not yet read.
#[derive(Debug)]
pub(crate) struct RawInbound {
    pub(crate) peer: PeerId,
    pub(crate) from: Option<std::net::IpAddr>,
    pub(crate) request: NodeRequest,
    pub(crate) channel: ResponseChannel<NodeReply>,
}

/// A service a node serves: where its requests go, and its size limit.
struct Registration {
    tx: mpsc::Sender<RawInbound>,
    max_bytes: usize,
}

/// The services this node serves, by name.
#[derive(Default)]
pub(super) struct Registry(std::sync::Mutex<HashMap<&'static str, Registration>>);

/// What the router knows of peers and the zones they speak for.
#[derive(Default)]
pub(super) struct Authenticated(std::sync::Mutex<AuthState>);

#[derive(Default)]
pub(super) struct AuthState {
    /// Whether a peer holds a zone, and since when that is known.
    known: HashMap<(PeerId, ZoneName), (bool, Instant)>,
    /// Checks under way, per peer.
    checking: HashMap<PeerId, usize>,
}

/// A request of service `S` from another node, authenticated: the sending
/// peer holds the claim of `zone`.
#[derive(Debug)]
pub struct Inbound<S: Service> {
    /// The sending node (authenticated by the transport).
    pub peer: PeerId,
    /// The IP address its connection comes from (`None` when relayed).
    pub from: Option<std::net::IpAddr>,
    /// The zone it speaks for (it holds that zone's claim).
    pub zone: ZoneName,
    /// The user of `zone` it acts for, if any.
    pub user: Option<UserName>,
    /// The request.
    pub request: S::Request,
    /// Where the answer goes.
    pub reply: Responder<S>,
}

/// Sends the answer to one [`Inbound`] request.
pub struct Responder<S: Service> {
    channel: ResponseChannel<NodeReply>,
    cmd: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    service: PhantomData<fn() -> S>,
}

/// The queue of one service's inbound requests ([`Mesh::serve`]).
pub struct Incoming<S: Service> {
    rx: mpsc::Receiver<RawInbound>,
    cmd: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    service: PhantomData<fn() -> S>,
}

impl<S: Service> Inbound<S> {
    /// The user the request acts for, as an address.
    pub fn acting_for(&self) -> Option<Address> {
        self.user.clone().map(|name| Address::new(name, self.zone.clone()))
    }
}

impl<S: Service> Responder<S> {
    /// Answers with the service's reply.
    pub async fn ok(self, reply: S::Reply) {
        let reply = match NodeReply::ok::<S>(&reply) {
            Ok(r) => r,
            Err(e) => NodeReply::refused(Refusal::Refused, format!("reply did not encode: {e}")),
        };
        let _ = self.cmd.send(Cmd::Respond { channel: self.channel, reply }).await;
    }

    /// Refuses the request for a reason of the service's own (counted as
    /// [`Refusal::Refused`]).
    pub async fn refuse(self, reason: impl Into<String>) {
        count(&self.shared, Refusal::Refused);
        let reply = NodeReply::refused(Refusal::Refused, reason);
        let _ = self.cmd.send(Cmd::Respond { channel: self.channel, reply }).await;
    }

    /// [`Responder::ok`] or [`Responder::refuse`].
    pub async fn answer(self, result: Result<S::Reply, String>) {
        match result {
            Ok(reply) => self.ok(reply).await,
            Err(reason) => self.refuse(reason).await,
        }
    }
}

impl<S: Service> std::fmt::Debug for Responder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").field("service", &S::NAME).finish_non_exhaustive()
    }
}

impl<S: Service> Incoming<S> {
    /// The next request, or `None` once the mesh has stopped. A body that
    /// is not a request of `S` is refused as [`Refusal::BadRequest`] here
    /// and skipped.
    pub async fn recv(&mut self) -> Option<Inbound<S>> {
        loop {
            let RawInbound { peer, from, request, channel } = self.rx.recv().await?;
            match request.decode::<S>() {
                Ok(body) => {
                    let reply =
                        Responder { channel, cmd: self.cmd.clone(), shared: self.shared.clone(), service: PhantomData };
                    return Some(Inbound { peer, from, zone: request.zone, user: request.user, request: body, reply });
                }
                Err(e) => {
                    debug!(%peer, service = S::NAME, error = %e, "refused a request that does not decode");
                    refuse(&self.cmd, &self.shared, channel, Refusal::BadRequest, e.to_string()).await;
                }
            }
        }
    }
}

/// Counts a refusal by cause for `mesh status`.
pub(super) fn count(shared: &Shared, why: Refusal) {
    *lock(&shared.refused_requests).entry(why).or_default() += 1;
}

async fn refuse(
    cmd: &mpsc::Sender<Cmd>,
    shared: &Shared,
    channel: ResponseChannel<NodeReply>,
    why: Refusal,
    reason: impl Into<String>,
) {
    count(shared, why);
    let _ = cmd.send(Cmd::Respond { channel, reply: NodeReply::refused(why, reason) }).await;
}

impl Mesh {
    /// Serves service `S`: its requests from other nodes, authenticated,
    /// arrive on the returned queue (at most `capacity` waiting; past that
    /// they are refused as busy). One queue per service.
    pub fn serve<S: Service>(&self, capacity: usize) -> Result<Incoming<S>, MeshError> {
        let mut services = lock(&self.shared.services.0);
        if services.get(S::NAME).is_some_and(|r| !r.tx.is_closed()) {
            return Err(MeshError::ServiceTaken(S::NAME));
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        services.insert(S::NAME, Registration { tx, max_bytes: S::MAX_BYTES });
        Ok(Incoming { rx, cmd: self.cmd.clone(), shared: self.shared.clone(), service: PhantomData })
    }

    /// Sends `request` of service `S` to `peer`, acting for `user` of this
    /// zone (if any), dialling `addrs` if not connected; waits for the
    /// answer, trying again (with backoff) on a transport failure or a
    /// [`Refusal::Busy`].
    pub async fn request<S: Service>(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        user: Option<&UserName>,
        request: &S::Request,
    ) -> Result<S::Reply, RouteError> {
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(RouteError::Stopped);
        }
        let envelope = NodeRequest::new::<S>(self.zone.clone(), user.cloned(), request)
            .map_err(|e| RouteError::BadRequest(e.to_string()))?;
        let mut last = String::new();
        for attempt in 0..=self.config.retries {
            if attempt > 0 {
                tokio::time::sleep(self.config.stretch(Duration::from_millis(100 << attempt))).await;
            }
            let (reply, rx) = oneshot::channel();
            let cmd = Cmd::Send { peer, addrs: addrs.clone(), request: envelope.clone(), reply };
            self.cmd.send(cmd).await.map_err(|_| RouteError::Stopped)?;
            match rx.await.map_err(|_| RouteError::Stopped)? {
                Ok(NodeReply::Ok { body }) => {
                    self.shared.delivered.fetch_add(1, Ordering::Relaxed);
                    return serde_json::from_str(body.get()).map_err(|e| RouteError::BadReply(e.to_string()));
                }
                // Busy (its queue, or its checks of a peer new to it, are
                // full) is "not now": tried again like a transport failure.
                Ok(NodeReply::Refused { code: Refusal::Busy, reason }) if attempt < self.config.retries => {
                    last = reason;
                }
                Ok(NodeReply::Refused { code, reason }) => {
                    self.shared.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(RouteError::Refused { code, reason });
                }
                Err(e) => last = e,
            }
        }
        self.shared.failed.fetch_add(1, Ordering::Relaxed);
        Err(RouteError::Unreachable(last))
    }

    /// [`Mesh::request`] to a node already known (the other node of a
    /// call).
    pub async fn send_to<S: Service>(
        &self,
        peer: PeerId,
        user: Option<&UserName>,
        request: &S::Request,
    ) -> Result<S::Reply, RouteError> {
        self.request::<S>(peer, Vec::new(), user, request).await
    }

    /// Sends `request` to `to`'s home node, resolving it first; returns
    /// the node it went to and its answer. A node that cannot be reached
    /// drops the cached route, and the request goes once more after a
    /// fresh lookup (the user may have moved).
    pub async fn send<S: Service>(
        &self,
        to: &Address,
        user: Option<&UserName>,
        request: &S::Request,
    ) -> Result<(PeerId, S::Reply), RouteError> {
        let (peer, addrs) = self.resolve(to).await?;
        match self.request::<S>(peer, addrs, user, request).await {
            Err(RouteError::Unreachable(_)) => {
                self.forget(to);
                let (peer, addrs) = self.resolve(to).await?;
                self.request::<S>(peer, addrs, user, request).await.map(|r| (peer, r))
            }
            answered => answered.map(|r| (peer, r)),
        }
    }
}

/// What is known of whether `peer` holds `zone`: `Some(true)` within
/// [`AUTH_TTL`] of the mesh saying so, `Some(false)` within [`DENY_TTL`] of
/// it saying not, else `None`.
fn known(mesh: &Mesh, peer: PeerId, zone: &ZoneName) -> Option<bool> {
    let auth = lock(&mesh.shared.authenticated.0);
    let &(holds, at) = auth.known.get(&(peer, zone.clone()))?;
    let ttl = mesh.config.stretch(if holds { AUTH_TTL } else { DENY_TTL });
    (at.elapsed() < ttl).then_some(holds)
}

/// Asks the mesh whether `peer` holds `zone`, and remembers the answer.
async fn check(mesh: &Mesh, peer: PeerId, zone: &ZoneName) -> bool {
    let holds = mesh.holds_zone(peer, zone).await;
    let mut auth = lock(&mesh.shared.authenticated.0);
    if auth.known.len() >= MAX_AUTHENTICATED {
        auth.known.clear();
    }
    auth.known.insert((peer, zone.clone()), (holds, Instant::now()));
    holds
}

/// Hands an authenticated request to its service's queue.
async fn dispatch(mesh: &Mesh, tx: &mpsc::Sender<RawInbound>, raw: RawInbound) {
    if let Err(e) = tx.try_send(raw) {
        let (why, raw) = match e {
            mpsc::error::TrySendError::Full(r) => ((Refusal::Busy, "service busy"), r),
            mpsc::error::TrySendError::Closed(r) => ((Refusal::UnknownService, "service stopped"), r),
        };
        refuse(&mesh.cmd, &mesh.shared, raw.channel, why.0, why.1).await;
    }
}

async fn unauthorised(mesh: &Mesh, raw: RawInbound) {
    debug!(peer = %raw.peer, zone = %raw.request.zone, "refused a request: the sender does not hold the zone");
    let why = format!("sender does not hold zone {}", raw.request.zone);
    refuse(&mesh.cmd, &mesh.shared, raw.channel, Refusal::Unauthorised, why).await;
}

/// The router: checks each inbound request and hands it to its service.
pub(super) async fn route(mesh: Mesh, mut inbound: mpsc::Receiver<RawInbound>) {
    let rate = f64::from(mesh.config.peer_requests_per_second);
    let mut rates = RateLimits::new(rate, 2.0 * rate);
    let authenticating = Arc::new(Semaphore::new(MAX_AUTHENTICATING));
    while let Some(raw) = inbound.recv().await {
        let (cmd, shared) = (&mesh.cmd, &mesh.shared);
        let req = &raw.request;
        if req.v != ENVELOPE_VERSION {
            let why = format!("envelope version {} is not {ENVELOPE_VERSION}", req.v);
            refuse(cmd, shared, raw.channel, Refusal::UnsupportedVersion, why).await;
            continue;
        }
        let found = lock(&shared.services.0).get(req.service.as_str()).map(|r| (r.tx.clone(), r.max_bytes));
        let Some((tx, max_bytes)) = found else {
            let why = format!("no service {:?} here", req.service);
            refuse(cmd, shared, raw.channel, Refusal::UnknownService, why).await;
            continue;
        };
        if req.body.get().len() > max_bytes {
            let why = format!("{} bytes; {} takes at most {max_bytes}", req.body.get().len(), req.service);
            refuse(cmd, shared, raw.channel, Refusal::TooLarge, why).await;
            continue;
        }
        if !rates.allow(&raw.peer, Instant::now()) {
            refuse(cmd, shared, raw.channel, Refusal::RateLimited, "too many requests").await;
            continue;
        }
        // What the router knows already answers at once, in order.
        match known(&mesh, raw.peer, &req.zone) {
            Some(true) => {
                dispatch(&mesh, &tx, raw).await;
                continue;
            }
            Some(false) => {
                unauthorised(&mesh, raw).await;
                continue;
            }
            None => {}
        }
        let peer = raw.peer;
        let busy = {
            let mut auth = lock(&shared.authenticated.0);
            let n = auth.checking.entry(peer).or_default();
            let full = *n >= MAX_CHECKS_PER_PEER;
            if !full {
                *n += 1;
            }
            full
        };
        let permit = if busy { None } else { authenticating.clone().try_acquire_owned().ok() };
        let Some(permit) = permit else {
            if !busy {
                done_checking(shared, peer);
            }
            refuse(cmd, shared, raw.channel, Refusal::Busy, "node busy").await;
            continue;
        };
        // The claim check may need a lookup: it must not hold up others.
        // A sender waits for each answer before its next request, so one
        // conversation's requests still reach the service in order.
        let mesh = mesh.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let holds = check(&mesh, peer, &raw.request.zone).await;
            done_checking(&mesh.shared, peer);
            if holds {
                dispatch(&mesh, &tx, raw).await;
            } else {
                unauthorised(&mesh, raw).await;
            }
        });
    }
}

/// One check of `peer`'s has ended.
fn done_checking(shared: &Shared, peer: PeerId) {
    let mut auth = lock(&shared.authenticated.0);
    if let Some(n) = auth.checking.get_mut(&peer) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            auth.checking.remove(&peer);
        }
    }
}
