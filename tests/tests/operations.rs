//! What a volunteer running a node sees: `/metrics` scraped and parsed as
//! Prometheus would, its counters moving with a call across two nodes and
//! with a forged record; and a SIGTERM during a call, which tells both
//! devices, writes the call's history and exits within its bound.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dht::MeshRecord;
use signalling::{Address, ClientToNode, EndReason, ErrorCode, HistoryKind, NodeToClient, Outcome};
use xarxa_tests::rogue::{forged_claim, forged_user, rogue_mesh};
use xarxa_tests::{connect_call, Node, WAIT};

const TOKEN: &str = "scrape-me-0123456789";
const MESH_ENV: [(&str, &str); 3] =
    [("XARXA_TIMEOUTS__RING", "3s"), ("XARXA_TIMEOUTS__GRACE", "1s"), ("XARXA_MESH__REPUBLISH", "2s")];

/// `GET /metrics`, parsed by `prometheus-parse`.
async fn scrape(node: &Node, token: Option<&str>) -> Result<prometheus_parse::Scrape> {
    let r = node.get("/metrics", token).await?;
    if r.status != 200 {
        bail!("GET /metrics: {} {}", r.status, r.body);
    }
    let ct = r.content_type.clone().unwrap_or_default();
    assert!(ct.starts_with("application/openmetrics-text"), "content type {ct}");
    let text = r.body.as_str().context("a text body")?.to_owned();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).context("parsing the scrape")
}

/// The sum of the samples named `name` whose labels include `label`.
fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    use prometheus_parse::Value;
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => 0.0,
        })
        .sum()
}

/// `xarxa mesh status` of a running node.
fn mesh_status(node: &Node) -> Result<serde_json::Value> {
    let out = std::process::Command::new(xarxa_tests::xarxa_bin()?)
        .args(["mesh", "status", "--data"])
        .arg(node.data_dir())
        .output()?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Refusals by cause, summed over every cause.
fn rejected_in_status(node: &Node) -> Result<u64> {
    let s = mesh_status(node)?;
    Ok(s["rejected"].as_object().context("rejected")?.values().filter_map(serde_json::Value::as_u64).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_calls_and_forged_records() -> Result<()> {
    let mut env0 = MESH_ENV.to_vec();
    env0.push(("XARXA_METRICS__TOKEN", TOKEN));
    let m0 = Node::start("m0", &env0)?;
    let boots = format!("[{}]", m0.info().mesh.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(","));
    let mut env1 = MESH_ENV.to_vec();
    env1.push(("XARXA_MESH__BOOTSTRAP", &boots));
    let m1 = Node::start("m1", &env1)?;

    // With a token configured, only the token opens it (any address);
    // without, any loopback client may scrape.
    let no = m0.get("/metrics", None).await?;
    assert_eq!((no.status, no.body["error"]["code"].as_str()), (401, Some("invalid_token")), "{no:?}");
    let wrong = m0.get("/metrics", Some("not-the-token-at-all")).await?;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    scrape(&m0, Some(TOKEN)).await?;
    scrape(&m1, None).await?;

    let bob = m0.user("bob").await?;
    let alice = m1.user("alice").await?;
    let mut bd = m0.device(&bob.token, "bob").await?;
    let mut ad = m1.device(&alice.token, "alice").await?;
    let s1 = scrape(&m1, None).await?;
    assert_eq!(value(&s1, "xarxa_devices", None), 1.0);
    assert_eq!(value(&s1, "xarxa_websockets", None), 1.0);
    assert_eq!(value(&s1, "xarxa_users", None), 1.0);
    assert!(value(&s1, "xarxa_database_bytes", None) > 0.0);

    // A call from m1 to m0 once the mesh knows the way; hung up by alice.
    let before = (scrape(&m0, Some(TOKEN)).await?, scrape(&m1, None).await?);
    let call = ad.call_until_ringing(&bob.address, Duration::from_secs(30)).await?;
    bd.expect_incoming(&call, &alice.address, WAIT).await?;
    bd.accept(&call).await?;
    ad.expect_accepted(&call, WAIT).await?;
    let during = scrape(&m1, None).await?;
    assert_eq!(value(&during, "xarxa_calls_connected", None), 1.0);
    ad.hangup(&call).await?;
    bd.expect_ended(&call, EndReason::HungUp, WAIT).await?;
    m1.history_entry(&alice.token, &call, WAIT).await?;
    m0.history_entry(&bob.token, &call, WAIT).await?;
    let after = (scrape(&m0, Some(TOKEN)).await?, scrape(&m1, None).await?);
    let hung_up = Some(("outcome", "hung_up_by_caller"));
    for (node, b, a) in [("m0", &before.0, &after.0), ("m1", &before.1, &after.1)] {
        let moved = value(a, "xarxa_calls_total", hung_up) - value(b, "xarxa_calls_total", hung_up);
        assert_eq!(moved, 1.0, "{node}: calls hung up by the caller");
    }
    // Set-up is timed where the caller is: m1 saw one more call ring.
    let setup = |s| value(s, "xarxa_call_setup_seconds_count", None).max(value(s, "xarxa_call_setup_seconds", None));
    assert!(setup(&after.1) >= setup(&before.1) + 1.0, "the call's set-up time was not observed on m1");
    assert!(value(&after.1, "xarxa_mesh_peers", None) >= 1.0);
    assert_eq!(value(&after.1, "xarxa_mesh_claim_held", None), 1.0);

    // A rogue offers records for bob@m0 signed by its own key.
    let (rogue, rogue_key, _dir) = rogue_mesh(0x67, "m0", &m0).await?;
    let claim = forged_claim(&rogue_key, "m0")?;
    let planted = forged_user(&rogue_key, &Address::parse(&bob.address)?, claim.clone());
    let before = [
        value(&after.0, "xarxa_mesh_records_rejected_total", None),
        value(&after.1, "xarxa_mesh_records_rejected_total", None),
    ];
    let _ = rogue.put_raw(&MeshRecord::Zone(claim)).await;
    let _ = rogue.put_raw(&MeshRecord::User(planted)).await;
    let wait = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = [
            value(&scrape(&m0, Some(TOKEN)).await?, "xarxa_mesh_records_rejected_total", None),
            value(&scrape(&m1, None).await?, "xarxa_mesh_records_rejected_total", None),
        ];
        if now[0] + now[1] > before[0] + before[1] {
            break;
        }
        assert!(tokio::time::Instant::now() < wait, "no forged record was counted: {now:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rogue.stop().await;
    // The figures are the mesh's own, as `xarxa mesh status` shows them.
    let wait = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, scraped) = (rejected_in_status(&m0)?, scrape(&m0, Some(TOKEN)).await?);
        if status as f64 == value(&scraped, "xarxa_mesh_records_rejected_total", None) {
            break;
        }
        assert!(tokio::time::Instant::now() < wait, "metrics and mesh status disagree");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_call_tells_both_devices_and_keeps_its_history() -> Result<()> {
    const GRACE_MS: u64 = 3_000;
    let mut n = Node::start("s0", &[("XARXA_TIMEOUTS__SHUTDOWN", "3s")])?;
    let alice = n.user("alice").await?;
    let bob = n.user("bob").await?;
    let carol = n.user("carol").await?;
    let mut ad = n.device(&alice.token, "alice").await?;
    let mut bd = n.device(&bob.token, "bob").await?;
    let call = connect_call(&mut ad, &mut bd, &bob.address).await?;

    let pid = nix::unistd::Pid::from_raw(i32::try_from(n.info().pid)?);
    let sent = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    for d in [&mut ad, &mut bd] {
        let ev = d.expect_event("going_away", WAIT, |e| matches!(e, NodeToClient::GoingAway { .. })).await?;
        assert_eq!(ev, NodeToClient::GoingAway { within_ms: GRACE_MS });
    }
    // No new connection meanwhile.
    let mut cd = n.connect("carol").await?;
    let id = cd.next_id();
    cd.send(&ClientToNode::Hello {
        id,
        version: signalling::PROTOCOL_VERSION,
        token: carol.token.clone(),
        resume: None,
    })
    .await?;
    cd.expect_error_reply(ErrorCode::ShuttingDown, Some(id)).await?;

    // At the end of the grace the call ends: both sockets close with 1001
    // (going away), the device that stays last hears the call ended.
    let bound = Duration::from_millis(GRACE_MS) + Duration::from_secs(10);
    assert_eq!(ad.expect_closed(bound).await?, Some(1001));
    assert_eq!(bd.expect_closed(bound).await?, Some(1001));
    let heard = [ad.drain_events(), bd.drain_events()].concat();
    assert!(
        heard
            .iter()
            .any(|e| matches!(e, NodeToClient::Ended { call: c, reason: EndReason::ConnectionLost } if *c == call)),
        "neither device heard the call end: {heard:?}"
    );
    let status = loop {
        if let Some(status) = n.exit_status()? {
            break status;
        }
        assert!(sent.elapsed() < bound, "still running {:?} after SIGTERM", sent.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = sent.elapsed();
    println!("SIGTERM to exit, a call running and a grace of {GRACE_MS} ms: {took:?}");
    assert!(status.success(), "exit status {status}");
    assert!(took >= Duration::from_millis(GRACE_MS), "the call was not given its grace: {took:?}");
    n.kill9()?;

    n.start_again()?;
    let sent = n.history_entry(&alice.token, &call, WAIT).await?;
    assert_eq!((sent.kind, sent.outcome), (HistoryKind::Sent, Outcome::ConnectionLost));
    let got = n.history_entry(&bob.token, &call, WAIT).await?;
    assert_eq!(got.kind, HistoryKind::Received);
    Ok(())
}

/// `xarxa setup` with flags, its password on standard input, in `root`
/// (config at `root/config.toml`, data at `root/data`); the loopback
/// settings reach it as variables.
fn setup(root: &std::path::Path, args: &[&str], password: &str, env: &[(&str, &str)]) -> Result<std::process::Output> {
    use std::io::Write as _;
    let mut cmd = std::process::Command::new(xarxa_tests::xarxa_bin()?);
    cmd.arg("--config").arg(root.join("config.toml")).arg("--data").arg(root.join("data")).arg("setup").args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("XARXA_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied()).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = cmd.stderr(std::process::Stdio::piped()).spawn()?;
    if let Some(mut input) = child.stdin.take() {
        writeln!(input, "{password}")?;
    }
    Ok(child.wait_with_output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_checks_the_zone_name_in_the_mesh_and_says_how_to_reach_the_node() -> Result<()> {
    let holder = Node::start("st0", &MESH_ENV)?;
    let boot = holder.info().mesh.first().context("a mesh address")?.clone();
    let env = [
        ("XARXA_MESH__LISTEN", "[\"/ip4/127.0.0.1/tcp/0\"]"),
        ("XARXA_MESH__MDNS", "false"),
        ("XARXA_HTTP__LISTEN", "127.0.0.1:8443"),
        ("XARXA_TURN__LISTEN", "127.0.0.1:0"),
    ];
    let dir = tempfile::tempdir()?;
    let flags = |zone: &'static str| -> Vec<String> {
        ["--zone", zone, "--bootstrap", &boot, "--registration", "invite", "--account", "vol", "--password-stdin"]
            .iter()
            .map(|s| (*s).to_owned())
            .chain(["--wait".to_owned(), "20s".to_owned()])
            .collect()
    };
    // The name another node holds is refused, and nothing is written.
    let taken = flags("st0");
    let out = setup(dir.path(), &taken.iter().map(String::as_str).collect::<Vec<_>>(), "a-long-password", &env)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("zone st0 is held by another node"),
        "{stderr}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!dir.path().join("config.toml").exists());

    let free = flags("st1");
    let out = setup(dir.path(), &free.iter().map(String::as_str).collect::<Vec<_>>(), "a-long-password", &env)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("zone st1: free (1 zones answered)"), "{stdout}");
    assert!(stdout.contains("account vol@st1 created"), "{stdout}");
    assert!(stdout.contains("https://127.0.0.1:8443/"), "{stdout}");
    // The fingerprint printed is the certificate's.
    let pem = std::fs::read(dir.path().join("data/tls/cert.pem"))?;
    let der = rustls_pemfile::certs(&mut pem.as_slice()).next().context("a certificate")??;
    let hash = ring::digest::digest(&ring::digest::SHA256, der.as_ref());
    let want = hash.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
    assert!(stdout.contains(&want), "fingerprint {want} in:\n{stdout}");
    let written = std::fs::read_to_string(dir.path().join("config.toml"))?;
    for line in ["zone = \"st1\"", "registration = \"invite\"", boot.as_str()] {
        assert!(written.contains(line), "{line} in:\n{written}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("config.toml"))?.permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    // The node set up so starts with the account, and claims its zone.
    let root = dir.path().to_owned();
    let node = Node::start_with("st1", &MESH_ENV, |data| {
        copy_dir(&root.join("data"), data)?;
        let text = written.replace(&root.join("data").display().to_string(), &data.display().to_string());
        std::fs::write(data.parent().context("root")?.join("config.toml"), text)?;
        Ok(())
    })?;
    node.login("vol", "a-long-password").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = holder.cli(&["mesh", "ping", "st1"])?;
        if out.status.success() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "st1 never answered: {}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(())
}

/// Copies a directory tree.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// One line of `xarxa doctor`: level, check, what it found.
type DoctorLine = (String, String, String);

/// `xarxa doctor`'s lines, and whether it succeeded.
fn doctor(node: &Node) -> Result<(bool, Vec<DoctorLine>)> {
    let out = node.cli(&["doctor"])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines = text
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| {
            let mut parts = l.splitn(3, char::is_whitespace).filter(|p| !p.is_empty());
            let level = parts.next()?.to_owned();
            let rest = l[level.len()..].trim_start();
            let (name, detail) = rest.split_once("  ").unwrap_or((rest, ""));
            Some((level, name.trim().to_owned(), detail.trim().to_owned()))
        })
        .collect();
    Ok((out.status.success(), lines))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_a_healthy_node_and_names_what_is_broken() -> Result<()> {
    let m0 = Node::start("dr0", &MESH_ENV)?;
    let boots = format!("[{}]", m0.info().mesh.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(","));
    let mut env1 = MESH_ENV.to_vec();
    env1.push(("XARXA_MESH__BOOTSTRAP", &boots));
    let mut m1 = Node::start("dr1", &env1)?;
    // Once the claim is published, every check of a healthy node passes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let (ok, lines) = doctor(&m1)?;
        if ok && lines.iter().all(|(level, _, _)| level == "ok") {
            break lines;
        }
        assert!(tokio::time::Instant::now() < deadline, "doctor on a healthy node: {lines:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let names: Vec<&str> = lines.iter().map(|(_, n, _)| n.as_str()).collect();
    for want in ["certificate", "https port", "stun/turn", "zone claim", "mesh peers", "clock", "dial-back"] {
        assert!(names.contains(&want), "{want} in {lines:?}");
    }
    let dial = lines.iter().find(|(_, n, _)| n == "dial-back").map(|(_, _, d)| d.clone()).unwrap_or_default();
    assert!(dial.contains("reached /ip4/127.0.0.1/tcp/"), "{dial}");

    // A stopped node: the doctor fails and says to start it. (Its port
    // checks bind what the config names: loopback here.)
    m1.stop()?;
    std::fs::write(
        m1.root().join("config.toml"),
        "[http]\nlisten = \"127.0.0.1:0\"\n[turn]\nlisten = \"127.0.0.1:0\"\n",
    )?;
    let (ok, lines) = doctor(&m1)?;
    assert!(!ok);
    assert!(lines.iter().any(|(level, name, _)| level == "FAIL" && name == "node"), "{lines:?}");
    Ok(())
}
