//! Node to node: the mesh's service layer on the wire.
//!
//! Every request one zone node makes of another travels in one
//! [`NodeRequest`]: a versioned envelope naming the [`Service`] it is for,
//! the zone the sending node speaks for (and the user of that zone it acts
//! for, if any), and the service's own typed body. The receiving node
//! answers each with one [`NodeReply`]: the service's typed answer, or a
//! typed [`Refusal`].
//!
//! A service is a type implementing [`Service`]: a wire name and its
//! request and reply types. The calls service ([`CallService`], whose
//! requests are [`NodeToNode`] messages) and the node service
//! ([`NodeService`]: liveness and clock) are the first two; presence,
//! rooms, messages, files, conferences and SIP add one each, with no new
//! path through the mesh.
//!
//! ```
//! use signalling::service::{CallService, NodeRequest, Service};
//! use signalling::{CallId, NodeToNode, ZoneName};
//! let msg = NodeToNode::Accepted { call: CallId("c1".into()) };
//! let req = NodeRequest::new::<CallService>(ZoneName::parse("sants").unwrap(), None, &msg).unwrap();
//! assert_eq!(req.service, CallService::NAME);
//! assert_eq!(req.decode::<CallService>().unwrap(), msg);
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::address::{Address, UserName, ZoneName};
use crate::msg::NodeToNode;

/// The envelope format this code speaks. A node refuses other versions
/// with [`Refusal::UnsupportedVersion`], naming its own.
pub const ENVELOPE_VERSION: u16 = 1;

/// Largest service body a node accepts unless the service says otherwise
/// ([`Service::MAX_BYTES`]), in bytes.
pub const DEFAULT_MAX_BODY: usize = 60 * 1024;

/// A node-to-node service: its name on the wire and its message types.
///
/// Implement it on a marker type; the mesh carries
/// [`Service::Request`]s to the service's handler on the receiving node
/// and brings back its [`Service::Reply`].
pub trait Service: Send + Sync + 'static {
    /// The service's tag on the wire (`"call"`, `"node"`, …): unique,
    /// lower case, stable across versions.
    const NAME: &'static str;
    /// Largest request body this service takes, in bytes.
    const MAX_BYTES: usize = DEFAULT_MAX_BODY;
    /// What a request carries.
    type Request: Serialize + DeserializeOwned + Send + 'static;
    /// What the receiving node answers (`()` when a delivery receipt is
    /// all there is to say).
    type Reply: Serialize + DeserializeOwned + Send + 'static;
}

/// One request between zone nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRequest {
    /// The envelope format ([`ENVELOPE_VERSION`]).
    pub v: u16,
    /// Which service the body is for ([`Service::NAME`]).
    pub service: String,
    /// The zone the sending node speaks for: the receiver checks that the
    /// sending peer holds this zone's claim before the service sees the
    /// request.
    pub zone: ZoneName,
    /// The user of `zone` the request acts for, if it acts for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserName>,
    /// The service's request, as JSON.
    pub body: Box<RawValue>,
}

/// The answer to one [`NodeRequest`]. Externally tagged
/// (`{"ok": {"body": …}}`, `{"refused": {"code": …, "reason": …}}`): the
/// body is read straight from the bytes, never buffered.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeReply {
    /// The service took the request; its answer.
    Ok {
        /// The service's [`Service::Reply`], as JSON.
        body: Box<RawValue>,
    },
    /// The request was refused.
    Refused {
        /// Why, as a stable code.
        code: Refusal,
        /// Why, for people.
        reason: String,
    },
}

/// Why a node refused a request. Stable strings on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Refusal {
    /// The envelope's version is not one this node speaks.
    UnsupportedVersion,
    /// This node runs no such service.
    UnknownService,
    /// The body is not a request of the service.
    BadRequest,
    /// The body is larger than the service takes.
    TooLarge,
    /// The sending peer sent more requests than its share.
    RateLimited,
    /// The sending peer does not hold the claim of the zone it speaks for.
    Unauthorised,
    /// The service's queue is full.
    Busy,
    /// The service itself refused (unknown call, not this node's user, …).
    Refused,
}

/// Why an envelope could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The envelope is for another service.
    #[error("envelope is for service {found:?}, not {wanted:?}")]
    WrongService {
        /// The service read for.
        wanted: &'static str,
        /// The service the envelope names.
        found: String,
    },
    /// The body did not encode or decode.
    #[error("body: {0}")]
    Body(#[from] serde_json::Error),
}

impl NodeRequest {
    /// An envelope of `S` carrying `body`, for a node that speaks for
    /// `zone` (acting for `user` of it, if any).
    pub fn new<S: Service>(zone: ZoneName, user: Option<UserName>, body: &S::Request) -> Result<Self, EnvelopeError> {
        Ok(Self { v: ENVELOPE_VERSION, service: S::NAME.into(), zone, user, body: to_raw(body)? })
    }

    /// The user the request acts for, as an address.
    pub fn acting_for(&self) -> Option<Address> {
        self.user.clone().map(|name| Address::new(name, self.zone.clone()))
    }

    /// The body, read as a request of `S`.
    pub fn decode<S: Service>(&self) -> Result<S::Request, EnvelopeError> {
        if self.service != S::NAME {
            return Err(EnvelopeError::WrongService { wanted: S::NAME, found: self.service.clone() });
        }
        Ok(serde_json::from_str(self.body.get())?)
    }
}

impl NodeReply {
    /// A successful answer of `S`.
    pub fn ok<S: Service>(reply: &S::Reply) -> Result<Self, EnvelopeError> {
        Ok(Self::Ok { body: to_raw(reply)? })
    }

    /// A refusal.
    pub fn refused(code: Refusal, reason: impl Into<String>) -> Self {
        Self::Refused { code, reason: reason.into() }
    }
}

fn to_raw<T: Serialize>(value: &T) -> Result<Box<RawValue>, serde_json::Error> {
    RawValue::from_string(serde_json::to_string(value)?)
}

/// The calls service: call signalling between the caller's home node and
/// the callee's ([`NodeToNode`]); the answer is a delivery receipt.
#[derive(Debug, Clone, Copy)]
pub struct CallService;

impl Service for CallService {
    const NAME: &'static str = "call";
    type Request = NodeToNode;
    type Reply = ();
}

/// The node service: questions about the node itself, for operators'
/// tools (`xarxa mesh ping`) rather than users.
#[derive(Debug, Clone, Copy)]
pub struct NodeService;

impl Service for NodeService {
    const NAME: &'static str = "node";
    const MAX_BYTES: usize = 1024;
    type Request = NodeQuery;
    type Reply = NodeAnswer;
}

/// A question of the [`NodeService`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeQuery {
    /// Are you there, and what is your clock?
    Ping,
    /// Can you reach me? The answering node opens a new TCP connection to
    /// each TCP address in the asking zone's claim (the signed addresses
    /// the mesh holds, never addresses the request names) at the IP the
    /// request came from: `xarxa doctor`.
    DialBack,
}

/// An answer of the [`NodeService`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeAnswer {
    /// The answer to [`NodeQuery::Ping`].
    Pong {
        /// The answering node's zone.
        zone: ZoneName,
        /// Its software version.
        version: String,
        /// Its wall clock when it answered (ms since the Unix epoch).
        wall_ms: u64,
    },
    /// The answer to [`NodeQuery::DialBack`].
    DialedBack {
        /// The claim's addresses a connection reached.
        reached: Vec<String>,
        /// Those it did not (refused or timed out).
        unreachable: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::CallId;

    #[test]
    fn envelopes_round_trip_and_name_their_service() {
        let zone = ZoneName::parse("gracia").unwrap_or_else(|e| panic!("{e}"));
        let user = UserName::parse("alice").ok();
        let msg = NodeToNode::Ringing { call: CallId("c9".into()) };
        let req = NodeRequest::new::<CallService>(zone.clone(), user, &msg).unwrap_or_else(|e| panic!("{e}"));
        let wire = serde_json::to_string(&req).unwrap_or_else(|e| panic!("{e}"));
        assert!(wire.contains(r#""service":"call""#) && wire.contains(r#""v":1"#), "{wire}");
        let back: NodeRequest = serde_json::from_str(&wire).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.decode::<CallService>().ok(), Some(msg));
        assert_eq!(back.acting_for().map(|a| a.to_string()).as_deref(), Some("alice@gracia"));
        assert!(matches!(back.decode::<NodeService>(), Err(EnvelopeError::WrongService { .. })));
    }

    #[test]
    fn replies_carry_a_typed_refusal() {
        let wire = serde_json::to_string(&NodeReply::refused(Refusal::Unauthorised, "no claim"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(wire, r#"{"refused":{"code":"unauthorised","reason":"no claim"}}"#);
        let ok = NodeReply::ok::<CallService>(&()).unwrap_or_else(|e| panic!("{e}"));
        let wire = serde_json::to_string(&ok).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(wire, r#"{"ok":{"body":null}}"#);
        let back: NodeReply = serde_json::from_slice(wire.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(back, NodeReply::Ok { body } if body.get() == "null"));
    }
}
