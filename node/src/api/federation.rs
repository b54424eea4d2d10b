//! Calls from other zones: checks every signalling message another node
//! sends before it reaches the calls service.
//!
//! An invite must come from the node that holds the caller's zone (checked
//! against the zone's claim in the mesh) and name a user of this zone.
//! Every later message of a call must come from the node the call was set
//! up with (checked by the calls service).

use std::sync::Arc;

use dht::{Inbound, Receipt};
use signalling::{EndReason, NodeToNode};
use tokio::sync::mpsc;
use tracing::warn;

use crate::pii::Pii;
use crate::services::calls::Command;
use crate::state::AppState;

/// Reads inbound signalling from the mesh until it stops.
pub async fn serve_inbound(state: Arc<AppState>, mut inbound: mpsc::Receiver<Inbound>) {
    while let Some(Inbound { peer, msg, reply }) = inbound.recv().await {
        match msg {
            NodeToNode::Invite { call, from, to, media } => {
                let state = state.clone();
                // The zone check may need a lookup: do not hold up other calls.
                tokio::spawn(async move {
                    let zone = state.accounts.zone();
                    if &to.zone != zone {
                        return reply.send(Receipt::Refused { reason: "not this node's zone".into() }).await;
                    }
                    let Some(mesh) = &state.mesh else { return };
                    if !mesh.holds_zone(peer, &from.zone).await {
                        warn!(%peer, from = %Pii(&from), "invite from a node that does not hold the caller's zone");
                        return reply
                            .send(Receipt::Refused { reason: "sender does not hold the caller's zone".into() })
                            .await;
                    }
                    let refused = match state.store.user_exists(to.name.as_str()) {
                        Ok(true) => None,
                        Ok(false) => Some(EndReason::UnknownUser),
                        Err(e) => {
                            warn!(error = %e, "user lookup failed");
                            return reply.send(Receipt::Refused { reason: "store error".into() }).await;
                        }
                    };
                    state.calls.send(Command::Invited { peer, call, from, to, media, refused, reply }).await;
                });
            }
            msg => state.calls.send(Command::FromNode { peer, msg, reply }).await,
        }
    }
}
