//! The zone node as a whole: [`Server::bind`] prepares everything (data
//! directory, key, certificate, database, services, sockets), then
//! [`Server::run`] serves until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::config::{Config, ConfigError};
use crate::identity::{self, IdentityError};
use crate::services::accounts::{AccountError, Accounts};
use crate::services::calls::Calls;
use crate::state::AppState;
use crate::store::{Store, StoreError};
use crate::tls::{self, TlsError};

/// Why the node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node key.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The certificate.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The accounts service.
    #[error(transparent)]
    Accounts(#[from] AccountError),
    /// The mesh.
    #[error(transparent)]
    Mesh(#[from] dht::MeshError),
    /// The STUN/TURN server.
    #[error(transparent)]
    Turn(#[from] crate::media::turn::TurnError),
    /// A zone hand-over in the data directory.
    #[error(transparent)]
    Handover(#[from] crate::handover::HandoverError),
    /// A socket or file.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// What `node.json` in the data directory says about a running node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    /// The node's process id.
    pub pid: u32,
    /// The HTTPS address it listens on.
    pub https: SocketAddr,
    /// Its zone.
    pub zone: String,
    /// Its version.
    pub version: String,
    /// Its mesh peer id, if the mesh is on.
    pub peer_id: Option<String>,
    /// Mesh addresses others can bootstrap from (with `/p2p/<peer id>`).
    pub mesh: Vec<String>,
    /// The STUN/TURN UDP address, if TURN is on.
    #[serde(default)]
    pub turn: Option<SocketAddr>,
}

/// A node ready to serve.
pub struct Server {
    state: Arc<AppState>,
    listener: std::net::TcpListener,
    admin: tokio::net::UnixListener,
    tls: Arc<rustls::ServerConfig>,
    addr: SocketAddr,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

impl Server {
    /// Prepares the node: creates the data directory, loads or makes the
    /// key and certificate, opens the database, starts the services and
    /// binds the HTTPS and admin sockets.
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        config.validate()?;
        let data = config.data_dir.clone();
        std::fs::create_dir_all(&data).map_err(io(format!("creating {}", data.display())))?;
        let key = identity::load_or_create(&data)?;
        let node_id = hex::encode(key.verifying_key().as_bytes());
        let configured = config.tls.cert.as_deref().zip(config.tls.key.as_deref());
        let (cert, cert_key) = tls::ensure_cert(&data, configured, &config.zone)?;
        let tls = tls::server_config(&cert, &cert_key)?;
        let (store, migrated) = Store::open_migrating(&data.join("db"))?;
        if let Some(m) = migrated {
            tracing::warn!(from = m.from, to = m.to, backup = %m.backup.display(), "database migrated; a backup of the old one is beside it");
        }
        let purged = store.purge_expired_sessions(crate::services::accounts::now_ms())?;
        let accounts = Accounts::new(store.clone(), &config)?;
        let mesh = if config.mesh.enabled {
            let zone = config.zone_name()?;
            let mut mesh_config = config.mesh.clone();
            mesh_config.handover = crate::handover::at_start(&data, &zone, &node_id)?;
            if let Some(h) = &mesh_config.handover {
                tracing::info!(zone = %zone, from = %h.handover.from, "claiming the zone by a hand-over from its old key");
            }
            let mesh = dht::Mesh::start(key.clone(), store.mesh_tree()?, zone, mesh_config).await?;
            // Served before anything is published, so no request finds a
            // service missing.
            let inbound = crate::api::federation::Inbound::serve(&mesh)?;
            for user in store.users()? {
                if let Ok(name) = signalling::UserName::parse(&user.name) {
                    mesh.publish_user(name).await;
                }
            }
            Some((mesh, inbound))
        } else {
            None
        };
        let metrics = crate::metrics::Metrics::default();
        let zone = config.zone_name()?;
        let presence = crate::services::presence::PresenceHub::unstarted();
        let calls = Calls::spawn(
            store.clone(),
            mesh.as_ref().map(|(m, _)| m.clone()),
            zone.clone(),
            config.timeouts.ring,
            config.timeouts.grace,
            config.limits.max_devices_per_user,
            config.limits.max_history_per_user,
            metrics.clone(),
            Some(presence.activity_sink()),
        );
        let presence = presence.spawn(
            store.clone(),
            mesh.as_ref().map(|(m, _)| m.clone()),
            calls.clone(),
            zone.clone(),
            config.timeouts.presence_sync,
        );
        let profiles = crate::services::profiles::Profiles::new(
            store.clone(),
            mesh.as_ref().map(|(m, _)| m.clone()),
            zone.clone(),
            presence.clone(),
        );
        let contacts = crate::services::contacts::Contacts::new(
            store.clone(),
            mesh.as_ref().map(|(m, _)| m.clone()),
            zone,
            calls.clone(),
            presence.clone(),
            &config.limits,
        );
        let listener = std::net::TcpListener::bind(config.http.listen)
            .map_err(io(format!("listening on {}", config.http.listen)))?;
        listener.set_nonblocking(true).map_err(io("configuring listener"))?;
        // Signalling is many small frames: no Nagle delay (accepted sockets
        // inherit the option on Linux).
        socket2::SockRef::from(&listener).set_tcp_nodelay(true).map_err(io("configuring listener"))?;
        let addr = listener.local_addr().map_err(io("reading listen address"))?;
        let admin = crate::api::admin::bind(&data)?;
        let turn = if config.turn.enabled {
            let turn = crate::media::turn::Turn::bind(crate::media::turn::Settings::from_config(&config)?).await?;
            let mesh_listen: Vec<String> = config.mesh.listen.iter().map(|a| a.to_string()).collect();
            turn.add_service_ports(std::iter::once(addr.port()).chain(multiaddr_ports(&mesh_listen)));
            Some(turn)
        } else {
            None
        };
        info!(zone = %config.zone, node = %node_id, %addr, purged_sessions = purged, "zone node ready");
        let (mesh, inbound) = mesh.unzip();
        let state = Arc::new(AppState {
            mesh,
            connections: Arc::new(Semaphore::new(config.limits.max_connections)),
            next_conn: AtomicU64::new(1),
            turn,
            config,
            accounts,
            store,
            calls,
            contacts,
            presence,
            profiles,
            metrics,
        });
        if let Some(inbound) = inbound {
            inbound.spawn(state.clone());
        }
        Ok(Self { state, listener, admin, tls, addr })
    }

    /// The HTTPS address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` completes; then refuses new calls, tells
    /// every device, lets running calls go on for `timeouts.shutdown` and
    /// ends the rest (their history written, the other nodes told), stops
    /// accepting, gives open connections a moment to finish, stops TURN
    /// and the mesh, flushes the database and removes `node.json`. The
    /// whole takes at most `timeouts.shutdown` plus about ten seconds.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
        let data: PathBuf = self.state.config.data_dir.clone();
        let mut mesh_addrs = Vec::new();
        if let Some(mesh) = &self.state.mesh {
            // Wait (briefly) for the mesh listeners so node.json can name them.
            for _ in 0..100 {
                mesh_addrs = mesh.status().await.listen;
                if !mesh_addrs.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let me = mesh.peer_id();
            mesh_addrs = mesh_addrs.into_iter().map(|a| format!("{a}/p2p/{me}")).collect();
        }
        if let Some(turn) = &self.state.turn {
            // The relay must not reach the mesh ports actually bound either.
            turn.add_service_ports(multiaddr_ports(&mesh_addrs));
        }
        let info = RunInfo {
            pid: std::process::id(),
            https: self.addr,
            zone: self.state.config.zone.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            peer_id: self.state.mesh.as_ref().map(|m| m.peer_id().to_string()),
            mesh: mesh_addrs,
            turn: self.state.turn.as_ref().map(crate::media::turn::Turn::local_addr),
        };
        let handle = axum_server::Handle::new();
        let app = crate::api::http::router(self.state.clone());
        let admin_task = tokio::spawn(crate::api::admin::serve(self.admin, self.state.clone()));
        let server = axum_server::from_tcp_rustls(self.listener, RustlsConfig::from_config(self.tls))
            .handle(handle.clone())
            .serve(app.into_make_service_with_connect_info::<SocketAddr>());
        let run_file = data.join("node.json");
        let json = serde_json::to_vec_pretty(&info).unwrap_or_default();
        std::fs::write(&run_file, json).map_err(io(format!("writing {}", run_file.display())))?;
        let shutdown_handle = handle.clone();
        let state = self.state.clone();
        tokio::spawn(async move {
            shutdown.await;
            let grace = state.config.timeouts.shutdown;
            info!(grace_s = grace.as_secs_f64(), "shutting down: no new calls; running calls may go on");
            // Devices are told and calls wound down (history written,
            // other nodes told) before the sockets go.
            state.calls.shutdown(grace).await;
            info!("calls ended; closing connections");
            shutdown_handle.graceful_shutdown(Some(Duration::from_secs(3)));
        });
        let served = server.await;
        admin_task.abort();
        if let Some(turn) = &self.state.turn {
            turn.shutdown().await;
        }
        if let Some(mesh) = &self.state.mesh {
            mesh.stop().await;
        }
        let _ = std::fs::remove_file(&run_file);
        let _ = std::fs::remove_file(data.join("admin.sock"));
        if let Err(e) = self.state.store.flush().await {
            warn!(error = %e, "final flush failed");
        }
        served.map_err(io("serving HTTPS"))
    }
}

/// The TCP and UDP ports in multiaddresses (`/ip4/0.0.0.0/tcp/7447` → 7447).
fn multiaddr_ports<S: AsRef<str>>(addrs: &[S]) -> Vec<u16> {
    addrs
        .iter()
        .flat_map(|a| {
            let parts: Vec<&str> = a.as_ref().split('/').collect();
            parts
                .windows(2)
                .filter(|w| w[0] == "tcp" || w[0] == "udp")
                .filter_map(|w| w[1].parse().ok())
                .collect::<Vec<u16>>()
        })
        .collect()
}
