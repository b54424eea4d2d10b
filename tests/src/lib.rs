//! End-to-end harness for Xarxa: real `xarxa` processes on loopback, driven
//! over HTTPS and the signalling WebSocket exactly as browsers drive them.
//!
//! # The pieces
//!
//! - [`Node`]: one `xarxa run` process with its own temporary data
//!   directory, listening on `127.0.0.1:0`. [`Node::start`] builds the binary
//!   once per test binary (with `escargot`, or takes `$XARXA_BIN`), spawns it,
//!   and waits (bounded) for `DATA/node.json` to learn the port. The process
//!   is killed with SIGKILL and reaped when the [`Node`] is dropped, also on
//!   panic; a watchdog shell kills it as well if the test process itself goes
//!   away, so a node kept in a `static` (shared by the tests of one file) does
//!   not outlive its test binary.
//! - HTTP helpers on [`Node`] ([`Node::get`], [`Node::post`], [`Node::register`],
//!   [`Node::login`], [`Node::history`], [`Node::notices`], …) with a client
//!   that trusts exactly the node's self-signed certificate.
//! - [`Device`]: one signalling WebSocket (TLS to `127.0.0.1`, the node's
//!   certificate as the only root). [`Device::request`] sends a request and
//!   waits for the reply with the same id while buffering events;
//!   [`Device::next_event`], [`Device::expect_event`] and
//!   [`Device::expect_no_event`] consume events.
//!
//! # Rules the harness keeps
//!
//! Every wait is bounded ([`WAIT`] unless told otherwise), and every failure
//! is an [`anyhow::Error`] that says what was expected and what came
//! instead, so a test can simply use `?`. Nothing here sleeps to assert
//! timing: waits end as soon as what is awaited arrives.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use xarxa_tests::{Node, WAIT};
//! let node = Node::start("gracia", &[("XARXA_TIMEOUTS__RING", "2s")])?;
//! let alice = node.user("alice").await?;
//! let bob = node.user("bob").await?;
//! let mut a1 = node.device(&alice.token, "a1").await?;
//! let mut b1 = node.device(&bob.token, "b1").await?;
//! let call = a1.call(&bob.address).await?;
//! b1.expect_incoming(&call, &alice.address, WAIT).await?;
//! b1.accept(&call).await?;
//! a1.expect_accepted(&call, WAIT).await?;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::{json, Value};
use signalling::{
    CallId, ClientToNode, DeviceId, EndReason, ErrorCode, HistoryEntry, Media, NodeToClient, Notice, RequestId, Signal,
    PROTOCOL_VERSION,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Default bound for waiting on a reply or an event.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long [`Node::start`] waits for `node.json` to appear.
pub const START_WAIT: Duration = Duration::from_secs(30);

/// How long a graceful stop may take before the node is killed.
pub const STOP_WAIT: Duration = Duration::from_secs(10);

/// Password given to users made by [`Node::user`].
pub const PASSWORD: &str = "correct horse battery";

/// Audio only.
pub const AUDIO: Media = Media { audio: true, video: false };

/// Audio and video.
pub const AUDIO_VIDEO: Media = Media { audio: true, video: true };

/// Installs rustls' `ring` provider as the process default (once; an
/// already installed provider is kept).
pub fn init_crypto() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Milliseconds since the Unix epoch, as the node stamps times.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The path of the `xarxa` binary: `$XARXA_BIN` if set, otherwise built by
/// cargo (package `xarxa-node`, bin `xarxa`, same profile as the tests) once
/// per test binary.
///
/// The build uses the host target directory (no `--target`), so it reuses
/// what `cargo build -p xarxa-node` already compiled instead of building
/// the whole dependency tree a second time under `target/<triple>/`. (The
/// workspace compiles Argon2 optimized even in the dev profile; unoptimized,
/// one hash takes over a second and these suites make hundreds.)
pub fn xarxa_bin() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("XARXA_BIN") {
            return Ok(PathBuf::from(path));
        }
        escargot::CargoBuild::new()
            .package("xarxa-node")
            .bin("xarxa")
            .current_release()
            .run()
            .map(|run| run.path().to_path_buf())
            .map_err(|e| format!("building the xarxa binary failed: {e}"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// The content of `DATA/node.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct NodeInfo {
    /// Process id of the node.
    pub pid: u32,
    /// `host:port` of the HTTPS listener.
    pub https: String,
    /// The zone name.
    pub zone: String,
    /// The node's version.
    pub version: String,
    /// The node's mesh peer id (absent when the mesh is off).
    #[serde(default)]
    pub peer_id: Option<String>,
    /// Mesh addresses to bootstrap from, each ending in `/p2p/<peer id>`.
    #[serde(default)]
    pub mesh: Vec<String>,
    /// `host:port` of the STUN/TURN UDP listener (absent when TURN is off).
    #[serde(default)]
    pub turn: Option<String>,
}

/// A running (or stopped) `xarxa run` process with its own data directory.
///
/// Dropping it kills the process (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct Node {
    root: tempfile::TempDir,
    data: PathBuf,
    log: PathBuf,
    zone: String,
    env: Vec<(String, String)>,
    proc: Mutex<Option<Running>>,
    addr: SocketAddr,
    info: NodeInfo,
    cert_pem: Vec<u8>,
}

#[derive(Debug)]
struct Running {
    child: Child,
    watchdog: Option<Child>,
}

/// An HTTP answer: status, JSON body (`Null` when empty) and the headers the
/// tests look at.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body parsed as JSON, `Value::Null` when empty, or the raw text as
    /// a JSON string when it is not JSON.
    pub body: Value,
    /// The `Retry-After` header, if any.
    pub retry_after: Option<String>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// What was asked, for messages (`POST /api/v1/login`).
    pub what: String,
}

/// A successful login.
#[derive(Debug, Clone, Deserialize)]
pub struct Session {
    /// Bearer token.
    pub token: String,
    /// Session id (as listed by `GET /api/v1/sessions`).
    pub session: String,
    /// `name@zone`.
    pub user: String,
    /// When the session expires.
    pub expires_at_ms: u64,
}

/// A registered and logged-in user.
#[derive(Debug, Clone)]
pub struct User {
    /// Local name (`alice`).
    pub name: String,
    /// Full address (`alice@zone`).
    pub address: String,
    /// The password.
    pub password: String,
    /// A session token.
    pub token: String,
    /// The session id of `token`.
    pub session: String,
}

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// One signalling WebSocket: a device of a user.
pub struct Device {
    ws: Ws,
    label: String,
    next_id: RequestId,
    events: VecDeque<NodeToClient>,
    replies: VecDeque<NodeToClient>,
    closed: Option<Option<u16>>,
    /// The device id the node gave in `welcome`.
    pub id: Option<DeviceId>,
}

/// What one read from the socket gave.
enum Frame {
    Msg(NodeToClient),
    Closed(Option<u16>),
}

impl Node {
    /// Starts `xarxa run --data TMP/data --listen 127.0.0.1:0 --zone ZONE`
    /// with the given extra environment variables, and waits (at most
    /// [`START_WAIT`]) until it has written `node.json`.
    pub fn start(zone: &str, env: &[(&str, &str)]) -> Result<Node> {
        init_crypto();
        let root = tempfile::Builder::new().prefix("xarxa-test-").tempdir().context("making a temp dir")?;
        let data = root.path().join("data");
        let log = root.path().join("node.log");
        let mut node = Node {
            data,
            log,
            zone: zone.to_owned(),
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            proc: Mutex::new(None),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            info: NodeInfo {
                pid: 0,
                https: String::new(),
                zone: zone.to_owned(),
                version: String::new(),
                peer_id: None,
                mesh: Vec::new(),
                turn: None,
            },
            cert_pem: Vec::new(),
            root,
        };
        node.spawn()?;
        Ok(node)
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = xarxa_bin()?;
        let info_path = self.data.join("node.json");
        if info_path.exists() {
            fs::remove_file(&info_path).with_context(|| format!("removing stale {}", info_path.display()))?;
        }
        let log = OpenOptions::new().create(true).append(true).open(&self.log).context("opening the node log")?;
        let log2 = log.try_clone().context("cloning the log handle")?;
        let mut cmd = Command::new(&bin);
        cmd.arg("run")
            .arg("--data")
            .arg(&self.data)
            .args(["--listen", "127.0.0.1:0", "--zone", &self.zone])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // The node reads its config from XARXA_* variables (and refuses
        // unknown ones): only those the test gives reach it.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("XARXA_") {
                cmd.env_remove(k);
            }
        }
        // The mesh stays on loopback, on a free port, without mDNS
        // multicast, unless the test says otherwise.
        cmd.env("XARXA_MESH__LISTEN", "[\"/ip4/127.0.0.1/tcp/0\"]").env("XARXA_MESH__MDNS", "false");
        // Likewise the TURN server: loopback, a free port.
        cmd.env("XARXA_TURN__LISTEN", "127.0.0.1:0");
        // So does STUN/TURN (on by default, on UDP 3478 otherwise).
        cmd.env("XARXA_TURN__LISTEN", "127.0.0.1:0");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("spawning {}", bin.display()))?;
        let watchdog = spawn_watchdog(child.id());
        let pid = child.id();
        *self.lock() = Some(Running { child, watchdog });

        let deadline = Instant::now() + START_WAIT;
        let info: NodeInfo = loop {
            if let Some(status) = self.try_wait()? {
                bail!(
                    "the node exited before listening ({status}); log {}:\n{}",
                    self.log.display(),
                    self.log_tail(40)
                );
            }
            if let Ok(text) = fs::read_to_string(&info_path) {
                if let Ok(info) = serde_json::from_str::<NodeInfo>(&text) {
                    if info.pid == pid {
                        break info;
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no node.json with pid {pid} in {} after {START_WAIT:?}; log:\n{}",
                    self.data.display(),
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.addr = info.https.parse().with_context(|| format!("node.json has a bad \"https\": {:?}", info.https))?;
        self.info = info;
        let cert = self.data.join("tls").join("cert.pem");
        self.cert_pem = fs::read(&cert).with_context(|| format!("reading {}", cert.display()))?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.proc.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Polls the process; once it has exited (and so been reaped), its
    /// watchdog is stopped.
    fn try_wait(&self) -> Result<Option<std::process::ExitStatus>> {
        let mut guard = self.lock();
        let Some(r) = guard.as_mut() else { return Ok(None) };
        let status = r.child.try_wait().context("polling the node process")?;
        if status.is_some() {
            stop_watchdog(r.watchdog.take());
        }
        Ok(status)
    }

    /// Whether the node process is still running.
    pub fn is_running(&self) -> bool {
        matches!(self.try_wait(), Ok(None)) && self.lock().is_some()
    }

    /// Fails with the log tail unless the process runs and `GET /health`
    /// answers 200.
    pub async fn assert_alive(&self) -> Result<()> {
        if !self.is_running() {
            bail!("the node process is gone; log:\n{}", self.log_tail(40));
        }
        let r = self.get("/health", None).await?;
        if r.status != 200 {
            bail!("GET /health gave {} {}", r.status, r.body);
        }
        Ok(())
    }

    /// Kills the node with SIGKILL and reaps it; the data directory stays.
    pub fn kill9(&mut self) -> Result<()> {
        let running = self.lock().take();
        if let Some(mut r) = running {
            r.child.kill().context("SIGKILL")?;
            r.child.wait().context("reaping the node")?;
            stop_watchdog(r.watchdog);
        }
        Ok(())
    }

    /// Stops the node gracefully (SIGTERM, then SIGKILL after [`STOP_WAIT`])
    /// and reaps it. Returns whether it stopped on its own.
    pub fn stop(&mut self) -> Result<bool> {
        let running = self.lock().take();
        let Some(mut r) = running else { return Ok(true) };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(r.child.id()).context("pid out of range")?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("SIGTERM")?;
        let deadline = Instant::now() + STOP_WAIT;
        let graceful = loop {
            if r.child.try_wait().context("waiting for the node")?.is_some() {
                break true;
            }
            if Instant::now() > deadline {
                r.child.kill().context("SIGKILL after a stuck stop")?;
                r.child.wait().context("reaping the node")?;
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        stop_watchdog(r.watchdog);
        Ok(graceful)
    }

    /// Starts the node again on the same data directory (after [`Node::stop`]
    /// or [`Node::kill9`]). The port changes.
    pub fn start_again(&mut self) -> Result<()> {
        if self.lock().is_some() {
            bail!("start_again on a node that is running");
        }
        self.spawn()
    }

    /// Graceful stop then start on the same data directory. Fails if the
    /// node did not stop within [`STOP_WAIT`].
    pub fn restart(&mut self) -> Result<()> {
        if !self.stop()? {
            bail!("the node did not stop within {STOP_WAIT:?} after SIGTERM; log:\n{}", self.log_tail(40));
        }
        self.spawn()
    }

    /// `127.0.0.1:PORT` of the HTTPS listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The zone name.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// What the node wrote to `node.json` when it last started.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Where the node's stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The temporary directory holding data and log.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `name@zone` for a local name.
    pub fn address(&self, name: &str) -> String {
        format!("{name}@{}", self.zone)
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `https://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// An HTTP client that trusts exactly this node's certificate. A new one
    /// per call: a node may be shared by tests that each run their own tokio
    /// runtime, and a client's pool must not outlive its runtime.
    pub fn http(&self) -> Result<reqwest::Client> {
        init_crypto();
        let cert = reqwest::Certificate::from_pem(&self.cert_pem).context("parsing the node's cert.pem")?;
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert)
            .no_proxy()
            .timeout(WAIT)
            .build()
            .context("building the HTTP client")
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Body>,
    ) -> Result<Reply> {
        let what = format!("{method} {path}");
        let mut req = self.http()?.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        match body {
            Some(Body::Json(v)) => req = req.json(&v),
            Some(Body::Raw(text)) => req = req.header("content-type", "application/json").body(text),
            None => {}
        }
        let resp = req.send().await.with_context(|| format!("{what}: no answer from the node"))?;
        let status = resp.status().as_u16();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let retry_after = header("retry-after");
        let content_type = header("content-type");
        let text = resp.text().await.with_context(|| format!("{what}: reading the body"))?;
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Ok(Reply { status, body, retry_after, content_type, what })
    }

    /// `GET path`, with a bearer token if given.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Result<Reply> {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Result<Reply> {
        self.send(reqwest::Method::POST, path, token, Some(Body::Json(body))).await
    }

    /// `POST path` with a raw body labelled `application/json`.
    pub async fn post_raw(&self, path: &str, token: Option<&str>, body: impl Into<String>) -> Result<Reply> {
        self.send(reqwest::Method::POST, path, token, Some(Body::Raw(body.into()))).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str, token: Option<&str>) -> Result<Reply> {
        self.send(reqwest::Method::DELETE, path, token, None).await
    }

    /// `POST /api/v1/register` without expectations.
    pub async fn try_register(&self, name: &str, password: &str) -> Result<Reply> {
        self.post("/api/v1/register", None, json!({"name": name, "password": password})).await
    }

    /// Registers `name`; expects 201 `{"user": "name@zone"}`.
    pub async fn register(&self, name: &str, password: &str) -> Result<()> {
        let r = self.try_register(name, password).await?.expect_status(201)?;
        let want = self.address(&name.to_ascii_lowercase());
        if r.body["user"] != want {
            bail!("{}: expected {{\"user\": {want:?}}}, got {}", r.what, r.body);
        }
        Ok(())
    }

    /// `POST /api/v1/login` without expectations.
    pub async fn try_login(&self, name: &str, password: &str, device: Option<&str>) -> Result<Reply> {
        let mut body = json!({"name": name, "password": password});
        if let Some(device) = device {
            body["device"] = json!(device);
        }
        self.post("/api/v1/login", None, body).await
    }

    /// Logs in; expects 200 with a token.
    pub async fn login_session(&self, name: &str, password: &str, device: Option<&str>) -> Result<Session> {
        let r = self.try_login(name, password, device).await?.expect_status(200)?;
        serde_json::from_value(r.body.clone()).with_context(|| format!("{}: not a session: {}", r.what, r.body))
    }

    /// Logs in; returns the token.
    pub async fn login(&self, name: &str, password: &str) -> Result<String> {
        Ok(self.login_session(name, password, None).await?.token)
    }

    /// Registers `name` with [`PASSWORD`] and logs in.
    pub async fn user(&self, name: &str) -> Result<User> {
        self.register(name, PASSWORD).await?;
        let s = self.login_session(name, PASSWORD, Some("test")).await?;
        Ok(User {
            name: name.to_owned(),
            address: self.address(name),
            password: PASSWORD.to_owned(),
            token: s.token,
            session: s.session,
        })
    }

    /// Registers and logs in `{prefix}-{name}` for each name, concurrently.
    pub async fn users(&self, prefix: &str, names: &[&str]) -> Result<Vec<User>> {
        let full: Vec<String> = names.iter().map(|n| format!("{prefix}-{n}")).collect();
        futures_util::future::try_join_all(full.iter().map(|n| self.user(n))).await
    }

    /// `GET /api/v1/history?limit=200`: the caller's history, newest first.
    pub async fn history(&self, token: &str) -> Result<Vec<HistoryEntry>> {
        let r = self.get("/api/v1/history?limit=200", Some(token)).await?.expect_status(200)?;
        serde_json::from_value(r.body["entries"].clone())
            .with_context(|| format!("{}: \"entries\" is not a list of history entries: {}", r.what, r.body))
    }

    /// Waits (bounded by `timeout`) until the caller's history has an entry
    /// for `call`, and returns it.
    pub async fn history_entry(&self, token: &str, call: &CallId, timeout: Duration) -> Result<HistoryEntry> {
        let deadline = Instant::now() + timeout;
        loop {
            let entries = self.history(token).await?;
            if let Some(e) = entries.iter().find(|e| &e.call == call) {
                return Ok(e.clone());
            }
            if Instant::now() > deadline {
                bail!("no history entry for call {} within {timeout:?}; history: {entries:?}", call.0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /api/v1/notices` (`?all=true` when `all`).
    pub async fn notices(&self, token: &str, all: bool) -> Result<Vec<Notice>> {
        let path = if all { "/api/v1/notices?all=true" } else { "/api/v1/notices" };
        let r = self.get(path, Some(token)).await?.expect_status(200)?;
        serde_json::from_value(r.body["notices"].clone())
            .with_context(|| format!("{}: \"notices\" is not a list of notices: {}", r.what, r.body))
    }

    /// Waits (bounded) until the unread notices hold one for `call`.
    pub async fn notice_for(&self, token: &str, call: &CallId, timeout: Duration) -> Result<Notice> {
        let deadline = Instant::now() + timeout;
        loop {
            let notices = self.notices(token, false).await?;
            if let Some(n) = notices.iter().find(|n| &n.call == call) {
                return Ok(n.clone());
            }
            if Instant::now() > deadline {
                bail!("no unread notice for call {} within {timeout:?}; notices: {notices:?}", call.0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens a WebSocket (no `hello` yet).
    pub async fn connect(&self, label: &str) -> Result<Device> {
        Device::connect(self, label).await
    }

    /// Opens a WebSocket and says `hello` with `token`; expects `welcome`.
    pub async fn device(&self, token: &str, label: &str) -> Result<Device> {
        let mut d = Device::connect(self, label).await?;
        d.hello(token).await?;
        Ok(d)
    }

    fn tls_connector(&self) -> Result<tokio_rustls::TlsConnector> {
        let mut roots = rustls::RootCertStore::empty();
        let mut pem = self.cert_pem.as_slice();
        for cert in rustls_pemfile::certs(&mut pem) {
            roots.add(cert.context("reading cert.pem")?).context("adding the node's certificate as a root")?;
        }
        if roots.is_empty() {
            bail!("no certificate in {}/tls/cert.pem", self.data.display());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

enum Body {
    Json(Value),
    Raw(String),
}

impl Reply {
    /// The `error.code` of an error body.
    pub fn code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }

    /// Fails unless the status is `status`.
    pub fn expect_status(self, status: u16) -> Result<Self> {
        if self.status != status {
            bail!("{}: expected status {status}, got {} {}", self.what, self.status, self.body);
        }
        Ok(self)
    }

    /// Fails unless the status is `status` and the body is
    /// `{"error": {"code": code, "message": …}}`.
    pub fn expect_error(self, status: u16, code: &str) -> Result<Self> {
        let message_ok = self.body["error"]["message"].is_string();
        if self.status != status || self.code() != Some(code) || !message_ok {
            bail!(
                "{}: expected {status} {{\"error\": {{\"code\": {code:?}, \"message\": …}}}}, got {} {}",
                self.what,
                self.status,
                self.body
            );
        }
        Ok(self)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let running = self.lock().take();
        if let Some(mut r) = running {
            let _ = r.child.kill();
            let _ = r.child.wait();
            stop_watchdog(r.watchdog);
        }
        if std::thread::panicking() {
            eprintln!("--- last lines of the node log {} ---\n{}", self.log.display(), self.log_tail(60));
        }
    }
}

/// A shell that SIGKILLs `node_pid` once this test process is gone. It
/// blocks reading a pipe whose only writer is this process (Rust makes its
/// end close-on-exec, so no other child holds it); however this process
/// ends, even by SIGKILL, the kernel closes that end, the read returns and
/// the node is killed. Covers nodes kept in statics (never dropped) and
/// test binaries that abort. The watchdog is stopped as soon as the node is
/// reaped, so it never signals a recycled pid.
fn spawn_watchdog(node_pid: u32) -> Option<Child> {
    Command::new("sh")
        .args(["-c", r#"read _; kill -9 "$1" 2>/dev/null"#, "xarxa-watchdog", &node_pid.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

fn stop_watchdog(watchdog: Option<Child>) {
    if let Some(mut w) = watchdog {
        let _ = w.kill();
        let _ = w.wait();
    }
}

impl Device {
    /// Connects a TLS WebSocket to `wss://127.0.0.1:PORT/api/v1/ws`.
    pub async fn connect(node: &Node, label: &str) -> Result<Device> {
        let connector = node.tls_connector()?;
        let tcp = tokio::time::timeout(WAIT, TcpStream::connect(node.addr()))
            .await
            .map_err(|_| anyhow!("{label}: TCP connect to {} timed out", node.addr()))?
            .with_context(|| format!("{label}: TCP connect to {}", node.addr()))?;
        tcp.set_nodelay(true).context("nodelay")?;
        let name = rustls::pki_types::ServerName::IpAddress(node.addr().ip().into());
        let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .map_err(|_| anyhow!("{label}: TLS handshake timed out"))?
            .with_context(|| format!("{label}: TLS handshake with {}", node.addr()))?;
        let url = format!("wss://{}/api/v1/ws", node.addr());
        let (ws, _resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url.as_str(), tls))
            .await
            .map_err(|_| anyhow!("{label}: WebSocket handshake timed out"))?
            .with_context(|| format!("{label}: WebSocket handshake at {url}"))?;
        Ok(Device {
            ws,
            label: label.to_owned(),
            next_id: 1,
            events: VecDeque::new(),
            replies: VecDeque::new(),
            closed: None,
            id: None,
        })
    }

    /// The label used in failure messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A fresh request id.
    pub fn next_id(&mut self) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends `hello` with `token`; expects `welcome` (and no event before
    /// it), remembers the device id, returns the welcome.
    pub async fn hello(&mut self, token: &str) -> Result<NodeToClient> {
        self.hello_with(token, None).await
    }

    /// Sends `hello` with `token` and `resume`; expects `welcome`.
    pub async fn hello_with(&mut self, token: &str, resume: Option<DeviceId>) -> Result<NodeToClient> {
        let id = self.next_id();
        let msg = ClientToNode::Hello { id, version: PROTOCOL_VERSION, token: token.to_owned(), resume };
        let reply = self.request(msg).await?;
        match &reply {
            NodeToClient::Welcome { device, .. } => {
                if !self.events.is_empty() {
                    bail!("{}: events came before welcome: {:?}", self.label, self.events);
                }
                self.id = Some(device.clone());
                Ok(reply)
            }
            other => bail!("{}: expected welcome, got {other:?}", self.label),
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &ClientToNode) -> Result<()> {
        self.send_raw(msg.to_json()).await
    }

    /// Sends one text frame as is.
    pub async fn send_raw(&mut self, text: impl Into<String>) -> Result<()> {
        let text: String = text.into();
        tokio::time::timeout(WAIT, self.ws.send(Message::text(text)))
            .await
            .map_err(|_| anyhow!("{}: sending a text frame timed out", self.label))?
            .with_context(|| format!("{}: sending a text frame", self.label))
    }

    /// Sends one binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        tokio::time::timeout(WAIT, self.ws.send(Message::binary(bytes)))
            .await
            .map_err(|_| anyhow!("{}: sending a binary frame timed out", self.label))?
            .with_context(|| format!("{}: sending a binary frame", self.label))
    }

    /// Sends `msg` and waits for the reply with its id; events that come
    /// meanwhile are kept for [`Device::next_event`].
    pub async fn request(&mut self, msg: ClientToNode) -> Result<NodeToClient> {
        let id = msg.id();
        self.send(&msg).await?;
        self.reply_to(id, WAIT).await.with_context(|| format!("request {}", msg.to_json()))
    }

    /// Waits for the reply whose id is `id`.
    pub async fn reply_to(&mut self, id: RequestId, timeout: Duration) -> Result<NodeToClient> {
        if let Some(pos) = self.replies.iter().position(|r| reply_id(r) == Some(Some(id))) {
            if let Some(r) = self.replies.remove(pos) {
                return Ok(r);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline).await? {
                Some(Frame::Msg(m)) => match reply_id(&m) {
                    Some(Some(got)) if got == id => return Ok(m),
                    Some(_) => self.replies.push_back(m),
                    None => self.events.push_back(m),
                },
                Some(Frame::Closed(code)) => bail!(
                    "{}: socket closed (code {code:?}) while waiting for the reply to request {id}; \
                     other replies: {:?}; events: {:?}",
                    self.label,
                    Listing(&self.replies),
                    Listing(&self.events)
                ),
                None => bail!(
                    "{}: no reply to request {id} within {timeout:?}; other replies: {:?}; events: {:?}",
                    self.label,
                    Listing(&self.replies),
                    Listing(&self.events)
                ),
            }
        }
    }

    /// The next reply of any id (or an `error` without id), for raw frames.
    pub async fn next_reply(&mut self, timeout: Duration) -> Result<NodeToClient> {
        if let Some(r) = self.replies.pop_front() {
            return Ok(r);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline).await? {
                Some(Frame::Msg(m)) if reply_id(&m).is_some() => return Ok(m),
                Some(Frame::Msg(m)) => self.events.push_back(m),
                Some(Frame::Closed(code)) => {
                    bail!("{}: socket closed (code {code:?}) while waiting for a reply", self.label)
                }
                None => bail!("{}: no reply within {timeout:?}; events: {:?}", self.label, Listing(&self.events)),
            }
        }
    }

    /// Expects the next reply to be an `error` with `code` (and, if `id` is
    /// given, that id).
    pub async fn expect_error_reply(&mut self, code: ErrorCode, id: Option<RequestId>) -> Result<NodeToClient> {
        let r = self.next_reply(WAIT).await?;
        check_error(&self.label, &r, code, id)?;
        Ok(r)
    }

    /// The next event (buffered first).
    pub async fn next_event(&mut self, timeout: Duration) -> Result<NodeToClient> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline).await? {
                Some(Frame::Msg(m)) if reply_id(&m).is_none() => return Ok(m),
                Some(Frame::Msg(m)) => self.replies.push_back(m),
                Some(Frame::Closed(code)) => {
                    bail!("{}: socket closed (code {code:?}) while waiting for an event", self.label)
                }
                None => bail!("{}: no event within {timeout:?}", self.label),
            }
        }
    }

    /// Waits for the first event matching `pred`; other events stay buffered
    /// in order. `what` names the expectation in the failure message.
    pub async fn expect_event(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&NodeToClient) -> bool,
    ) -> Result<NodeToClient> {
        if let Some(pos) = self.events.iter().position(&pred) {
            if let Some(e) = self.events.remove(pos) {
                return Ok(e);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline).await? {
                Some(Frame::Msg(m)) => {
                    if reply_id(&m).is_some() {
                        self.replies.push_back(m);
                    } else if pred(&m) {
                        return Ok(m);
                    } else {
                        self.events.push_back(m);
                    }
                }
                Some(Frame::Closed(code)) => bail!(
                    "{}: expected {what}, but the socket closed (code {code:?}); events that came: {:?}",
                    self.label,
                    Listing(&self.events)
                ),
                None => {
                    bail!(
                        "{}: expected {what} within {timeout:?}; events that came: {:?}",
                        self.label,
                        Listing(&self.events)
                    )
                }
            }
        }
    }

    /// Fails if any event is buffered or arrives within `dur`.
    pub async fn expect_no_event(&mut self, dur: Duration) -> Result<()> {
        self.expect_no_event_matching("event", dur, |_| true).await
    }

    /// Fails if an event matching `pred` is buffered or arrives within `dur`;
    /// other events stay buffered.
    pub async fn expect_no_event_matching(
        &mut self,
        what: &str,
        dur: Duration,
        pred: impl Fn(&NodeToClient) -> bool,
    ) -> Result<()> {
        if let Some(e) = self.events.iter().find(|e| pred(e)) {
            bail!("{}: expected no {what}, but had {e:?}", self.label);
        }
        let deadline = Instant::now() + dur;
        loop {
            match self.read(deadline).await? {
                Some(Frame::Msg(m)) => {
                    if reply_id(&m).is_some() {
                        self.replies.push_back(m);
                    } else if pred(&m) {
                        bail!("{}: expected no {what} for {dur:?}, but got {m:?}", self.label);
                    } else {
                        self.events.push_back(m);
                    }
                }
                Some(Frame::Closed(code)) => {
                    bail!("{}: expected no {what}, but the socket closed (code {code:?})", self.label)
                }
                None => return Ok(()),
            }
        }
    }

    /// Takes every buffered event.
    pub fn drain_events(&mut self) -> Vec<NodeToClient> {
        self.events.drain(..).collect()
    }

    /// Waits until the node closes the socket; returns the close code (None
    /// when the connection just ended). Messages meanwhile are buffered.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Result<Option<u16>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline).await? {
                Some(Frame::Msg(m)) => {
                    if reply_id(&m).is_some() {
                        self.replies.push_back(m);
                    } else {
                        self.events.push_back(m);
                    }
                }
                Some(Frame::Closed(code)) => return Ok(code),
                None => bail!(
                    "{}: expected the node to close the socket within {timeout:?}; it stayed open (replies {:?}, events {:?})",
                    self.label,
                    Listing(&self.replies),
                    Listing(&self.events)
                ),
            }
        }
    }

    /// Drops the connection without a close handshake (the TCP socket just
    /// goes away), as a crashed browser or a lost network would.
    pub fn drop_connection(self) {
        drop(self);
    }

    /// Closes the socket politely.
    pub async fn close(mut self) -> Result<()> {
        let _ = tokio::time::timeout(WAIT, self.ws.close(None)).await;
        Ok(())
    }

    /// Reads one frame, or `None` at the deadline.
    async fn read(&mut self, deadline: Instant) -> Result<Option<Frame>> {
        if let Some(code) = self.closed {
            return Ok(Some(Frame::Closed(code)));
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return Ok(None),
                Ok(next) => next,
            };
            match next {
                None | Some(Err(_)) => {
                    self.closed = Some(None);
                    return Ok(Some(Frame::Closed(None)));
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.as_ref().map(|f: &CloseFrame| u16::from(f.code));
                    self.closed = Some(code);
                    return Ok(Some(Frame::Closed(code)));
                }
                Some(Ok(Message::Text(text))) => {
                    let msg = NodeToClient::parse(text.as_str()).map_err(|e| {
                        anyhow!(
                            "{}: the node sent a frame that is not a NodeToClient ({e}): {}",
                            self.label,
                            text.as_str()
                        )
                    })?;
                    return Ok(Some(Frame::Msg(msg)));
                }
                Some(Ok(Message::Binary(b))) => {
                    bail!("{}: the node sent a binary frame ({} bytes)", self.label, b.len())
                }
                Some(Ok(_)) => {} // ping, pong, raw frames
            }
        }
    }

    // ---- the signalling requests, expecting success ----

    /// Sends a request and expects `ok`.
    pub async fn expect_ok(&mut self, msg: ClientToNode) -> Result<()> {
        let text = msg.to_json();
        match self.request(msg).await? {
            NodeToClient::Ok { .. } => Ok(()),
            other => bail!("{}: expected ok to {text}, got {other:?}", self.label),
        }
    }

    /// Sends a request and expects an `error` with `code` and the request's id.
    pub async fn expect_error(&mut self, msg: ClientToNode, code: ErrorCode) -> Result<()> {
        let id = msg.id();
        let text = msg.to_json();
        let r = self.request(msg).await?;
        check_error(&self.label, &r, code, Some(id)).with_context(|| format!("reply to {text}"))
    }

    /// `call` with audio only; expects `call_placed`; returns the call id.
    pub async fn call(&mut self, to: &str) -> Result<CallId> {
        self.call_with(to, AUDIO).await
    }

    /// `call` with `media`; expects `call_placed`.
    pub async fn call_with(&mut self, to: &str, media: Media) -> Result<CallId> {
        let id = self.next_id();
        match self.request(ClientToNode::Call { id, to: to.to_owned(), media }).await? {
            NodeToClient::CallPlaced { call, .. } => Ok(call),
            other => bail!("{}: expected call_placed calling {to}, got {other:?}", self.label),
        }
    }

    /// `accept`; expects `ok`.
    pub async fn accept(&mut self, call: &CallId) -> Result<()> {
        let id = self.next_id();
        self.expect_ok(ClientToNode::Accept { id, call: call.clone() }).await
    }

    /// `reject`; expects `ok`.
    pub async fn reject(&mut self, call: &CallId) -> Result<()> {
        let id = self.next_id();
        self.expect_ok(ClientToNode::Reject { id, call: call.clone() }).await
    }

    /// `hangup`; expects `ok`.
    pub async fn hangup(&mut self, call: &CallId) -> Result<()> {
        let id = self.next_id();
        self.expect_ok(ClientToNode::Hangup { id, call: call.clone() }).await
    }

    /// `signal`; expects `ok`.
    pub async fn signal(&mut self, call: &CallId, signal: Signal) -> Result<()> {
        let id = self.next_id();
        self.expect_ok(ClientToNode::Signal { id, call: call.clone(), signal }).await
    }

    /// `mark_read`; expects `ok`.
    pub async fn mark_read(&mut self, notice: u64) -> Result<()> {
        let id = self.next_id();
        self.expect_ok(ClientToNode::MarkRead { id, notice }).await
    }

    /// `ping`; expects `pong` with the same id.
    pub async fn ping(&mut self) -> Result<()> {
        let id = self.next_id();
        match self.request(ClientToNode::Ping { id }).await? {
            NodeToClient::Pong { id: got } if got == id => Ok(()),
            other => bail!("{}: expected pong to ping {id}, got {other:?}", self.label),
        }
    }

    // ---- the events, expected ----

    /// Expects `incoming` for `call` from `from`; returns its media.
    pub async fn expect_incoming(&mut self, call: &CallId, from: &str, timeout: Duration) -> Result<Media> {
        let what = format!("incoming {} from {from}", call.0);
        match self
            .expect_event(&what, timeout, |e| matches!(e, NodeToClient::Incoming { call: c, .. } if c == call))
            .await?
        {
            NodeToClient::Incoming { from: got, media, .. } if got.to_string() == from => Ok(media),
            other => bail!("{}: expected {what}, got {other:?}", self.label),
        }
    }

    /// Expects `incoming` for any call; returns (call, from, media).
    pub async fn expect_any_incoming(&mut self, timeout: Duration) -> Result<(CallId, String, Media)> {
        match self.expect_event("incoming", timeout, |e| matches!(e, NodeToClient::Incoming { .. })).await? {
            NodeToClient::Incoming { call, from, media } => Ok((call, from.to_string(), media)),
            other => bail!("{}: expected incoming, got {other:?}", self.label),
        }
    }

    /// Expects `ringing` for `call`.
    pub async fn expect_ringing(&mut self, call: &CallId, timeout: Duration) -> Result<()> {
        let what = format!("ringing {}", call.0);
        self.expect_event(&what, timeout, |e| matches!(e, NodeToClient::Ringing { call: c } if c == call)).await?;
        Ok(())
    }

    /// Expects `accepted` for `call`.
    pub async fn expect_accepted(&mut self, call: &CallId, timeout: Duration) -> Result<()> {
        let what = format!("accepted {}", call.0);
        self.expect_event(&what, timeout, |e| matches!(e, NodeToClient::Accepted { call: c } if c == call)).await?;
        Ok(())
    }

    /// Expects `ended` for `call` with `reason` (an `ended` with another
    /// reason fails at once).
    pub async fn expect_ended(&mut self, call: &CallId, reason: EndReason, timeout: Duration) -> Result<()> {
        let what = format!("ended {} with reason {reason:?}", call.0);
        match self
            .expect_event(&what, timeout, |e| matches!(e, NodeToClient::Ended { call: c, .. } if c == call))
            .await?
        {
            NodeToClient::Ended { reason: got, .. } if got == reason => Ok(()),
            other => bail!("{}: expected {what}, got {other:?}", self.label),
        }
    }

    /// Expects a `signal` event for `call`; returns the signal.
    pub async fn expect_signal(&mut self, call: &CallId, timeout: Duration) -> Result<Signal> {
        let what = format!("signal on {}", call.0);
        match self
            .expect_event(&what, timeout, |e| matches!(e, NodeToClient::Signal { call: c, .. } if c == call))
            .await?
        {
            NodeToClient::Signal { signal, .. } => Ok(signal),
            other => bail!("{}: expected {what}, got {other:?}", self.label),
        }
    }

    /// Expects a `missed_call` event for `call`; returns the notice.
    pub async fn expect_missed_call(&mut self, call: &CallId, timeout: Duration) -> Result<Notice> {
        let what = format!("missed_call for {}", call.0);
        match self
            .expect_event(&what, timeout, |e| matches!(e, NodeToClient::MissedCall { notice } if &notice.call == call))
            .await?
        {
            NodeToClient::MissedCall { notice } => Ok(notice),
            other => bail!("{}: expected {what}, got {other:?}", self.label),
        }
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("label", &self.label)
            .field("id", &self.id)
            .field("events", &self.events)
            .field("replies", &self.replies)
            .finish_non_exhaustive()
    }
}

/// A short listing of buffered messages for failure messages: the first
/// few, then how many more.
struct Listing<'a>(&'a VecDeque<NodeToClient>);

impl std::fmt::Debug for Listing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 8;
        let mut list = f.debug_list();
        list.entries(self.0.iter().take(SHOWN));
        if self.0.len() > SHOWN {
            list.entry(&format_args!("… and {} more", self.0.len() - SHOWN));
        }
        list.finish()
    }
}

/// `Some(id)` for replies (an error may have no id), `None` for events.
pub fn reply_id(msg: &NodeToClient) -> Option<Option<RequestId>> {
    match msg {
        NodeToClient::Welcome { id, .. }
        | NodeToClient::Ok { id }
        | NodeToClient::CallPlaced { id, .. }
        | NodeToClient::Pong { id } => Some(Some(*id)),
        NodeToClient::Error { id, .. } => Some(*id),
        _ => None,
    }
}

/// Fails unless `reply` is an `error` with `code` (and `id` when given).
pub fn check_error(label: &str, reply: &NodeToClient, code: ErrorCode, id: Option<RequestId>) -> Result<()> {
    match reply {
        NodeToClient::Error { id: got_id, code: got, message } => {
            if *got != code {
                bail!("{label}: expected error {code:?}, got error {got:?} ({message})");
            }
            if id.is_some() && *got_id != id {
                bail!("{label}: expected error {code:?} with id {id:?}, got id {got_id:?}");
            }
            Ok(())
        }
        other => bail!("{label}: expected error {code:?}, got {other:?}"),
    }
}

/// Places a call from `caller` to `callee_addr`; waits for `incoming` on
/// `callee` and `ringing` on the caller; has `callee` accept it and waits
/// until the caller sees `accepted`. Returns the call id.
pub async fn connect_call(caller: &mut Device, callee: &mut Device, callee_addr: &str) -> Result<CallId> {
    let call = caller.call(callee_addr).await?;
    let what = format!("incoming {}", call.0);
    callee.expect_event(&what, WAIT, |e| matches!(e, NodeToClient::Incoming { call: c, .. } if *c == call)).await?;
    caller.expect_ringing(&call, WAIT).await?;
    callee.accept(&call).await?;
    caller.expect_accepted(&call, WAIT).await?;
    Ok(call)
}

/// An SDP-looking string of `len` bytes.
pub fn fake_sdp(len: usize) -> String {
    let mut s = String::from("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\n");
    while s.len() < len {
        s.push_str("a=x-pad:0123456789abcdef\r\n");
    }
    s.truncate(len);
    s
}

/// A name unique within this test process: `prefix` + a counter, for
/// tests that share a node.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}", N.fetch_add(1, Ordering::Relaxed))
}
