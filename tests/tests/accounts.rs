//! Accounts and sessions over HTTPS (spec item 1): register, log in, wrong
//! passwords and their rate limit, sessions list and revoke, log out,
//! change password, and the HTTP errors of `docs/api.md`.
//!
//! One node serves most tests of this file (each with its own users); the
//! per-address limit and the admin-only policy get their own nodes.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use anyhow::Result;
use serde_json::json;
use signalling::{ClientToNode, ErrorCode};
use xarxa_tests::{check_error, Node, PASSWORD, WAIT};

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        Node::start(
            "comptes",
            &[
                ("XARXA_LIMITS__LOGIN_FAILURES_PER_ACCOUNT", "5"),
                ("XARXA_LIMITS__LOGIN_FAILURES_PER_ADDRESS", "100000"),
                ("XARXA_LIMITS__REGISTRATIONS_PER_ADDRESS", "100000"),
            ],
        )
        .expect("starting the accounts node")
    })
}

#[tokio::test]
async fn health_and_web_page() -> Result<()> {
    let n = node();
    let h = n.get("/health", None).await?.expect_status(200)?;
    assert_eq!(h.body["status"], "ok", "{}", h.body);
    assert_eq!(h.body["zone"], "comptes", "{}", h.body);
    let version = h.body["version"].as_str().expect("health names the version").to_owned();
    assert_eq!(version, n.info().version);
    assert_eq!(n.info().zone, "comptes");

    let page = n.get("/", None).await?.expect_status(200)?;
    assert!(page.content_type.as_deref().unwrap_or("").starts_with("text/html"), "{:?}", page.content_type);
    let html = page.body.as_str().unwrap_or_default();
    assert!(html.contains("comptes") && html.contains(&version), "the page should name zone and version: {html}");
    n.get("/api/v1/no-such-route", None).await?.expect_status(404)?;
    Ok(())
}

#[tokio::test]
async fn register_login_and_me() -> Result<()> {
    let n = node();
    // Names are case folded.
    n.register("Ac-Dora", PASSWORD).await?;
    let s = n.login_session("ac-dora", PASSWORD, Some("Firefox on laptop")).await?;
    assert!(s.token.starts_with("xt_"), "token {:?} should start with xt_", s.token);
    assert_eq!(s.user, "ac-dora@comptes");
    assert!(s.expires_at_ms > xarxa_tests::now_ms(), "session already expired: {s:?}");
    let me = n.get("/api/v1/me", Some(&s.token)).await?.expect_status(200)?;
    assert_eq!((me.body["user"].as_str(), me.body["zone"].as_str()), (Some("ac-dora@comptes"), Some("comptes")));
    assert!(me.body["created_at_ms"].as_u64().is_some_and(|t| t <= xarxa_tests::now_ms()), "{}", me.body);
    // `name@zone` and upper case log in too.
    n.login("ac-dora@comptes", PASSWORD).await?;
    n.login("AC-DORA", PASSWORD).await?;
    Ok(())
}

#[tokio::test]
async fn duplicate_name_is_409() -> Result<()> {
    let n = node();
    n.register("ac-dup", PASSWORD).await?;
    n.try_register("ac-dup", "another password").await?.expect_error(409, "name_taken")?;
    n.try_register("AC-DUP", "another password").await?.expect_error(409, "name_taken")?;
    // The first account is unchanged.
    n.login("ac-dup", PASSWORD).await?;
    Ok(())
}

#[tokio::test]
async fn bad_names_passwords_and_bodies_are_400() -> Result<()> {
    let n = node();
    for name in ["", "-starts-with-dash", "has space", "ümlaut", "a@b", &"x".repeat(33)] {
        let r = n.try_register(name, PASSWORD).await?;
        r.expect_error(400, "invalid_name").map_err(|e| e.context(format!("name {name:?}")))?;
    }
    n.try_register("ac-shortpw", "1234567").await?.expect_error(400, "weak_password")?;
    n.try_register("ac-longpw", &"p".repeat(1025)).await?.expect_error(400, "weak_password")?;
    n.register(&"a".repeat(32), "12345678").await?; // both at their limits
    n.post_raw("/api/v1/register", None, "{\"name\": \"ac-x\", ").await?.expect_error(400, "bad_request")?;
    n.post("/api/v1/register", None, json!({"name": 5})).await?.expect_error(400, "bad_request")?;
    n.post_raw("/api/v1/login", None, "not json").await?.expect_error(400, "bad_request")?;
    let huge = format!("{{\"name\":\"ac-huge\",\"password\":\"{}\"}}", "p".repeat(200 * 1024));
    // The node answers 413 as soon as the limit is passed and closes the
    // connection without reading the rest, so the client may still be
    // writing and see a broken pipe instead of the answer (HTTP/1.1 allows
    // this). It must get the 413 within a few tries.
    let mut tries = 0;
    loop {
        match n.post_raw("/api/v1/register", None, huge.clone()).await {
            Ok(resp) => {
                resp.expect_error(413, "too_large")?;
                break;
            }
            Err(e) if tries < 4 && format!("{e:#}").contains("Broken pipe") => tries += 1,
            Err(e) => return Err(e),
        }
    }
    n.assert_alive().await?;
    Ok(())
}

/// Every error is the documented JSON shape with a stable code: a wrong
/// method, a WebSocket route asked without the upgrade, a free-text field
/// over its bound (issue 18's edges).
#[tokio::test]
async fn edges_answer_in_the_documented_json_shape() -> Result<()> {
    let n = node();
    n.delete("/api/v1/login", None).await?.expect_error(405, "method_not_allowed")?;
    n.post("/health", None, json!({})).await?.expect_error(405, "method_not_allowed")?;
    n.get("/api/v1/ws", None).await?.expect_error(400, "bad_request")?;
    n.register("ac-label", PASSWORD).await?;
    let long =
        n.post("/api/v1/login", None, json!({"name": "ac-label", "password": PASSWORD, "device": "d".repeat(60_000)}));
    long.await?.expect_error(400, "bad_request")?;
    let ok =
        n.post("/api/v1/login", None, json!({"name": "ac-label", "password": PASSWORD, "device": "d".repeat(100)}));
    assert_eq!(ok.await?.status, 200, "a label at its bound is fine");
    n.assert_alive().await?;
    Ok(())
}

#[tokio::test]
async fn wrong_password_and_unknown_user_look_the_same() -> Result<()> {
    let n = node();
    n.register("ac-erin", PASSWORD).await?;
    let wrong = n.try_login("ac-erin", "not the password", None).await?.expect_error(401, "invalid_credentials")?;
    let unknown = n.try_login("ac-nobody", PASSWORD, None).await?.expect_error(401, "invalid_credentials")?;
    assert_eq!(wrong.body, unknown.body, "the answer must not tell whether the user exists");
    n.login("ac-erin", PASSWORD).await?;
    Ok(())
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_account() -> Result<()> {
    let n = node();
    n.register("ac-fred", PASSWORD).await?;
    n.register("ac-gina", PASSWORD).await?;
    for i in 0..5 {
        let r = n.try_login("ac-fred", &format!("wrong {i}"), None).await?;
        r.expect_error(401, "invalid_credentials").map_err(|e| e.context(format!("failure {}", i + 1)))?;
    }
    // Past the limit even the right password is refused, with Retry-After.
    let r = n.try_login("ac-fred", PASSWORD, None).await?.expect_error(429, "rate_limited")?;
    let secs: u64 = r.retry_after.as_deref().unwrap_or("").parse().unwrap_or(0);
    assert!(secs > 0, "429 should carry Retry-After in seconds, got {:?}", r.retry_after);
    n.try_login("ac-fred@comptes", PASSWORD, None).await?.expect_error(429, "rate_limited")?;
    // Another account is not affected.
    n.login("ac-gina", PASSWORD).await?;
    Ok(())
}

#[tokio::test]
async fn failed_logins_are_rate_limited_per_address() -> Result<()> {
    let n = Node::start("adreca", &[("XARXA_LIMITS__LOGIN_FAILURES_PER_ADDRESS", "20")])?;
    n.register("hana", PASSWORD).await?;
    // 20 failures over 20 different (unknown) accounts: no account reaches its own limit.
    for i in 0..20 {
        let r = n.try_login(&format!("ghost{i}"), "whatever pw", None).await?;
        r.expect_error(401, "invalid_credentials").map_err(|e| e.context(format!("failure {}", i + 1)))?;
    }
    n.try_login("hana", PASSWORD, None).await?.expect_error(429, "rate_limited")?;
    Ok(())
}

#[tokio::test]
async fn sessions_are_listed_and_revocable() -> Result<()> {
    let n = node();
    n.register("ac-ivan", PASSWORD).await?;
    n.register("ac-jade", PASSWORD).await?;
    let laptop = n.login_session("ac-ivan", PASSWORD, Some("laptop")).await?;
    let phone = n.login_session("ac-ivan", PASSWORD, Some("phone")).await?;
    let jade = n.login_session("ac-jade", PASSWORD, Some("jade's")).await?;

    let r = n.get("/api/v1/sessions", Some(&laptop.token)).await?.expect_status(200)?;
    let list = r.body["sessions"].as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 2, "ivan has two sessions: {}", r.body);
    let find = |id: &str| list.iter().find(|s| s["id"] == id).cloned();
    let l = find(&laptop.session).expect("the laptop session is listed");
    let p = find(&phone.session).expect("the phone session is listed");
    assert_eq!((l["device"].as_str(), l["current"].as_bool()), (Some("laptop"), Some(true)), "{l}");
    assert_eq!((p["device"].as_str(), p["current"].as_bool()), (Some("phone"), Some(false)), "{p}");
    for s in [&l, &p] {
        for field in ["created_at_ms", "last_used_at_ms", "expires_at_ms"] {
            assert!(s[field].is_u64(), "session lacks {field}: {s}");
        }
    }
    assert!(!r.body.to_string().contains(&laptop.token), "the session list must not show tokens");

    // The phone has a socket open; revoking its session from the laptop closes it.
    let mut ws = n.device(&phone.token, "ivan/phone").await?;
    // Someone else's session id is not found.
    n.delete(&format!("/api/v1/sessions/{}", jade.session), Some(&laptop.token))
        .await?
        .expect_error(404, "not_found")?;
    n.get("/api/v1/me", Some(&jade.token)).await?.expect_status(200)?;
    n.delete(&format!("/api/v1/sessions/{}", phone.session), Some(&laptop.token)).await?.expect_status(204)?;
    ws.expect_closed(WAIT).await?;
    n.get("/api/v1/me", Some(&phone.token)).await?.expect_error(401, "invalid_token")?;
    let mut d = n.connect("ivan/phone again").await?;
    let id = d.next_id();
    let r = d.request(ClientToNode::Hello { id, version: 1, token: phone.token.clone(), resume: None }).await?;
    check_error("ivan/phone again", &r, ErrorCode::InvalidToken, Some(id))?;
    n.get("/api/v1/me", Some(&laptop.token)).await?.expect_status(200)?;
    let r = n.get("/api/v1/sessions", Some(&laptop.token)).await?.expect_status(200)?;
    assert_eq!(r.body["sessions"].as_array().map(Vec::len), Some(1), "{}", r.body);
    n.delete(&format!("/api/v1/sessions/{}", phone.session), Some(&laptop.token))
        .await?
        .expect_error(404, "not_found")?;
    Ok(())
}

#[tokio::test]
async fn logout_ends_the_session_and_its_sockets() -> Result<()> {
    let n = node();
    n.register("ac-kim", PASSWORD).await?;
    let a = n.login_session("ac-kim", PASSWORD, None).await?;
    let b = n.login_session("ac-kim", PASSWORD, None).await?;
    let mut ws = n.device(&a.token, "kim/a").await?;
    n.post("/api/v1/logout", Some(&a.token), json!({})).await?.expect_status(204)?;
    ws.expect_closed(WAIT).await?;
    n.get("/api/v1/me", Some(&a.token)).await?.expect_error(401, "invalid_token")?;
    n.post("/api/v1/logout", Some(&a.token), json!({})).await?.expect_error(401, "invalid_token")?;
    n.get("/api/v1/me", Some(&b.token)).await?.expect_status(200)?;
    Ok(())
}

#[tokio::test]
async fn changing_the_password_ends_other_sessions() -> Result<()> {
    let n = node();
    n.register("ac-lou", PASSWORD).await?;
    let here = n.login_session("ac-lou", PASSWORD, Some("here")).await?;
    let other = n.login_session("ac-lou", PASSWORD, Some("other")).await?;
    let mut ws = n.device(&other.token, "lou/other").await?;

    let body = json!({"old": "not my password", "new": "new password 1"});
    n.post("/api/v1/password", Some(&here.token), body).await?.expect_error(401, "invalid_credentials")?;
    let body = json!({"old": PASSWORD, "new": "short"});
    n.post("/api/v1/password", Some(&here.token), body).await?.expect_error(400, "weak_password")?;
    n.get("/api/v1/me", Some(&other.token)).await?.expect_status(200)?;

    let body = json!({"old": PASSWORD, "new": "new password 1"});
    n.post("/api/v1/password", Some(&here.token), body).await?.expect_status(204)?;
    ws.expect_closed(WAIT).await?;
    n.get("/api/v1/me", Some(&other.token)).await?.expect_error(401, "invalid_token")?;
    n.get("/api/v1/me", Some(&here.token)).await?.expect_status(200)?;
    n.try_login("ac-lou", PASSWORD, None).await?.expect_error(401, "invalid_credentials")?;
    n.login("ac-lou", "new password 1").await?;
    Ok(())
}

#[tokio::test]
async fn missing_or_bad_tokens_are_401() -> Result<()> {
    let n = node();
    for path in ["/api/v1/me", "/api/v1/sessions", "/api/v1/history", "/api/v1/notices"] {
        n.get(path, None).await?.expect_error(401, "invalid_token")?;
        n.get(path, Some("xt_forged")).await?.expect_error(401, "invalid_token")?;
        n.get(path, Some("")).await?.expect_error(401, "invalid_token")?;
    }
    n.post("/api/v1/logout", None, json!({})).await?.expect_error(401, "invalid_token")?;
    n.delete("/api/v1/history", Some("xt_forged")).await?.expect_error(401, "invalid_token")?;
    Ok(())
}

#[tokio::test]
async fn admin_only_registration_is_closed() -> Result<()> {
    let n = Node::start("tancada", &[("XARXA_REGISTRATION", "admin-only")])?;
    n.try_register("mia", PASSWORD).await?.expect_error(403, "registration_closed")?;
    n.try_login("mia", PASSWORD, None).await?.expect_error(401, "invalid_credentials")?;
    Ok(())
}
