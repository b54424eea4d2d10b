//! The node's services: one module per domain, called by the edges in
//! [`crate::api`]. A service owns its domain's data through the typed
//! [`Store`](crate::store::Store) API, whose trees live in one file of
//! `store/` per domain; no service touches sled.
//!
//! - [`accounts`]: accounts, passwords, sessions, login throttles, invites.
//! - [`calls`]: the calls service: the switchboard, every device's
//!   outgoing channel, delivery to other nodes, call history and
//!   missed-call notices.
//!
//! A new domain gets a module here and its trees a file in `store/`:
//! contacts in `services/contacts.rs` over `store/contacts.rs`, and so
//! rooms (`rooms`), messages (`messages`) and files (`files`).

pub mod accounts;
pub mod calls;
