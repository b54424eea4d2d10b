//! The admin CLI, as a volunteer uses it: `xarxa init` writes a commented
//! config that the other commands load; `xarxa user add|list|passwd|remove`
//! work through a running node's admin socket and offline on its database,
//! with the same effect on logins and sessions; `xarxa invite create` codes
//! admit exactly as many registrations as they allow; and a database from a
//! newer Xarxa is refused with a clear message, by the CLI and by `run`.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use xarxa_tests::{xarxa_bin, Node, PASSWORD};

const NEW_PASSWORD: &str = "another horse battery";

/// What one `xarxa` command did.
struct Outcome {
    ok: bool,
    /// Standard output parsed as JSON (`Null` if it is not JSON).
    json: Value,
    stdout: String,
    stderr: String,
}

/// Runs `xarxa ARGS` with `stdin` on its standard input and no `XARXA_*`
/// variables but `env`; every test server stays on loopback.
fn xarxa(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Result<Outcome> {
    let mut cmd = Command::new(xarxa_bin()?);
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("XARXA_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().context("spawning xarxa")?;
    if let Some(mut input) = child.stdin.take() {
        if let Some(text) = stdin {
            input.write_all(text.as_bytes())?;
            input.write_all(b"\n")?;
        }
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(Outcome {
        ok: out.status.success(),
        json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `xarxa --data DATA ARGS`, which must succeed; its JSON output.
fn admin(data: &Path, args: &[&str], stdin: Option<&str>) -> Result<Value> {
    let data = data.to_str().context("data dir is UTF-8")?;
    let mut all = vec!["--data", data];
    all.extend_from_slice(args);
    let out = xarxa(&all, stdin, &[])?;
    if !out.ok {
        bail!("xarxa {all:?} failed:\n{}\n{}", out.stdout, out.stderr);
    }
    Ok(out.json)
}

/// `xarxa --data DATA ARGS`, which must fail; its standard error.
fn admin_fails(data: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let data = data.to_str().context("data dir is UTF-8")?;
    let mut all = vec!["--data", data];
    all.extend_from_slice(args);
    let out = xarxa(&all, stdin, &[])?;
    if out.ok {
        bail!("xarxa {all:?} succeeded but should not have:\n{}", out.stdout);
    }
    Ok(out.stderr)
}

fn names(list: &Value) -> Vec<String> {
    list["users"].as_array().into_iter().flatten().filter_map(|u| u["name"].as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_work_on_a_running_node_and_offline() -> Result<()> {
    let mut n = Node::start("gestio", &[])?;
    let data = n.data_dir().to_path_buf();

    // Through the running node's admin socket.
    let added = admin(&data, &["user", "add", "ana", "--password-stdin"], Some(PASSWORD))?;
    assert_eq!(added["user"], json!("ana@gestio"), "{added}");
    assert!(admin(&data, &["status"], None)?["running"].as_bool() == Some(true), "the CLI spoke to the running node");
    let ana = n.login_session("ana", PASSWORD, Some("laptop")).await?;
    let mut laptop = n.device(&ana.token, "laptop").await?;
    assert!(names(&admin(&data, &["user", "list"], None)?).contains(&"ana".to_owned()));

    // A new password ends every session, and the open socket with it.
    let changed = admin(&data, &["user", "passwd", "ana", "--password-stdin"], Some(NEW_PASSWORD))?;
    assert_eq!(changed["sessions_revoked"], json!(1), "{changed}");
    laptop.expect_closed(Duration::from_secs(10)).await?;
    n.get("/api/v1/me", Some(&ana.token)).await?.expect_error(401, "invalid_token")?;
    n.try_login("ana", PASSWORD, None).await?.expect_error(401, "invalid_credentials")?;
    let again = n.login("ana", NEW_PASSWORD).await?;

    // Removing the account ends its sessions and its name logs in no more.
    let removed = admin(&data, &["user", "remove", "ana"], None)?;
    assert_eq!(removed["sessions_revoked"], json!(1), "{removed}");
    n.get("/api/v1/me", Some(&again)).await?.expect_error(401, "invalid_token")?;
    n.try_login("ana", NEW_PASSWORD, None).await?.expect_error(401, "invalid_credentials")?;
    assert!(!names(&admin(&data, &["user", "list"], None)?).contains(&"ana".to_owned()));

    // Bad requests are refused with a reason; the node keeps serving.
    let why = admin_fails(&data, &["user", "add", "Not A Name!", "--password-stdin"], Some(PASSWORD))?;
    assert!(!why.trim().is_empty(), "a reason is given");
    let why = admin_fails(&data, &["user", "add", "shorty", "--password-stdin"], Some("short"))?;
    assert!(why.contains("password"), "the password is what is wrong: {why}");
    admin_fails(&data, &["user", "remove", "nobody"], None)?;
    admin(&data, &["user", "add", "biel", "--password-stdin"], Some(PASSWORD))?;
    let why = admin_fails(&data, &["user", "add", "biel", "--password-stdin"], Some(PASSWORD))?;
    assert!(!why.trim().is_empty(), "a taken name is refused with a reason");
    n.assert_alive().await?;

    // Offline, on the same database: the node is stopped.
    assert!(n.stop()?, "the node stopped on SIGTERM");
    let status = admin(&data, &["status"], None)?;
    assert_eq!(status["running"], json!(false), "{status}");
    assert!(names(&admin(&data, &["user", "list"], None)?).contains(&"biel".to_owned()));
    admin(&data, &["user", "add", "carla", "--password-stdin"], Some(PASSWORD))?;
    admin(&data, &["user", "passwd", "biel", "--password-stdin"], Some(NEW_PASSWORD))?;

    // What was done offline holds once the node runs again.
    n.start_again()?;
    n.login("carla", PASSWORD).await?;
    n.login("biel", NEW_PASSWORD).await?;
    n.try_login("biel", PASSWORD, None).await?.expect_error(401, "invalid_credentials")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_codes_admit_as_many_registrations_as_they_allow() -> Result<()> {
    let n = Node::start("convit", &[("XARXA_REGISTRATION", "invite")])?;
    let data = n.data_dir().to_path_buf();
    let register = |name: &str, code: Option<&str>| {
        let mut body = json!({"name": name, "password": PASSWORD});
        if let Some(c) = code {
            body["invite"] = json!(c);
        }
        n.post("/api/v1/register", None, body)
    };
    register("dora", None).await?.expect_error(403, "invalid_invite")?;
    register("dora", Some("made-up-code")).await?.expect_error(403, "invalid_invite")?;

    let invite = admin(&data, &["invite", "create", "--uses", "2"], None)?;
    let code = invite["code"].as_str().context("an invite code")?.to_owned();
    let listed = admin(&data, &["invite", "list"], None)?;
    assert!(listed["invites"].as_array().is_some_and(|l| l.iter().any(|i| i["code"] == json!(code))), "{listed}");

    register("dora", Some(&code)).await?.expect_status(201)?;
    register("enric", Some(&code)).await?.expect_status(201)?;
    register("fina", Some(&code)).await?.expect_error(403, "invalid_invite")?;
    n.login("dora", PASSWORD).await?;
    n.login("enric", PASSWORD).await?;
    n.try_login("fina", PASSWORD, None).await?.expect_error(401, "invalid_credentials")?;

    // An administrator of the zone makes invite codes from the web; other
    // users may not.
    admin(&data, &["user", "add", "gemma", "--admin", "--password-stdin"], Some(PASSWORD))?;
    let listed = admin(&data, &["user", "list"], None)?;
    let flag = |who: &str| {
        listed["users"].as_array().and_then(|l| l.iter().find(|u| u["name"] == who)).map(|u| u["admin"].clone())
    };
    assert_eq!((flag("gemma"), flag("dora")), (Some(json!(true)), Some(json!(false))), "{listed}");
    let gemma = n.login("gemma", PASSWORD).await?;
    let dora = n.login("dora", PASSWORD).await?;
    assert_eq!(n.get("/api/v1/me", Some(&gemma)).await?.expect_status(200)?.body["admin"], json!(true));
    n.post("/api/v1/invites", Some(&dora), json!({"uses": 1})).await?.expect_error(403, "forbidden")?;
    n.get("/api/v1/invites", Some(&dora)).await?.expect_error(403, "forbidden")?;
    n.post("/api/v1/invites", None, json!({"uses": 1})).await?.expect_error(401, "invalid_token")?;
    n.post("/api/v1/invites", Some(&gemma), json!({"uses": 0})).await?.expect_error(400, "bad_request")?;
    let made = n.post("/api/v1/invites", Some(&gemma), json!({"uses": 1})).await?.expect_status(201)?;
    let web_code = made.body["code"].as_str().context("a code")?.to_owned();
    let list = n.get("/api/v1/invites", Some(&gemma)).await?.expect_status(200)?;
    assert!(
        list.body["invites"].as_array().is_some_and(|l| l.iter().any(|i| i["code"] == json!(web_code))),
        "{:?}",
        list.body
    );
    register("hug", Some(&web_code)).await?.expect_status(201)?;
    register("ines", Some(&web_code)).await?.expect_error(403, "invalid_invite")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_writes_a_loadable_config_and_a_newer_database_is_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("xarxa.toml");
    let data = dir.path().join("data");
    let (c, d) = (config.to_str().context("utf-8")?, data.to_str().context("utf-8")?);

    let out = xarxa(&["--config", c, "--data", d, "init", "--zone", "nova"], None, &[])?;
    assert!(out.ok, "init: {}\n{}", out.stdout, out.stderr);
    let text = std::fs::read_to_string(&config)?;
    assert!(text.contains("zone = \"nova\""), "the zone is written:\n{text}");
    assert!(
        text.lines().filter(|l| l.trim_start().starts_with('#')).count() >= 10,
        "the file explains itself:\n{text}"
    );
    assert!(data.join("node.key").exists(), "init made the node key");
    let again = xarxa(&["--config", c, "--data", d, "init", "--zone", "nova"], None, &[])?;
    assert!(!again.ok && again.stderr.contains("exists"), "init keeps an existing config: {}", again.stderr);

    // Every other command loads that file.
    let out = xarxa(&["--config", c, "--data", d, "status"], None, &[])?;
    assert!(out.ok, "status: {}", out.stderr);
    assert_eq!(out.json["zone"], json!("nova"), "{}", out.stdout);

    // A database written by a newer schema is refused, and left alone.
    {
        let db = sled::open(data.join("db"))?;
        db.open_tree("meta")?.insert("schema_version", &99u32.to_be_bytes())?;
        db.flush()?;
    }
    let out = xarxa(&["--config", c, "--data", d, "user", "list"], None, &[])?;
    assert!(!out.ok && out.stderr.contains("newer"), "the CLI says why: {}", out.stderr);
    let mut run = Command::new(xarxa_bin()?);
    run.args(["--config", c, "--data", d, "run", "--listen", "127.0.0.1:0"])
        .env("XARXA_MESH__LISTEN", "[\"/ip4/127.0.0.1/tcp/0\"]")
        .env("XARXA_MESH__MDNS", "false")
        .env("XARXA_TURN__LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = run.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("xarxa run started on a database from a newer schema");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
    assert!(!status.success() && stderr.contains("newer"), "run refuses with a reason: {stderr}");
    let db = sled::open(data.join("db"))?;
    assert_eq!(db.open_tree("meta")?.get("schema_version")?.as_deref(), Some(&99u32.to_be_bytes()[..]));
    Ok(())
}
