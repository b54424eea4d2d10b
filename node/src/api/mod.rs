//! The node's edges: every way in from outside. Each module turns what
//! arrives (HTTP requests, WebSocket frames, admin request lines, mesh
//! messages) into typed requests, rejects the rest with typed errors, and
//! hands the work to a service in [`crate::services`]. Edges own no data.
//!
//! - [`http`]: the HTTPS API: every route ([`http::router`]) and the typed
//!   API errors.
//! - [`contacts`]: the contacts and presence routes of the HTTPS API;
//!   [`profiles`]: the profile and avatar routes.
//! - [`ws`]: the signalling WebSocket, one per device.
//! - [`web`]: the embedded web client.
//! - [`metrics`]: `/metrics` for Prometheus.
//! - [`admin`]: the admin Unix socket (`xarxa user …`, `xarxa status`), and
//!   the same operations run by the CLI on the database when no node runs.
//! - [`federation`]: the edge toward other nodes: checks inbound mesh
//!   requests and hands each to its service.
//!
//! A new route is a handler (documented as ``# `GET /path` ``) that calls
//! one service: in [`http`], or, for a domain of its own, in a module like
//! [`contacts`] whose `routes()` the router merges. A new way in (another
//! socket or protocol) is a new module here.

pub mod admin;
pub mod contacts;
pub mod federation;
pub mod http;
pub mod metrics;
pub mod profiles;
pub mod web;
pub mod ws;
