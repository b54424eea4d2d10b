//! [`AppState`]: what every edge is given (the configuration, the
//! services, the database, the mesh and TURN handles, connection slots).
//! [`crate::server`] builds it; the handlers in [`crate::api`] import it
//! from here.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::media::turn::Turn;
use crate::metrics::Metrics;
use crate::services::accounts::Accounts;
use crate::services::calls::Calls;
use crate::services::contacts::Contacts;
use crate::services::presence::PresenceHub;
use crate::services::profiles::Profiles;
use crate::store::Store;

/// Shared state of the running node, given to every handler.
pub struct AppState {
    /// The validated configuration.
    pub config: Config,
    /// Accounts and sessions.
    pub accounts: Accounts,
    /// The database.
    pub store: Store,
    /// The calls service.
    pub calls: Calls,
    /// The contacts service.
    pub contacts: Contacts,
    /// The presence service.
    pub presence: PresenceHub,
    /// The profiles service.
    pub profiles: Profiles,
    /// The mesh, unless disabled.
    pub mesh: Option<dht::Mesh>,
    /// WebSocket slots (`limits.max_connections`).
    pub connections: Arc<Semaphore>,
    /// The STUN/TURN server, unless disabled.
    pub turn: Option<Turn>,
    /// Numbers sockets.
    pub next_conn: AtomicU64,
    /// Figures counted as they happen, for `/metrics`.
    pub metrics: Metrics,
}
