//! The Xarxa zone node as a library; `main.rs` is a thin CLI over it.
//!
//! # Layout
//!
//! - [`api`]: the node's edges, thin: the HTTPS API ([`api::http`]), the
//!   signalling WebSocket ([`api::ws`]), the web client ([`api::web`]), the
//!   admin socket ([`api::admin`]) and inbound signalling from other nodes
//!   ([`api::federation`]). They parse, check and hand work to a service.
//! - [`services`]: one module per domain ([`services::accounts`],
//!   [`services::calls`]); a new service goes here.
//! - [`store`]: the embedded database, one file per domain's trees; the only
//!   module that touches sled.
//! - [`media`]: media servers ([`media::turn`]; the SFU will go here).
//! - [`state`]: [`state::AppState`], what every edge is given: the
//!   configuration, the services, the database.
//! - [`server`]: [`server::Server`] builds the state and serves the edges.
//! - [`config`] (the one `Config`), [`identity`] (the node key), [`tls`]
//!   (the certificate), [`pii`] (personal data redacted in logs),
//!   [`handover`] (zone key rotation), [`metrics`] (`/metrics`), [`setup`]
//!   and [`doctor`] (the commands of those names).
//!
//! ```no_run
//! # async fn f() -> Result<(), xarxa_node::server::ServerError> {
//! let config = xarxa_node::config::Config::default();
//! let server = xarxa_node::server::Server::bind(config).await?;
//! println!("listening on {}", server.local_addr());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod api;
pub mod config;
pub mod doctor;
pub mod handover;
pub mod identity;
pub mod media;
pub mod metrics;
pub mod pii;
pub mod server;
pub mod services;
pub mod setup;
pub mod state;
pub mod store;
pub mod tls;
