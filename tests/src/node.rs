//! Node processes: building or locating the `xarxa` binary, spawning
//! `xarxa run` with its own data directory, reading `node.json`, stopping,
//! killing and restarting it, and the watchdog that kills it should the
//! test process go away.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Deserialize;

use crate::{init_crypto, START_WAIT, STOP_WAIT};

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
    /// The node's certificate (PEM), the one root the HTTPS and WebSocket
    /// clients trust.
    pub(crate) cert_pem: Vec<u8>,
}

#[derive(Debug)]
struct Running {
    child: Child,
    watchdog: Option<Child>,
}

impl Node {
    /// Starts `xarxa run --data TMP/data --listen 127.0.0.1:0 --zone ZONE`
    /// with the given extra environment variables, and waits (at most
    /// [`START_WAIT`]) until it has written `node.json`.
    pub fn start(zone: &str, env: &[(&str, &str)]) -> Result<Node> {
        Self::start_with(zone, env, |_| Ok(()))
    }

    /// Like [`Node::start`], after `prepare` has been given the data
    /// directory (not yet made) to fill: a restored backup, a fixture.
    pub fn start_with(zone: &str, env: &[(&str, &str)], prepare: impl FnOnce(&Path) -> Result<()>) -> Result<Node> {
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
        prepare(&node.data)?;
        node.spawn()?;
        Ok(node)
    }

    /// A handle on a node this harness did not start (an installed one, run
    /// the way its systemd unit runs it): its zone, data directory (for its
    /// `tls/cert.pem` and `node.json`) and HTTPS address. Requests, devices
    /// and `cli` work; stopping is the starter's business.
    pub fn attach(zone: &str, data: &Path, https: SocketAddr) -> Result<Node> {
        init_crypto();
        let info_path = data.join("node.json");
        let info: NodeInfo = serde_json::from_str(
            &fs::read_to_string(&info_path).with_context(|| format!("reading {}", info_path.display()))?,
        )
        .with_context(|| format!("parsing {}", info_path.display()))?;
        let cert = data.join("tls").join("cert.pem");
        let root = tempfile::Builder::new().prefix("xarxa-attached-").tempdir().context("making a temp dir")?;
        Ok(Node {
            log: root.path().join("node.log"),
            data: data.to_path_buf(),
            zone: zone.to_owned(),
            env: Vec::new(),
            proc: Mutex::new(None),
            addr: https,
            info,
            cert_pem: fs::read(&cert).with_context(|| format!("reading {}", cert.display()))?,
            root,
        })
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
            .arg("--config")
            .arg(empty_config(&self.data)?)
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
        // Likewise STUN/TURN (on by default, on UDP 3478 otherwise):
        // loopback, a free port.
        cmd.env("XARXA_TURN__LISTEN", "127.0.0.1:0");
        // A SIGTERM lets running calls go on for 2 s (not the default 20),
        // well within STOP_WAIT.
        cmd.env("XARXA_TIMEOUTS__SHUTDOWN", "2s");
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

    /// The exit status once the process has exited by itself (it is then
    /// reaped), `None` while it runs.
    pub fn exit_status(&self) -> Result<Option<std::process::ExitStatus>> {
        self.try_wait()
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

    /// Runs `xarxa ARGS --data DATA` (with `XARXA_ZONE` set to the node's
    /// zone and no other `XARXA_*` variable): its exit status, stdout and
    /// stderr.
    pub fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        cli(&self.data, &self.zone, args)
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

/// Runs `xarxa ARGS --data DATA` with `XARXA_ZONE=ZONE` (and no other
/// `XARXA_*` variable): an admin command, as a volunteer types it.
pub fn cli(data: &Path, zone: &str, args: &[&str]) -> Result<std::process::Output> {
    let mut cmd = Command::new(xarxa_bin()?);
    cmd.args(args);
    if !args.contains(&"--config") {
        cmd.arg("--config").arg(empty_config(data)?);
    }
    cmd.arg("--data").arg(data);
    cmd.env("XARXA_ZONE", zone).stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("XARXA_") && k != "XARXA_ZONE" {
            cmd.env_remove(k);
        }
    }
    cmd.output().with_context(|| format!("running xarxa {}", args.join(" ")))
}

/// The config file given as `--config` to every node and command, so that
/// neither reads a config file of the machine's (the Debian package's
/// `/etc/xarxa/config.toml`, which a test installs): `config.toml` beside
/// `data` if the test wrote one (with `xarxa setup`, say), else an empty one.
fn empty_config(data: &Path) -> Result<PathBuf> {
    let root = data.parent().unwrap_or(data);
    let written = root.join("config.toml");
    if written.exists() {
        return Ok(written);
    }
    let path = root.join("empty.toml");
    if !path.exists() {
        fs::write(&path, "").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(path)
}
