//! The node's services: one module per domain, called by the edges in
//! [`crate::api`]. A service owns its domain's data through the typed
//! [`Store`](crate::store::Store) API, whose trees live in one file of
//! `store/` per domain; no service touches sled.
//!
//! - [`accounts`]: accounts, passwords, sessions, login throttles, invites.
//! - [`calls`]: the calls service: the switchboard, every device's
//!   outgoing channel (which other services push events through),
//!   delivery to other nodes, call history and missed-call notices.
//! - [`contacts`]: asking, accepting, denying and removing contacts, on
//!   this zone and across zones.
//! - [`presence`]: how each user appears to their accepted contacts, here
//!   and on other zones.
//! - [`profiles`]: nickname, description and avatar, and the profiles of
//!   accepted contacts (cached by version when on another zone).
//!
//! A new domain gets a module here and its trees a file in `store/`, as
//! contacts have `services/contacts.rs` over `store/contacts.rs`: rooms
//! (`rooms`), messages (`messages`) and files (`files`) come next.

pub mod accounts;
pub mod calls;
pub mod contacts;
pub mod presence;
pub mod profiles;
