//! Admin operations (`xarxa user …`, `xarxa invite …`, `xarxa status`,
//! `xarxa backup`).
//!
//! While the node runs it holds the database, so the CLI sends its request
//! over a Unix socket in the data directory (mode 0600, or 0660 when the
//! directory belongs to the Debian package's `xarxa` group). When no node runs, the CLI opens the database itself.
//! Both paths execute the same [`AdminRequest`] with [`execute`].

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use signalling::service::{NodeAnswer, NodeQuery, NodeService};
use signalling::{UserName, ZoneName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{info, warn};

use crate::server::ServerError;
use crate::services::accounts::{now_ms, AccountError, Accounts};
use crate::services::calls::{Calls, Command};
use crate::state::AppState;
use crate::store::{backup, Store};

/// Largest admin request line, in bytes.
const MAX_REQUEST: usize = 8 * 1024;

/// One admin operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AdminRequest {
    /// Create an account.
    UserAdd {
        /// Local name.
        name: String,
        /// Password.
        password: String,
        /// An administrator of the zone (may make invite codes from the web).
        #[serde(default)]
        admin: bool,
    },
    /// List accounts.
    UserList,
    /// Delete an account and its data; its devices are disconnected.
    UserRemove {
        /// Local name.
        name: String,
    },
    /// Set a password; every session of the user ends.
    UserPasswd {
        /// Local name.
        name: String,
        /// New password.
        password: String,
    },
    /// Make an invite code.
    InviteCreate {
        /// Registrations it allows.
        uses: u32,
    },
    /// List invite codes.
    InviteList,
    /// Node status.
    Status,
    /// Mesh status: peers, routing table, records, rejections, deliveries.
    MeshStatus,
    /// Ask the node holding a zone whether it answers (the mesh's node
    /// service): round trip, clock offset, version.
    MeshPing {
        /// The zone.
        zone: String,
    },
    /// A backup of the running node's database and files: answered by an
    /// `Ok` line with its summary, then the backup itself (see
    /// [`crate::store::backup`]); only over the socket.
    Backup,
    /// The running node's mesh checks for `xarxa doctor`
    /// ([`crate::doctor::in_node`]).
    Doctor,
}

impl AdminRequest {
    /// The operation's name, for logs (no arguments: they may hold passwords).
    pub fn name(&self) -> &'static str {
        match self {
            Self::UserAdd { .. } => "user add",
            Self::UserList => "user list",
            Self::UserRemove { .. } => "user remove",
            Self::UserPasswd { .. } => "user passwd",
            Self::InviteCreate { .. } => "invite create",
            Self::InviteList => "invite list",
            Self::Status => "status",
            Self::MeshStatus => "mesh status",
            Self::MeshPing { .. } => "mesh ping",
            Self::Backup => "backup",
            Self::Doctor => "doctor",
        }
    }
}

/// The answer to an [`AdminRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminResponse {
    /// Done; data depends on the request.
    Ok {
        /// The result.
        data: Value,
    },
    /// Failed.
    Error {
        /// Why.
        message: String,
    },
}

fn user_name(accounts: &Accounts, name: &str) -> Result<UserName, AccountError> {
    accounts.parse_local(name)
}

/// Runs one request. `calls` is the running node's calls service (to
/// disconnect revoked sessions), absent when the CLI works offline.
pub async fn execute(
    accounts: &Accounts,
    store: &Store,
    calls: Option<&Calls>,
    mesh: Option<&dht::Mesh>,
    req: AdminRequest,
) -> AdminResponse {
    let result: Result<Value, AccountError> = async {
        match req {
            AdminRequest::UserAdd { name, password, admin } => {
                let user = accounts.create(&name, &password, admin).await?;
                if let Some(m) = mesh {
                    m.publish_user(user.name.clone()).await;
                }
                Ok(json!({"user": user}))
            }
            AdminRequest::UserList => {
                let users: Vec<Value> = store
                    .users()?
                    .into_iter()
                    .map(|u| json!({"name": u.name, "created_at_ms": u.created_at_ms, "admin": u.admin}))
                    .collect();
                Ok(json!({"users": users}))
            }
            AdminRequest::UserRemove { name } => {
                let user = user_name(accounts, &name)?;
                let revoked = accounts.remove(&user).await?;
                if let Some(m) = mesh {
                    m.unpublish_user(&user);
                }
                if let Some(c) = calls {
                    c.send(Command::SessionsRevoked { ids: revoked.clone() }).await;
                }
                Ok(json!({"removed": name, "sessions_revoked": revoked.len()}))
            }
            AdminRequest::UserPasswd { name, password } => {
                let revoked = accounts.set_password(&user_name(accounts, &name)?, &password, None).await?;
                if let Some(c) = calls {
                    c.send(Command::SessionsRevoked { ids: revoked.clone() }).await;
                }
                Ok(json!({"user": name, "sessions_revoked": revoked.len()}))
            }
            AdminRequest::InviteCreate { uses } => {
                Ok(json!({"code": accounts.create_invite(uses).await?, "uses": uses}))
            }
            AdminRequest::InviteList => {
                let list: Vec<Value> = store
                    .invites()?
                    .into_iter()
                    .map(|(code, r)| json!({"code": code, "uses_left": r.uses_left}))
                    .collect();
                Ok(json!({"invites": list}))
            }
            AdminRequest::Status => {
                let (users, sessions) = store.counts();
                let mut v = json!({"zone": accounts.zone().as_str(), "users": users, "sessions": sessions,
                                   "running": calls.is_some()});
                if let Some(c) = calls {
                    let s = c.stats().await;
                    v["devices"] = json!(s.devices);
                    v["calls_ringing"] = json!(s.ringing);
                    v["calls_connected"] = json!(s.connected);
                }
                Ok(v)
            }
            AdminRequest::MeshStatus => match mesh {
                Some(m) => Ok(serde_json::to_value(m.status().await).unwrap_or_default()),
                None if calls.is_some() => Ok(json!({"enabled": false})),
                None => Err(AccountError::Internal("the node is not running; mesh status needs it".into())),
            },
            AdminRequest::MeshPing { zone } => match mesh {
                Some(m) => mesh_ping(m, &zone).await.map_err(AccountError::Internal),
                None if calls.is_some() => Err(AccountError::Internal("the mesh is disabled".into())),
                None => Err(AccountError::Internal("the node is not running; mesh ping needs it".into())),
            },
            AdminRequest::Doctor if calls.is_some() => Ok(json!({"checks": crate::doctor::in_node(mesh).await})),
            AdminRequest::Doctor => Err(AccountError::Internal("the node is not running; its checks need it".into())),
            AdminRequest::Backup => {
                Err(AccountError::Internal("a backup is streamed: use admin::backup or Store::write_backup".into()))
            }
        }
    }
    .await;
    match result {
        Ok(data) => AdminResponse::Ok { data },
        Err(e) => AdminResponse::Error { message: e.to_string() },
    }
}

/// Asks the node holding `zone` the node service's ping: the round trip,
/// and how far its clock is from this node's (its wall clock minus this
/// one's at the middle of the round trip).
async fn mesh_ping(mesh: &dht::Mesh, zone: &str) -> Result<Value, String> {
    let zone = ZoneName::parse(zone).map_err(|e| format!("zone: {e}"))?;
    let claim = mesh.zone_claim(&zone).await.ok_or_else(|| format!("no node holds zone {zone}"))?;
    let peer = dht::mesh::peer_of(&claim.claim.node).ok_or("the zone's claim names no valid node")?;
    let addrs = claim.claim.addrs.iter().filter_map(|a| a.parse().ok()).collect();
    let sent_ms = now_ms();
    let started = std::time::Instant::now();
    let answer = mesh.request::<NodeService>(peer, addrs, None, &NodeQuery::Ping).await.map_err(|e| e.to_string())?;
    let rtt = started.elapsed();
    match answer {
        NodeAnswer::Pong { zone: answered, version, wall_ms } => {
            let middle = sent_ms as f64 + rtt.as_secs_f64() * 500.0;
            Ok(json!({"zone": answered.as_str(), "peer_id": peer.to_string(), "version": version,
                      "rtt_ms": rtt.as_secs_f64() * 1000.0, "clock_offset_ms": wall_ms as f64 - middle}))
        }
        other => Err(format!("unexpected answer: {other:?}")),
    }
}

/// Binds `data_dir/admin.sock`, replacing a stale one: mode 0660 when the
/// data directory belongs to the group `xarxa` (the Debian package's,
/// whose members administer the node), otherwise 0600.
pub fn bind(data_dir: &Path) -> Result<UnixListener, ServerError> {
    let path = data_dir.join("admin.sock");
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| ServerError::Io { what, source }
    };
    if path.exists() {
        // The database lock proves no other node uses this directory, so
        // the socket is left over from a crash.
        std::fs::remove_file(&path).map_err(io("removing stale"))?;
    }
    let listener = UnixListener::bind(&path).map_err(io("binding"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::fs::PermissionsExt;
        let group = std::fs::metadata(data_dir).ok().map(|m| nix::unistd::Gid::from_raw(m.gid()));
        let named = group.and_then(|g| nix::unistd::Group::from_gid(g).ok().flatten()).map(|g| g.name);
        let mode = if named.as_deref() == Some("xarxa") { 0o660 } else { 0o600 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(io("securing"))?;
    }
    Ok(listener)
}

/// Serves admin requests: one JSON line in, one JSON line out.
pub async fn serve(listener: UnixListener, state: Arc<AppState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(read.take_limit());
            let resp = match reader.read_line(&mut line).await {
                Ok(_) => match serde_json::from_str::<AdminRequest>(&line) {
                    Ok(AdminRequest::Backup) => {
                        info!(op = "backup", "admin request");
                        if let Err(e) = stream_backup(&state, &mut write).await {
                            warn!(error = %e, "backup failed");
                        }
                        return;
                    }
                    Ok(req) => {
                        info!(op = req.name(), "admin request");
                        execute(&state.accounts, &state.store, Some(&state.calls), state.mesh.as_ref(), req).await
                    }
                    Err(e) => AdminResponse::Error { message: format!("bad request: {e}") },
                },
                Err(e) => AdminResponse::Error { message: format!("read: {e}") },
            };
            let mut out = serde_json::to_vec(&resp).unwrap_or_default();
            out.push(b'\n');
            if let Err(e) = write.write_all(&out).await {
                warn!(error = %e, "admin reply failed");
            }
        });
    }
}

/// Takes a backup into a temporary file in the data directory (writers
/// wait only for that), then sends the `Ok` line and the file.
async fn stream_backup(state: &AppState, write: &mut tokio::net::unix::OwnedWriteHalf) -> Result<(), String> {
    let data_dir = state.config.data_dir.clone();
    let store = state.store.clone();
    let taken = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let files = backup::data_files(&data_dir).map_err(|e| e.to_string())?;
        let tmp = tempfile::Builder::new()
            .prefix(".backup-")
            .tempfile_in(&data_dir)
            .map_err(|e| format!("temporary file in {}: {e}", data_dir.display()))?;
        let summary = store.write_backup(tmp.as_file(), &files, now_ms()).map_err(|e| e.to_string())?;
        Ok((summary, tmp))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    let (summary, tmp) = match taken {
        Ok(t) => t,
        Err(message) => {
            let mut out = serde_json::to_vec(&AdminResponse::Error { message: message.clone() }).unwrap_or_default();
            out.push(b'\n');
            let _ = write.write_all(&out).await;
            return Err(message);
        }
    };
    let mut out = serde_json::to_vec(&AdminResponse::Ok { data: json!(summary) }).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut file = tokio::fs::File::open(tmp.path()).await.map_err(|e| e.to_string())?;
    tokio::io::copy(&mut file, write).await.map_err(|e| e.to_string())?;
    write.shutdown().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Asks the node running on `data_dir` for a backup and writes it to
/// `out`; `None` if no node answers. The answer is the backup's summary.
pub async fn backup(data_dir: &Path, out: &mut tokio::fs::File) -> Option<Result<Value, String>> {
    let mut stream = UnixStream::connect(data_dir.join("admin.sock")).await.ok()?;
    let mut line = serde_json::to_vec(&AdminRequest::Backup).ok()?;
    line.push(b'\n');
    stream.write_all(&line).await.ok()?;
    let mut reader = BufReader::new(stream);
    let mut first = String::new();
    if let Err(e) = reader.read_line(&mut first).await {
        return Some(Err(format!("reading the node's answer: {e}")));
    }
    Some(match serde_json::from_str::<AdminResponse>(&first) {
        Ok(AdminResponse::Ok { data }) => match tokio::io::copy(&mut reader, out).await {
            Ok(_) => Ok(data),
            Err(e) => Err(format!("receiving the backup: {e}")),
        },
        Ok(AdminResponse::Error { message }) => Err(message),
        Err(e) => Err(format!("the node's answer: {e}")),
    })
}

trait TakeLimit {
    fn take_limit(self) -> tokio::io::Take<Self>
    where
        Self: Sized;
}

impl<R: tokio::io::AsyncRead> TakeLimit for R {
    fn take_limit(self) -> tokio::io::Take<Self> {
        tokio::io::AsyncReadExt::take(self, MAX_REQUEST as u64)
    }
}

/// Sends `req` to the node running on `data_dir`; `None` if none answers.
pub async fn request(data_dir: &Path, req: &AdminRequest) -> Option<AdminResponse> {
    let mut stream = UnixStream::connect(data_dir.join("admin.sock")).await.ok()?;
    let mut line = serde_json::to_vec(req).ok()?;
    line.push(b'\n');
    stream.write_all(&line).await.ok()?;
    let mut reader = BufReader::new(stream);
    let mut resp = String::new();
    reader.read_line(&mut resp).await.ok()?;
    serde_json::from_str(&resp).ok()
}
