//! Xarxa signalling: the messages devices and nodes exchange, and the call
//! state machine, with no I/O.
//!
//! - [`address`]: `name@zone` addresses.
//! - [`msg`]: the JSON wire messages between a device and its home node
//!   ([`ClientToNode`], [`NodeToClient`]), history entries and notices.
//! - [`switchboard`]: [`Switchboard`], the sans-IO call state machine of one
//!   node: devices online, calls ringing and connected, timers.
//! - [`contacts`]: contacts and presence, as devices see them and as
//!   nodes carry them ([`contacts::ContactService`],
//!   [`contacts::PresenceService`]).
//! - [`profiles`]: profiles (nickname, description, avatar) and the
//!   [`profiles::ProfileService`] that fetches one from another zone.
//! - [`service`]: node to node: the versioned envelope every request
//!   between zone nodes travels in, the [`service::Service`] trait a
//!   feature's node-to-node messages implement, and the first services
//!   (calls, node).
//!
//! # The model
//!
//! The switchboard owns no socket, clock or task. The driver (the node's
//! event loop, the browser, the simulator) turns the world into [`Input`]s
//! stamped with the current [`Time`], and turns the [`Output`]s back into
//! the world: frames to devices, history rows, notices.
//!
//! # The drain rule
//!
//! After every [`Switchboard::handle_input`] or
//! [`Switchboard::handle_timeout`], call [`Switchboard::poll_output`] until
//! it returns `None`, acting on each output in order; then ask
//! [`Switchboard::poll_timeout`] when to wake up next. Outputs are produced
//! only by those two calls, so a drained switchboard stays quiet until the
//! next input or deadline.
//!
//! # The canonical run loop
//!
//! ```
//! use signalling::{Config, Input, Output, Switchboard, Time};
//! # let inputs: Vec<(Time, Input)> = Vec::new();
//! let mut sb = Switchboard::new(Config::default());
//! for (now, input) in inputs {
//!     // A real driver waits for the next input or for `sb.poll_timeout()`,
//!     // whichever comes first, and calls `handle_timeout` on the latter.
//!     if sb.poll_timeout().is_some_and(|t| t <= now) {
//!         sb.handle_timeout(now);
//!     }
//!     sb.handle_input(now, input);
//!     while let Some(out) = sb.poll_output() {
//!         match out {
//!             Output::Send { to, msg } => { /* write msg.to_json() to device `to` */ }
//!             Output::ToNode { peer, msg } => { /* deliver to peer's home node over the mesh */ }
//!             Output::CallFinished(record) => { /* history, missed-call notice */ }
//!             Output::DeviceRemoved { device } => { /* drop its buffers */ }
//!             _ => {}
//!         }
//!     }
//! }
//! ```

pub mod address;
pub mod contacts;
pub mod msg;
pub mod profiles;
pub mod service;
pub mod switchboard;

pub use address::{Address, AddressError, UserName, ZoneName};
pub use msg::{
    CallId, ClientToNode, DeviceId, EndReason, ErrorCode, HistoryEntry, HistoryKind, Media, NodeToClient, NodeToNode,
    Notice, Outcome, ParseError, RequestId, Signal, PROTOCOL_VERSION,
};
pub use switchboard::{CallRecord, Config, Input, Output, Route, Side, Stats, Switchboard, Time};
