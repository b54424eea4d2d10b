//! The mesh's errors: why it could not start, and why a request could not
//! reach a user's home node.

use libp2p::core::Multiaddr;
use signalling::service::Refusal;
use signalling::EndReason;

/// Why the mesh could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The key could not become a libp2p identity.
    #[error("node key: {0}")]
    Key(String),
    /// A transport could not be set up.
    #[error("transport: {0}")]
    Transport(String),
    /// A setting is out of range.
    #[error("mesh.{field}: {why}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A listen address was refused.
    #[error("listen on {addr}: {why}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        why: String,
    },
    /// A service of that name is already served on this mesh.
    #[error("service {0:?} is already served")]
    ServiceTaken(&'static str),
}

/// Why a request could not be delivered to a user's home node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// No node holds the zone.
    #[error("unknown zone")]
    UnknownZone,
    /// The zone's node publishes no such user.
    #[error("unknown user")]
    UnknownUser,
    /// Nothing was found, but the lookup ended before the nodes closest
    /// to the key had answered (see [`crate::LookupStats::incomplete`]):
    /// the mesh is slow or partly unreachable; the user or zone may well
    /// exist.
    #[error("lookup incomplete: the closest nodes did not answer")]
    Incomplete,
    /// The node could not be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The node refused the request.
    #[error("refused ({code:?}): {reason}")]
    Refused {
        /// Why, as the receiving node's stable code.
        code: Refusal,
        /// Why, for people.
        reason: String,
    },
    /// The node answered with something that is not the service's reply.
    #[error("bad reply: {0}")]
    BadReply(String),
    /// The request could not be encoded.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The mesh is shutting down.
    #[error("mesh stopped")]
    Stopped,
}

impl RouteError {
    /// What the caller is told.
    pub fn end_reason(&self) -> EndReason {
        match self {
            Self::UnknownZone => EndReason::UnknownZone,
            Self::UnknownUser => EndReason::UnknownUser,
            _ => EndReason::UnreachableZone,
        }
    }
}
