//! The Xarxa zone node as a library; `main.rs` is a thin CLI over it.
//!
//! A node serves HTTPS and the signalling WebSocket ([`http`], [`ws`]) over
//! services ([`accounts`], [`calls`]) that own their data in the embedded
//! database ([`store`]). [`server::Server`] wires them together:
//!
//! ```no_run
//! # async fn f() -> Result<(), xarxa_node::server::ServerError> {
//! let config = xarxa_node::config::Config::default();
//! let server = xarxa_node::server::Server::bind(config).await?;
//! println!("listening on {}", server.local_addr());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod accounts;
pub mod admin;
pub mod calls;
pub mod config;
pub mod federation;
pub mod http;
pub mod identity;
pub mod pii;
pub mod server;
pub mod store;
pub mod tls;
pub mod turn;
pub mod web;
pub mod ws;
