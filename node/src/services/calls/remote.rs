//! Calls that cross nodes: one delivery task per call carries the
//! switchboard's messages for the other node, in order, over the mesh.

use dht::mesh::PeerId;
use dht::Mesh;
use signalling::service::CallService;
use signalling::{Address, CallId, NodeToNode, UserName};
use tokio::sync::mpsc;
use tracing::warn;

use super::Command;

/// A call that crosses nodes: the other node (once known) and the queue
/// of messages for it (once the first is sent).
pub(super) struct RemoteLeg {
    /// The other node.
    pub(super) peer: Option<PeerId>,
    /// The call's party on this node, whom its requests act for.
    pub(super) local: Option<UserName>,
    /// Messages for it, read by the call's [`deliver`] task.
    pub(super) queue: Option<mpsc::Sender<NodeToNode>>,
}

/// Who a call's delivery task speaks to and for.
pub(super) struct Ends {
    /// The other node, once known.
    pub(super) peer: Option<PeerId>,
    /// The party on this node: every request acts for them.
    pub(super) local: Option<UserName>,
    /// The party on the other node (resolved to find it).
    pub(super) remote: Address,
}

/// Messages queued for one remote call before it counts as stuck.
pub(super) const REMOTE_QUEUE: usize = 64;

/// Delivers one remote call's messages in order: the first (an invite, on
/// the caller's node) after resolving the callee's home node, the rest to
/// the node that took it. The calls service learns the node before the
/// invite leaves, so the node's answers are recognised. A failure ends the
/// call.
pub(super) async fn deliver(
    mesh: Mesh,
    mut ends: Ends,
    call: CallId,
    mut rx: mpsc::Receiver<NodeToNode>,
    calls: mpsc::Sender<Command>,
) {
    while let Some(msg) = rx.recv().await {
        let local = ends.local.as_ref();
        let sent = match ends.peer {
            Some(p) => mesh.send_to::<CallService>(p, local, &msg).await,
            None => first_delivery(&mesh, &ends.remote, local, &call, &calls, &msg).await.map(|p| ends.peer = Some(p)),
        };
        if let Err(e) = sent {
            warn!(call = %call.0, error = %e, "delivery to another zone failed");
            let _ = calls.send(Command::RouteFailed { call, reason: e.end_reason() }).await;
            return;
        }
    }
}

/// Resolves `user`'s home node, tells the calls service, delivers `msg`
/// acting for `local`; on an unreachable node, looks again once (the node
/// may have moved). Unlike [`Mesh::send`], the calls service hears of the
/// node before the invite leaves, so that node's answers are recognised.
async fn first_delivery(
    mesh: &Mesh,
    user: &Address,
    local: Option<&UserName>,
    call: &CallId,
    calls: &mpsc::Sender<Command>,
    msg: &NodeToNode,
) -> Result<PeerId, dht::RouteError> {
    let mut tries = 0;
    loop {
        let (peer, addrs) = mesh.resolve(user).await?;
        let _ = calls.send(Command::PeerResolved { call: call.clone(), peer }).await;
        match mesh.request::<CallService>(peer, addrs, local, msg).await {
            Ok(()) => return Ok(peer),
            Err(dht::RouteError::Unreachable(_)) if tries == 0 => {
                tries += 1;
                mesh.forget(user);
            }
            Err(e) => return Err(e),
        }
    }
}
