//! The node's edge toward other nodes: each service this node runs on the
//! mesh reads its requests here and hands them to its domain's service.
//!
//! The mesh's service layer (`dht::service`) has already authenticated
//! every request: its sending node holds the claim of the zone it speaks
//! for. What is left here is each service's own check:
//!
//! - **calls**: an invite must name as its caller the user the request
//!   acts for, and as its callee a user of this zone; every later message
//!   of a call must come from the node the call was set up with (checked
//!   by the calls service).
//! - **node**: answered here (zone, version, wall clock; a dial-back to
//!   the asking zone's claimed addresses, at most one per zone every 10 s).
//! - **contact**: every step must act for a user (of the sending zone) and
//!   name a user of this zone; the contacts service checks the rest.
//! - **presence**: an update must act for a user, and is shown only to
//!   local users who hold that user as an accepted contact; a sync acts
//!   for no user, and each pair it names counts only if this node holds
//!   it accepted too.
//! - **profile**: a question acts for a user, and is answered only about a
//!   local user who holds that user as an accepted contact.
//!
//! A new service registers its queue in [`Inbound::serve`] and gets a
//! reader in [`Inbound::spawn`].

use std::sync::Arc;

use dht::{Incoming, Mesh, MeshError};
use signalling::contacts::{ContactService, PresenceAnswer, PresenceNote, PresenceService};
use signalling::profiles::{ProfileAnswer, ProfileService};
use signalling::service::{CallService, NodeAnswer, NodeQuery, NodeService};
use signalling::{EndReason, NodeToNode};
use tracing::warn;

use crate::pii::Pii;
use crate::services::accounts::now_ms;
use crate::services::calls::Command;
use crate::state::AppState;

/// Call requests queued before the mesh answers "busy".
const CALL_QUEUE: usize = 1024;
/// Node questions queued before the mesh answers "busy".
const NODE_QUEUE: usize = 64;
/// Contact steps queued before the mesh answers "busy".
const CONTACT_QUEUE: usize = 256;
/// Presence notes queued before the mesh answers "busy".
const PRESENCE_QUEUE: usize = 1024;
/// Profile questions queued before the mesh answers "busy".
const PROFILE_QUEUE: usize = 256;

/// The queues of the services this node runs on the mesh.
pub struct Inbound {
    calls: Incoming<CallService>,
    node: Incoming<NodeService>,
    contacts: Incoming<ContactService>,
    presence: Incoming<PresenceService>,
    profiles: Incoming<ProfileService>,
}

impl Inbound {
    /// Registers every service with the mesh (before the node publishes
    /// anything, so no request finds a service missing).
    pub fn serve(mesh: &Mesh) -> Result<Self, MeshError> {
        Ok(Self {
            calls: mesh.serve::<CallService>(CALL_QUEUE)?,
            node: mesh.serve::<NodeService>(NODE_QUEUE)?,
            contacts: mesh.serve::<ContactService>(CONTACT_QUEUE)?,
            presence: mesh.serve::<PresenceService>(PRESENCE_QUEUE)?,
            profiles: mesh.serve::<ProfileService>(PROFILE_QUEUE)?,
        })
    }

    /// Starts one reader per service; each runs until the mesh stops.
    pub fn spawn(self, state: Arc<AppState>) {
        tokio::spawn(serve_calls(state.clone(), self.calls));
        tokio::spawn(serve_contacts(state.clone(), self.contacts));
        tokio::spawn(serve_presence(state.clone(), self.presence));
        tokio::spawn(serve_profiles(state.clone(), self.profiles));
        tokio::spawn(serve_node(state, self.node));
    }
}

/// Hands contact steps to the contacts service, each on a task of its
/// own (a step writes and flushes; one slow pair does not hold the rest).
async fn serve_contacts(state: Arc<AppState>, mut inbound: Incoming<ContactService>) {
    while let Some(req) = inbound.recv().await {
        let Some(from) = req.acting_for() else {
            req.reply.refuse("a contact step acts for a user").await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let answer = state.contacts.from_node(&from, req.request).await;
            req.reply.answer(answer.map_err(|e| e.to_string())).await;
        });
    }
}

/// Hands presence notes to the presence service.
async fn serve_presence(state: Arc<AppState>, mut inbound: Incoming<PresenceService>) {
    use crate::services::presence::Command as P;
    while let Some(req) = inbound.recv().await {
        let dht::Inbound { zone, user, request, reply, .. } = req;
        match request {
            PresenceNote::Update { presence } => {
                let Some(from) = req_user(&zone, user) else {
                    reply.refuse("a presence update acts for a user").await;
                    continue;
                };
                let (tx, rx) = tokio::sync::oneshot::channel();
                state.presence.send(P::Remote { from, presence, reply: tx }).await;
                tokio::spawn(async move {
                    let shown_to = rx.await.unwrap_or(0);
                    reply.ok(PresenceAnswer::Taken { shown_to }).await;
                });
            }
            PresenceNote::Sync { pairs, presence } => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                state.presence.send(P::Sync { zone, pairs, presence, reply: tx }).await;
                tokio::spawn(async move {
                    match rx.await {
                        Ok(answer) => reply.ok(answer).await,
                        Err(_) => reply.refuse("presence service unavailable").await,
                    }
                });
            }
            _ => reply.refuse("this node does not know that note").await,
        }
    }
}

/// Answers profile questions (from the store: no task of their own).
async fn serve_profiles(state: Arc<AppState>, mut inbound: Incoming<ProfileService>) {
    while let Some(req) = inbound.recv().await {
        let answer = match req.acting_for() {
            Some(asker) => state.profiles.from_node(&asker, &req.request).map_err(|e| e.to_string()),
            None => Ok(ProfileAnswer::NotVisible),
        };
        req.reply.answer(answer).await;
    }
}

fn req_user(zone: &signalling::ZoneName, user: Option<signalling::UserName>) -> Option<signalling::Address> {
    user.map(|name| signalling::Address::new(name, zone.clone()))
}

/// Hands call requests to the calls service, in the order they came.
async fn serve_calls(state: Arc<AppState>, mut inbound: Incoming<CallService>) {
    while let Some(req) = inbound.recv().await {
        let acting_for = req.acting_for();
        let dht::Inbound { peer, request, reply, .. } = req;
        match request {
            NodeToNode::Invite { call, from, to, media } => {
                if &to.zone != state.accounts.zone() {
                    reply.refuse("not this node's zone").await;
                    continue;
                }
                if acting_for.as_ref() != Some(&from) {
                    warn!(%peer, from = %Pii(&from), "invite naming a caller the request does not act for");
                    reply.refuse("the caller is not the user the request acts for").await;
                    continue;
                }
                let refused = match state.store.user_exists(to.name.as_str()) {
                    Ok(true) => None,
                    Ok(false) => Some(EndReason::UnknownUser),
                    Err(e) => {
                        warn!(error = %e, "user lookup failed");
                        reply.refuse("store error").await;
                        continue;
                    }
                };
                state.calls.send(Command::Invited { peer, call, from, to, media, refused, reply }).await;
            }
            msg => state.calls.send(Command::FromNode { peer, msg, reply }).await,
        }
    }
}

/// How long a dial-back connection may take.
const DIAL_BACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// How often one zone may ask for a dial-back.
const DIAL_BACK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Answers questions about this node.
async fn serve_node(state: Arc<AppState>, mut inbound: Incoming<NodeService>) {
    let mut dialled: std::collections::HashMap<signalling::ZoneName, std::time::Instant> = Default::default();
    while let Some(req) = inbound.recv().await {
        match req.request {
            NodeQuery::Ping => {
                let zone = state.accounts.zone().clone();
                let version = env!("CARGO_PKG_VERSION").to_string();
                req.reply.ok(NodeAnswer::Pong { zone, version, wall_ms: now_ms() }).await;
            }
            NodeQuery::DialBack => {
                if dialled.get(&req.zone).is_some_and(|at| at.elapsed() < DIAL_BACK_EVERY) {
                    req.reply.refuse("one dial-back per zone every 10 s").await;
                    continue;
                }
                dialled.retain(|_, at| at.elapsed() < DIAL_BACK_EVERY);
                dialled.insert(req.zone.clone(), std::time::Instant::now());
                let (Some(mesh), Some(from)) = (state.mesh.clone(), req.from) else {
                    req.reply.refuse("a dial-back needs a direct connection").await;
                    continue;
                };
                // Off the reader: dialling takes up to DIAL_BACK_TIMEOUT.
                tokio::spawn(async move {
                    let Some(claim) = mesh.zone_claim(&req.zone).await else {
                        req.reply.refuse("no claim of your zone is known here").await;
                        return;
                    };
                    let (reached, unreachable) = dial_back(&claim.claim.addrs, from).await;
                    req.reply.ok(NodeAnswer::DialedBack { reached, unreachable }).await;
                });
            }
            _ => req.reply.refuse("this node does not know that question").await,
        }
    }
}

/// Opens a TCP connection to each `/ip4|ip6/…/tcp/PORT` address of a claim
/// (at most [`dht::record::MAX_ADDRS`], a record's bound), concurrently,
/// whose IP is the one the request came `from`: a node can probe only its
/// own address with it, never make others knock on third parties' ports.
async fn dial_back(addrs: &[String], from: std::net::IpAddr) -> (Vec<String>, Vec<String>) {
    use dht::mesh::Protocol;
    let targets: Vec<(String, std::net::SocketAddr)> = addrs
        .iter()
        .take(dht::record::MAX_ADDRS)
        .filter_map(|a| {
            let m: dht::mesh::Multiaddr = a.parse().ok()?;
            let mut it = m.iter();
            let ip: std::net::IpAddr = match it.next()? {
                Protocol::Ip4(ip) => ip.into(),
                Protocol::Ip6(ip) => ip.into(),
                _ => return None,
            };
            if ip.to_canonical() != from.to_canonical() {
                return None;
            }
            match it.next()? {
                Protocol::Tcp(port) => Some((a.clone(), std::net::SocketAddr::new(ip, port))),
                _ => None,
            }
        })
        .collect();
    let tries = targets.into_iter().map(|(a, sa)| async move {
        let ok = matches!(tokio::time::timeout(DIAL_BACK_TIMEOUT, tokio::net::TcpStream::connect(sa)).await, Ok(Ok(_)));
        (a, ok)
    });
    let results = futures_util::future::join_all(tries).await;
    let (reached, unreachable): (Vec<_>, Vec<_>) = results.into_iter().partition(|(_, ok)| *ok);
    (reached.into_iter().map(|(a, _)| a).collect(), unreachable.into_iter().map(|(a, _)| a).collect())
}
