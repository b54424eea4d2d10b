//! HTTP: the HTTPS client that trusts exactly a node's certificate, and the
//! helpers on [`Node`] for the HTTP API (accounts, sessions, history,
//! notices), with the answers they give ([`Reply`], [`Session`], [`User`]).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use signalling::{CallId, HistoryEntry, Notice};

use crate::{init_crypto, Node, PASSWORD, WAIT};

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

impl Node {
    /// `https://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr())
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

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> Result<Reply> {
        self.send(reqwest::Method::PUT, path, token, Some(Body::Json(body))).await
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
