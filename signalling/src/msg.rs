//! Wire messages between a device (browser, phone gateway) and its home node.
//!
//! JSON text frames, one message per frame, tagged by `"type"` in snake
//! case. Every request a device sends carries an `id` (a `u64` the device
//! picks); the node answers each request with exactly one reply echoing that
//! id: a typed success (`ok`, `welcome`, `call_placed`, `pong`) or an
//! `error` with a typed [`ErrorCode`]. Everything else the node sends is an
//! event and has no `id`.

use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::contacts::{Contact, Presence};

/// Protocol version spoken by this crate. A `hello` with another version is
/// refused with [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u32 = 1;

/// A request id, chosen by the device, echoed by the node in its reply.
pub type RequestId = u64;

/// A call's id: opaque, chosen by the caller's node (32 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallId(pub String);

/// A connected device's id, chosen by the node at `hello`; a device that
/// reconnects within the grace period presents it to resume.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceId(pub String);

/// Which media a call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    /// Audio is on.
    pub audio: bool,
    /// Video is on.
    pub video: bool,
}

/// What the two devices in a call exchange through the node; relayed
/// verbatim to the other device of the call and to nobody else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Signal {
    /// An SDP offer (first, or renegotiation).
    Offer {
        /// The session description.
        sdp: String,
    },
    /// An SDP answer.
    Answer {
        /// The session description.
        sdp: String,
    },
    /// A trickled ICE candidate (`candidate` empty: end of candidates).
    Ice {
        /// The `candidate:` line.
        candidate: String,
        /// The media stream identification tag.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_mid: Option<String>,
        /// The m-line index.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sdp_m_line_index: Option<u16>,
    },
    /// A line of in-call text chat (for clients without a data channel).
    Chat {
        /// The text.
        text: String,
    },
    /// The sender turned its microphone or camera on or off.
    Media {
        /// What the sender now sends.
        media: Media,
    },
}

/// Device to node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientToNode {
    /// The first frame on a socket: authenticate with a session token.
    Hello {
        /// Request id.
        id: RequestId,
        /// Must equal [`PROTOCOL_VERSION`].
        version: u32,
        /// The session token from `POST /api/v1/login`.
        token: String,
        /// The device id of an earlier socket, to resume it (and its call)
        /// within the grace period.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<DeviceId>,
    },
    /// Call a user.
    Call {
        /// Request id.
        id: RequestId,
        /// `name@zone`, or a bare `name` on this zone.
        to: String,
        /// Media the caller offers.
        media: Media,
    },
    /// Accept a ringing call on this device.
    Accept {
        /// Request id.
        id: RequestId,
        /// The ringing call.
        call: CallId,
    },
    /// Decline a ringing call on this device.
    Reject {
        /// Request id.
        id: RequestId,
        /// The ringing call.
        call: CallId,
    },
    /// End a call: cancels it while it rings (caller), declines it (a
    /// ringing callee device), or hangs up once connected.
    Hangup {
        /// Request id.
        id: RequestId,
        /// The call.
        call: CallId,
    },
    /// Relay a [`Signal`] to the other device of a connected call.
    Signal {
        /// Request id.
        id: RequestId,
        /// The connected call.
        call: CallId,
        /// What to relay.
        signal: Signal,
    },
    /// Mark a missed-call notice as read.
    MarkRead {
        /// Request id.
        id: RequestId,
        /// The notice id.
        notice: u64,
    },
    /// Keep-alive; answered by `pong`.
    Ping {
        /// Request id.
        id: RequestId,
    },
    /// Whether the person at this device is idle (no input for a while):
    /// a user whose every device is idle shows as away.
    Idle {
        /// Request id.
        id: RequestId,
        /// Idle now.
        idle: bool,
    },
}

/// Node to device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeToClient {
    /// Reply to `hello`: the socket is authenticated.
    Welcome {
        /// The `hello`'s id.
        id: RequestId,
        /// This device's id (present it as `resume` after a reconnect).
        device: DeviceId,
        /// Who is logged in.
        user: Address,
        /// `true` when an earlier device (and its call) was resumed.
        resumed: bool,
    },
    /// Generic success reply.
    Ok {
        /// The request's id.
        id: RequestId,
    },
    /// Reply to `call`: the call exists; its outcome follows as events
    /// (`ringing`, then `accepted` or `ended`).
    CallPlaced {
        /// The request's id.
        id: RequestId,
        /// The new call's id.
        call: CallId,
    },
    /// Reply to `ping`.
    Pong {
        /// The request's id.
        id: RequestId,
    },
    /// A request failed, or a frame could not be understood (then `id` is
    /// whatever could be read from it, if anything).
    Error {
        /// The failed request's id, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// What went wrong.
        code: ErrorCode,
        /// A human-readable explanation.
        message: String,
    },
    /// Event to every device of the callee: a call is ringing.
    Incoming {
        /// The call.
        call: CallId,
        /// The caller.
        from: Address,
        /// Media the caller offers.
        media: Media,
    },
    /// Event to the caller: at least one device of the callee rings.
    Ringing {
        /// The call.
        call: CallId,
    },
    /// Event to the caller: the callee accepted; now send the SDP offer.
    Accepted {
        /// The call.
        call: CallId,
    },
    /// Event: the call ended (or, for a callee device, stopped ringing).
    Ended {
        /// The call.
        call: CallId,
        /// Why.
        reason: EndReason,
    },
    /// Event: a [`Signal`] from the other device of the call.
    Signal {
        /// The call.
        call: CallId,
        /// What the peer sent.
        signal: Signal,
    },
    /// Event: a missed-call notice (pushed at once, or after `welcome`).
    MissedCall {
        /// The notice.
        notice: Notice,
    },
    /// Event to every device: the node is shutting down. Calls still
    /// running end within `within_ms`, then the socket closes (1001); no
    /// new call can be placed meanwhile. Reconnect later.
    GoingAway {
        /// The longest the node waits for running calls, in ms.
        within_ms: u64,
    },
    /// Event: a contact was asked for, accepted or changed (by this user
    /// on another device, or by the other user).
    Contact {
        /// The contact as it now stands.
        contact: Contact,
    },
    /// Event: a contact is gone (removed, withdrawn or denied, by either
    /// side). No presence of it follows.
    ContactRemoved {
        /// The other user.
        address: Address,
    },
    /// Event: an accepted contact's presence changed.
    Presence {
        /// The contact.
        address: Address,
        /// Their presence now.
        presence: Presence,
    },
}

/// Node to node: call signalling carried over the mesh between the
/// caller's home node and the callee's home node. Each message is one
/// request of the mesh's request-response protocol; its response is a
/// delivery receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeToNode {
    /// Caller's node → callee's node: ring this user.
    Invite {
        /// The call (chosen by the caller's node).
        call: CallId,
        /// The caller.
        from: Address,
        /// The callee (a user of the receiving node).
        to: Address,
        /// Media offered.
        media: Media,
    },
    /// Callee's node → caller's node: at least one device rings.
    Ringing {
        /// The call.
        call: CallId,
    },
    /// Callee's node → caller's node: a device accepted.
    Accepted {
        /// The call.
        call: CallId,
    },
    /// Either way: the call ended, with the reason the receiving side's
    /// party should be told.
    Ended {
        /// The call.
        call: CallId,
        /// Why.
        reason: EndReason,
    },
    /// Either way: a signal for the other device of the connected call.
    Signal {
        /// The call.
        call: CallId,
        /// What to relay.
        signal: Signal,
    },
}

impl NodeToNode {
    /// The call this message is about.
    pub fn call(&self) -> &CallId {
        match self {
            Self::Invite { call, .. }
            | Self::Ringing { call }
            | Self::Accepted { call }
            | Self::Ended { call, .. }
            | Self::Signal { call, .. } => call,
        }
    }
}

/// Why a call ended, as each side is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EndReason {
    /// Another device of the callee accepted (sent to the other callee devices).
    AnsweredElsewhere,
    /// Every callee device declined.
    Declined,
    /// Nobody answered within the ring timeout.
    NoAnswer,
    /// The caller gave up before anyone answered.
    Cancelled,
    /// The callee is already in a call.
    Busy,
    /// The callee has no device online.
    Offline,
    /// No such user on that zone.
    UnknownUser,
    /// No node holds that zone name.
    UnknownZone,
    /// The zone exists but its node could not be reached.
    UnreachableZone,
    /// The other side hung up.
    HungUp,
    /// The other side's device disappeared and did not come back in time.
    ConnectionLost,
}

/// Typed error codes. Stable strings on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not valid JSON.
    BadJson,
    /// The frame is JSON but its `type` is not a message this node knows.
    UnknownType,
    /// The frame has a known `type` but wrong or missing fields.
    BadMessage,
    /// The frame is larger than the node's frame limit.
    FrameTooLarge,
    /// An SDP is larger than the node's SDP limit.
    SdpTooLarge,
    /// A chat line or other text is larger than its limit.
    TextTooLarge,
    /// A binary frame was sent; the protocol is JSON text.
    BinaryNotSupported,
    /// A request came before a successful `hello`.
    NotAuthenticated,
    /// A second `hello` on an authenticated socket.
    AlreadyAuthenticated,
    /// The token is unknown, revoked, expired or malformed.
    InvalidToken,
    /// The `hello` names a protocol version this node does not speak.
    UnsupportedVersion,
    /// The device to resume is unknown, not yours, or gone.
    ResumeFailed,
    /// The address is not `name@zone`.
    InvalidAddress,
    /// The device is not a party of that call (or the call does not exist).
    NotInCall,
    /// The call is not connected yet (signals flow only after `accepted`).
    CallNotConnected,
    /// This device is already in a call.
    AlreadyInCall,
    /// The call was already answered (by another device).
    AlreadyAnswered,
    /// A user cannot call themself.
    CannotCallSelf,
    /// Too many requests; slow down.
    RateLimited,
    /// The user has too many devices connected.
    TooManyDevices,
    /// No such notice.
    NotFound,
    /// Something failed inside the node; the request may be retried.
    Internal,
    /// The node is shutting down: no new calls or connections.
    ShuttingDown,
}

/// A missed-call notice, kept on the callee's home node until read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// Notice id (unique per node).
    pub id: u64,
    /// The call that was missed.
    pub call: CallId,
    /// Who called.
    pub from: Address,
    /// When the call was placed, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Why it was missed: `no_answer`, `cancelled`, `busy` or `offline`.
    pub reason: EndReason,
    /// Whether the user has marked it read.
    pub read: bool,
}

/// Direction and result of a call, as it appears in a user's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    /// The user called.
    Sent,
    /// The user was called and answered, or declined.
    Received,
    /// The user was called and did not answer (offline, busy, no answer,
    /// cancelled by the caller).
    Missed,
}

/// One entry of a user's call history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Entry id (unique per node, increasing with time).
    pub id: u64,
    /// The call.
    pub call: CallId,
    /// Sent, received or missed.
    pub kind: HistoryKind,
    /// The other party.
    pub peer: Address,
    /// Media offered.
    pub media: Media,
    /// When the call was placed, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
    /// Talk time (zero when never connected), in milliseconds.
    pub duration_ms: u64,
    /// How the call ended.
    pub outcome: Outcome,
}

/// How a call ended, seen from history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Connected, then hung up by the caller.
    HungUpByCaller,
    /// Connected, then hung up by the callee.
    HungUpByCallee,
    /// Connected, then one side's device was lost.
    ConnectionLost,
    /// Declined by the callee.
    Declined,
    /// Not answered in time.
    NoAnswer,
    /// Cancelled by the caller while ringing.
    Cancelled,
    /// The callee was in another call.
    Busy,
    /// The callee had no device online.
    Offline,
    /// No such user.
    UnknownUser,
    /// No such zone.
    UnknownZone,
    /// The callee's zone could not be reached.
    UnreachableZone,
}

/// Why a frame could not be turned into a [`ClientToNode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ParseError {
    /// The request id, if one could be read from the frame.
    pub id: Option<RequestId>,
    /// The typed cause.
    pub code: ErrorCode,
    /// Details for a person.
    pub message: String,
}

const CLIENT_TYPES: &[&str] = &["hello", "call", "accept", "reject", "hangup", "signal", "mark_read", "ping", "idle"];

impl ClientToNode {
    /// Parses one text frame. Distinguishes malformed JSON, an unknown
    /// `type` and a known type with bad fields, and recovers the request id
    /// where it can so the error can echo it.
    pub fn parse(frame: &str) -> Result<Self, ParseError> {
        let value: serde_json::Value = serde_json::from_str(frame).map_err(|e| ParseError {
            id: None,
            code: ErrorCode::BadJson,
            message: format!("not JSON: {e}"),
        })?;
        let id = value.get("id").and_then(serde_json::Value::as_u64);
        let ty = value.get("type").and_then(serde_json::Value::as_str);
        match ty {
            Some(t) if CLIENT_TYPES.contains(&t) => {}
            Some(t) => {
                let shown: String = t.chars().take(40).collect();
                return Err(ParseError {
                    id,
                    code: ErrorCode::UnknownType,
                    message: format!("unknown message type {shown:?}"),
                });
            }
            None => return Err(ParseError { id, code: ErrorCode::UnknownType, message: "missing \"type\"".into() }),
        }
        serde_json::from_value(value).map_err(|e| ParseError {
            id,
            code: ErrorCode::BadMessage,
            message: e.to_string(),
        })
    }

    /// The request id every client message carries.
    pub fn id(&self) -> RequestId {
        match self {
            Self::Hello { id, .. }
            | Self::Call { id, .. }
            | Self::Accept { id, .. }
            | Self::Reject { id, .. }
            | Self::Hangup { id, .. }
            | Self::Signal { id, .. }
            | Self::MarkRead { id, .. }
            | Self::Idle { id, .. }
            | Self::Ping { id } => *id,
        }
    }

    /// Serialises to one JSON text frame.
    pub fn to_json(&self) -> String {
        // Serialising these plain enums cannot fail: no maps with non-string keys.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl NodeToClient {
    /// Serialises to one JSON text frame.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses one text frame sent by a node.
    pub fn parse(frame: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(frame)
    }

    /// An error reply.
    pub fn error(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error { id, code, message: message.into() }
    }
}

impl Signal {
    /// Size in bytes of the largest free-text field (SDP, candidate, chat).
    pub fn payload_len(&self) -> usize {
        match self {
            Self::Offer { sdp } | Self::Answer { sdp } => sdp.len(),
            Self::Ice { candidate, sdp_mid, .. } => candidate.len().max(sdp_mid.as_ref().map_or(0, String::len)),
            Self::Chat { text } => text.len(),
            Self::Media { .. } => 0,
        }
    }

    /// Whether this signal carries a session description.
    pub fn is_sdp(&self) -> bool {
        matches!(self, Self::Offer { .. } | Self::Answer { .. })
    }
}

impl EndReason {
    /// Whether a call that ended so leaves the callee a missed-call notice.
    pub fn is_missed(self) -> bool {
        matches!(self, Self::NoAnswer | Self::Cancelled | Self::Busy | Self::Offline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_distinguishes_errors() {
        assert_eq!(ClientToNode::parse("{").map_err(|e| e.code), Err(ErrorCode::BadJson));
        let e = ClientToNode::parse(r#"{"type":"fly","id":7}"#).expect_err("unknown");
        assert_eq!((e.code, e.id), (ErrorCode::UnknownType, Some(7)));
        let e = ClientToNode::parse(r#"{"type":"call","id":8}"#).expect_err("missing fields");
        assert_eq!((e.code, e.id), (ErrorCode::BadMessage, Some(8)));
        let m = ClientToNode::parse(r#"{"type":"ping","id":9}"#).expect("ping");
        assert_eq!(m, ClientToNode::Ping { id: 9 });
    }

    #[test]
    fn wire_shape_is_stable() {
        let m = ClientToNode::Signal {
            id: 3,
            call: CallId("c1".into()),
            signal: Signal::Ice {
                candidate: "candidate:1".into(),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
            },
        };
        assert_eq!(
            m.to_json(),
            r#"{"type":"signal","id":3,"call":"c1","signal":{"kind":"ice","candidate":"candidate:1","sdp_mid":"0","sdp_m_line_index":0}}"#
        );
        let e = NodeToClient::Ended { call: CallId("c1".into()), reason: EndReason::AnsweredElsewhere };
        assert_eq!(e.to_json(), r#"{"type":"ended","call":"c1","reason":"answered_elsewhere"}"#);
    }

    fn arb_signal() -> impl Strategy<Value = Signal> {
        prop_oneof![
            ".{0,40}".prop_map(|sdp| Signal::Offer { sdp }),
            ".{0,40}".prop_map(|sdp| Signal::Answer { sdp }),
            (".{0,40}", proptest::option::of("[0-9]{1,2}"), proptest::option::of(0u16..8)).prop_map(
                |(candidate, sdp_mid, sdp_m_line_index)| Signal::Ice { candidate, sdp_mid, sdp_m_line_index }
            ),
            ".{0,40}".prop_map(|text| Signal::Chat { text }),
            (any::<bool>(), any::<bool>()).prop_map(|(audio, video)| Signal::Media { media: Media { audio, video } }),
        ]
    }

    proptest! {
        #[test]
        fn client_messages_round_trip(id in any::<u64>(), call in "[0-9a-f]{1,32}", signal in arb_signal(), to in ".{0,30}") {
            let call = CallId(call);
            for m in [
                ClientToNode::Call { id, to: to.clone(), media: Media { audio: true, video: false } },
                ClientToNode::Accept { id, call: call.clone() },
                ClientToNode::Signal { id, call: call.clone(), signal: signal.clone() },
                ClientToNode::Hello { id, version: 1, token: to.clone(), resume: Some(DeviceId(to.clone())) },
            ] {
                prop_assert_eq!(ClientToNode::parse(&m.to_json()).expect("round trip"), m);
            }
        }

        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = ClientToNode::parse(&s);
        }
    }
}
