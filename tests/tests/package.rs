//! The Debian package as a volunteer installs it: built from the workspace
//! (`packaging/build-deb.sh`, with the binary these tests built), installed
//! with `dpkg -i`, its unit checked with `systemd-analyze verify`; two
//! nodes set up with `xarxa setup` and run the way the unit runs them (its
//! `ExecStart`, as its `User`, from its `WorkingDirectory`), each in a
//! network namespace of its own joined by a bridge, like two boxes on one
//! community network. A headless browser logs in to the first; the second,
//! given only the first's address, forms a mesh with it and a call crosses
//! them; both stop on SIGTERM; purge removes the user and the data.
//!
//! Needs root (dpkg, network namespaces), as CI has. The package is purged
//! and the namespaces removed afterwards, pass or fail.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use signalling::EndReason;
use xarxa_tests::{Node, WAIT};

/// The bridge's network, one address per box; the test reaches it through
/// a veth of its own.
const NET: &str = "10.231.7";
const NS: [&str; 3] = ["xkpkg-br", "xkpkg-a", "xkpkg-b"];
const HOST_IF: &str = "xkpkg-h";
const PASSWORD: &str = "a-long-password-for-the-test";
const SECOND_DATA: &str = "/var/lib/xarxa-b";
const SECOND_CONFIG: &str = "/etc/xarxa/b.toml";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// Runs a command that must succeed; its stdout.
fn run(cmd: &mut Command) -> Result<String> {
    let what = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh(program: &str, args: &[&str]) -> Result<String> {
    run(Command::new(program).args(args))
}

/// Best effort, for cleaning up.
fn quietly(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// The namespaces and the bridge; removed on drop.
struct Network;

impl Network {
    fn new() -> Result<Network> {
        Self::remove();
        let net = Network;
        for ns in NS {
            sh("ip", &["netns", "add", ns])?;
            sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        let br = NS[0];
        sh("ip", &["-n", br, "link", "add", "br0", "type", "bridge"])?;
        sh("ip", &["-n", br, "link", "set", "br0", "up"])?;
        for (i, ns) in NS[1..].iter().enumerate() {
            sh(
                "ip",
                &["-n", br, "link", "add", &format!("p{i}"), "type", "veth", "peer", "name", "eth0", "netns", ns],
            )?;
            sh("ip", &["-n", br, "link", "set", &format!("p{i}"), "master", "br0", "up"])?;
            sh("ip", &["-n", ns, "addr", "add", &format!("{NET}.{}/24", i + 2), "dev", "eth0"])?;
            sh("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        }
        sh("ip", &["link", "add", HOST_IF, "type", "veth", "peer", "name", "host", "netns", br])?;
        sh("ip", &["-n", br, "link", "set", "host", "master", "br0", "up"])?;
        sh("ip", &["addr", "add", &format!("{NET}.1/24"), "dev", HOST_IF])?;
        sh("ip", &["link", "set", HOST_IF, "up"])?;
        Ok(net)
    }

    fn remove() {
        quietly("ip", &["link", "del", HOST_IF]);
        for ns in NS {
            quietly("ip", &["netns", "del", ns]);
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        Self::remove();
    }
}

/// The installed package; purged on drop (with the second node's files).
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        quietly("dpkg", &["--purge", "xarxa"]);
        let _ = std::fs::remove_dir_all(SECOND_DATA);
        let _ = std::fs::remove_file(SECOND_CONFIG);
    }
}

/// What the unit file says about how to run the node.
struct Unit {
    exec: Vec<String>,
    user: String,
    dir: PathBuf,
}

fn unit(path: &Path) -> Result<Unit> {
    let text = std::fs::read_to_string(path)?;
    let value = |key: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).map(str::trim);
    Ok(Unit {
        exec: value("ExecStart").context("ExecStart")?.split_whitespace().map(str::to_owned).collect(),
        user: value("User").context("User")?.to_owned(),
        dir: value("WorkingDirectory").context("WorkingDirectory")?.into(),
    })
}

/// A node started the way the unit starts it, in a namespace; stopped with
/// SIGTERM (the unit's KillSignal) on drop.
struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    fn start(unit: &Unit, ns: &str, config: &str, log: PathBuf) -> Result<Service> {
        let mut exec = unit.exec.clone();
        if let Some(i) = exec.iter().position(|a| a == "--config") {
            exec[i + 1] = config.to_owned();
        }
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "setpriv", "--reuid", &unit.user, "--regid", &unit.user, "--init-groups"])
            .args(&exec)
            .current_dir(&unit.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("XARXA_") {
                cmd.env_remove(k);
            }
        }
        Ok(Service { child: cmd.spawn().context("starting the node")?, log })
    }

    /// SIGTERM, then how long it took to exit (`None`: not within `bound`,
    /// killed).
    fn stop(&mut self, bound: Duration) -> Result<Option<Duration>> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        // `ip netns exec` execs setpriv, which execs xarxa: one process.
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let sent = Instant::now();
        while sent.elapsed() < bound {
            if self.child.try_wait()?.is_some() {
                return Ok(Some(sent.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(None)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.stop(Duration::from_secs(40));
        }
    }
}

/// `/usr/bin/xarxa ARGS` run through `wrapper` (e.g. setpriv to another
/// user), from `/`, with no `XARXA_*` variable of the test's.
fn installed(wrapper: &[&str], args: &[&str]) -> Command {
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg("/usr/bin/xarxa");
            c
        }
        None => Command::new("/usr/bin/xarxa"),
    };
    cmd.args(args).current_dir("/");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("XARXA_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// `xarxa ARGS` as root in namespace `ns`, the password on stdin.
fn xarxa_in(ns: &str, args: &[&str]) -> Result<String> {
    use std::io::Write as _;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "/usr/bin/xarxa"]).args(args).current_dir("/");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("XARXA_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    if let Some(mut input) = child.stdin.take() {
        writeln!(input, "{PASSWORD}")?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "xarxa {args:?}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    Ok(stdout)
}

/// Waits until the node in `data` has written `node.json` and answers
/// `/health` at `addr`.
async fn until_healthy(zone: &str, data: &Path, addr: SocketAddr, service: &Service) -> Result<Node> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(node) = Node::attach(zone, data, addr) {
            if let Ok(r) = node.get("/health", None).await {
                if r.status == 200 && r.body["zone"] == zone {
                    return Ok(node);
                }
            }
        }
        ensure!(Instant::now() < deadline, "{zone} never answered /health; log:\n{}", service.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The browser logs in (tests/browser/call.mjs, scenario `login`).
fn browser_login(url: &str, name: &str) -> Result<()> {
    let dir = workspace().join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    ensure!(Path::new(&chromium).exists(), "Chromium is not installed at {chromium}: run ./.ci/run");
    if !dir.join("node_modules/playwright-core").exists() {
        run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir))?;
    }
    let artifacts = workspace().join("artifacts/browser/package");
    let who = json!({"url": url, "name": name, "password": PASSWORD, "address": ""});
    let cfg = json!({"scenario": "login", "caller": who, "callee": who, "ice": "loopback", "artifacts": artifacts});
    let out = run(Command::new("node")
        .arg("call.mjs")
        .current_dir(&dir)
        .env("XARXA_BROWSER_TEST", cfg.to_string())
        .env("CHROMIUM", &chromium))?;
    ensure!(out.contains("\"loggedIn\":true"), "{out}");
    ensure!(artifacts.join("home.png").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_debian_package_installs_sets_up_two_nodes_that_mesh_and_purges() -> Result<()> {
    ensure!(
        sh("id", &["-u"])?.trim() == "0",
        "this test installs a package and makes network namespaces: run it as root"
    );
    let status = Command::new("dpkg-query").args(["-W", "-f=${Status}", "xarxa"]).output()?;
    ensure!(
        !String::from_utf8_lossy(&status.stdout).contains("ok installed"),
        "the xarxa package is installed on this machine; this test installs and purges its own"
    );
    let bin = xarxa_tests::xarxa_bin()?;
    let out_dir = tempfile::tempdir()?;
    let built = run(Command::new("bash")
        .arg(workspace().join("packaging/build-deb.sh"))
        .arg("--binary")
        .arg(&bin)
        .arg("--out")
        .arg(out_dir.path()))?;
    let deb = PathBuf::from(built.lines().last().context("build-deb.sh printed no path")?.trim());
    let contents = sh("dpkg-deb", &["--contents", deb.to_str().context("path")?])?;
    for f in ["./usr/bin/xarxa", "./lib/systemd/system/xarxa.service", "./usr/share/doc/xarxa/copyright"] {
        ensure!(contents.contains(f), "{f} in the package:\n{contents}");
    }

    let network = Network::new()?;
    let installing = Instant::now();
    let _installed = Installed;
    run(Command::new("dpkg").arg("-i").arg(&deb).env("DEBIAN_FRONTEND", "noninteractive"))?;

    // The unit: verified, hardened.
    let unit_path = Path::new("/lib/systemd/system/xarxa.service");
    let verify = Command::new("systemd-analyze").arg("verify").arg(unit_path).output()?;
    let complaints = String::from_utf8_lossy(&verify.stderr).into_owned();
    ensure!(verify.status.success() && complaints.trim().is_empty(), "systemd-analyze verify: {complaints}");
    let text = std::fs::read_to_string(unit_path)?;
    for line in [
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "Restart=on-failure",
        "LimitNOFILE=65536",
    ] {
        ensure!(text.lines().any(|l| l == line), "{line} in the unit");
    }
    let unit = unit(unit_path)?;
    // The user, the commented config only it and root read, its data.
    sh("getent", &["passwd", &unit.user])?;
    let config = std::fs::read_to_string("/etc/xarxa/config.toml")?;
    ensure!(config.starts_with("# Xarxa zone node configuration"), "the config xarxa init writes");
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let m = std::fs::metadata("/etc/xarxa/config.toml")?;
        ensure!(m.permissions().mode() & 0o777 == 0o640 && m.uid() == 0);
        let key = std::fs::metadata("/var/lib/xarxa/node.key")?;
        let owner = sh("id", &["-u", &unit.user])?;
        ensure!(key.uid().to_string() == owner.trim(), "the node key belongs to the service's user");
    }

    // The first box: set up alone (no other zone answers), started.
    let setup_a = xarxa_in(
        NS[1],
        &[
            "setup",
            "--zone",
            "pkga",
            "--registration",
            "invite",
            "--account",
            "alice",
            "--password-stdin",
            "--yes",
            "--wait",
            "3s",
        ],
    )?;
    ensure!(setup_a.contains("account alice@pkga created"), "{setup_a}");
    ensure!(setup_a.contains(&format!("https://{NET}.2:8443/")), "{setup_a}");
    let a_mesh = setup_a
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(&format!("/ip4/{NET}.2/tcp/7447/p2p/")))
        .context(format!("setup printed the mesh address: {setup_a}"))?
        .to_owned();
    let logs = tempfile::tempdir()?;
    let mut service_a = Service::start(&unit, NS[1], "/etc/xarxa/config.toml", logs.path().join("a.log"))?;
    let a_addr: SocketAddr = format!("{NET}.2:8443").parse()?;
    let a = until_healthy("pkga", Path::new("/var/lib/xarxa"), a_addr, &service_a).await?;
    println!("from dpkg -i to /health answering: {:.2} s", installing.elapsed().as_secs_f64());
    browser_login(&format!("https://{a_addr}"), "alice")?;

    // The admin commands work for root and for the service's user against
    // the running service's data (through its admin socket), with the
    // installed config found on its own.
    let status: serde_json::Value = serde_json::from_str(&run(&mut installed(&[], &["status"]))?)?;
    ensure!(status["running"] == true && status["zone"] == "pkga", "{status}");
    let user = ["setpriv", "--reuid", &unit.user, "--regid", &unit.user, "--init-groups"];
    let as_user: serde_json::Value = serde_json::from_str(&run(&mut installed(&user, &["status"]))?)?;
    ensure!(as_user["running"] == true, "{as_user}");
    let backup = out_dir.path().join("pkga.xarxa-backup");
    run(&mut installed(&[], &["backup", backup.to_str().context("path")?]))?;
    ensure!(backup.exists(), "a backup of the running service");

    // The second box, given only the first's address.
    sh("install", &["-d", "-o", &unit.user, "-g", &unit.user, "-m", "0750", SECOND_DATA])?;
    sh("cp", &["-p", "/etc/xarxa/config.toml", SECOND_CONFIG])?;
    let setup_b = xarxa_in(
        NS[2],
        &[
            "--config",
            SECOND_CONFIG,
            "--data",
            SECOND_DATA,
            "setup",
            "--zone",
            "pkgb",
            "--bootstrap",
            &a_mesh,
            "--account",
            "bob",
            "--password-stdin",
            "--yes",
            "--wait",
            "20s",
        ],
    )?;
    ensure!(setup_b.contains("zone pkgb: free (1 zones answered)"), "{setup_b}");
    let mut service_b = Service::start(&unit, NS[2], SECOND_CONFIG, logs.path().join("b.log"))?;
    let b = until_healthy("pkgb", Path::new(SECOND_DATA), format!("{NET}.3:8443").parse()?, &service_b).await?;

    // A call from the second box to the first.
    let alice = a.login("alice", PASSWORD).await?;
    let bob = b.login("bob", PASSWORD).await?;
    let mut ad = a.device(&alice, "alice").await?;
    let mut bd = b.device(&bob, "bob").await?;
    let call = bd
        .call_until_ringing("alice@pkga", Duration::from_secs(60))
        .await
        .with_context(|| format!("A:\n{}\nB:\n{}", service_a.log(), service_b.log()))?;
    ad.expect_incoming(&call, "bob@pkgb", WAIT).await?;
    ad.accept(&call).await?;
    bd.expect_accepted(&call, WAIT).await?;
    bd.hangup(&call).await?;
    ad.expect_ended(&call, EndReason::HungUp, WAIT).await?;
    a.history_entry(&alice, &call, WAIT).await?;
    b.history_entry(&bob, &call, WAIT).await?;
    drop((ad, bd));

    // `xarxa doctor` on the installed node finds nothing to fix: its
    // certificate, ports and STUN, its claim, its peer's clock, and the
    // peer dialling it back at its claimed address.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = installed(&["ip", "netns", "exec", NS[1]], &["doctor"]).output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && !text.contains("warn") {
            ensure!(text.contains(&format!("reached /ip4/{NET}.2/tcp/7447")), "{text}");
            break;
        }
        ensure!(Instant::now() < deadline, "xarxa doctor on the installed node:\n{text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // systemd's stop (SIGTERM, then SIGKILL after TimeoutStopSec=60) never
    // needs the SIGKILL.
    for (name, service) in [("pkga", &mut service_a), ("pkgb", &mut service_b)] {
        let took = service.stop(Duration::from_secs(60))?;
        ensure!(took.is_some(), "{name} did not stop on SIGTERM within 60 s");
        println!("{name} stopped {:.2} s after SIGTERM", took.unwrap_or_default().as_secs_f64());
    }

    // Remove keeps the data and the user; purge takes them.
    sh("dpkg", &["--remove", "xarxa"])?;
    ensure!(Path::new("/var/lib/xarxa/db").exists() && Path::new("/etc/xarxa/config.toml").exists());
    sh("getent", &["passwd", &unit.user])?;
    sh("dpkg", &["--purge", "xarxa"])?;
    ensure!(!Path::new("/var/lib/xarxa").exists() && !Path::new("/etc/xarxa").exists());
    ensure!(Command::new("getent").args(["passwd", &unit.user]).output()?.status.code() == Some(2), "the user is gone");
    drop(network);
    Ok(())
}
