//! Media servers: the parts of the node that carry audio and video rather
//! than signalling.
//!
//! - [`turn`]: the STUN/TURN server, so browsers in the zone can always
//!   reach each other (directly, through a STUN-discovered address, or
//!   relayed by the node).
//!
//! The SFU (the selective forwarding unit for group calls) will go here,
//! as `media/sfu/`.

pub mod turn;
