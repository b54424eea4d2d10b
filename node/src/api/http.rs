//! The HTTP API: thin handlers over the services. Routes are documented in
//! `docs/api.md`; each handler's doc names its route.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, State};
use axum::http::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use signalling::HistoryEntry;
use tracing::warn;

use crate::services::accounts::{AccountError, Authed};
use crate::services::calls::Command;
use crate::services::contacts::ContactError;
use crate::services::profiles::ProfileError;
use crate::state::AppState;
use crate::store::StoreError;

/// An API error: an HTTP status and a stable code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// From the accounts service.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// From the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// From the contacts service.
    #[error(transparent)]
    Contact(#[from] ContactError),
    /// From the profiles service.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// Malformed body, path or query.
    #[error("{0}")]
    BadRequest(String),
    /// The body is over the limit.
    #[error("request body too large")]
    TooLarge,
    /// No such thing (for this user).
    #[error("not found")]
    NotFound,
    /// The route exists, but not for this method.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The node is at its limit of connections.
    #[error("{0}")]
    Unavailable(&'static str),
    /// Not for this client, whoever it is.
    #[error("{0}")]
    Forbidden(&'static str),
}

impl ApiError {
    fn status_code(&self) -> (StatusCode, &'static str) {
        use AccountError as A;
        match self {
            Self::Account(A::InvalidName(_) | A::WrongZone(_)) => (StatusCode::BAD_REQUEST, "invalid_name"),
            Self::Account(A::WeakPassword) => (StatusCode::BAD_REQUEST, "weak_password"),
            Self::Account(A::NameTaken) => (StatusCode::CONFLICT, "name_taken"),
            Self::Account(A::RegistrationClosed) => (StatusCode::FORBIDDEN, "registration_closed"),
            Self::Account(A::InvalidInvite) => (StatusCode::FORBIDDEN, "invalid_invite"),
            Self::Account(A::InvalidCredentials) => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            Self::Account(A::InvalidToken) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Self::Account(A::RateLimited(_)) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Account(A::NotFound) | Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::Contact(e) => contact_status(e),
            Self::Profile(e) => profile_status(e),
            Self::Account(_) | Self::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

fn contact_status(e: &ContactError) -> (StatusCode, &'static str) {
    use ContactError as C;
    match e {
        C::InvalidAddress(_) => (StatusCode::BAD_REQUEST, "invalid_address"),
        C::OwnAddress => (StatusCode::BAD_REQUEST, "own_address"),
        C::UnknownUser => (StatusCode::NOT_FOUND, "unknown_user"),
        C::UnknownZone => (StatusCode::NOT_FOUND, "unknown_zone"),
        C::Unreachable(_) => (StatusCode::BAD_GATEWAY, "unreachable"),
        C::Refused(_) => (StatusCode::BAD_GATEWAY, "refused"),
        C::AlreadyContact => (StatusCode::CONFLICT, "already_contact"),
        C::AlreadyRequested => (StatusCode::CONFLICT, "already_requested"),
        C::Busy => (StatusCode::CONFLICT, "busy"),
        C::NoSuchRequest => (StatusCode::NOT_FOUND, "no_such_request"),
        C::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        C::Full(_) => (StatusCode::FORBIDDEN, "limit_reached"),
        C::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        C::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

fn profile_status(e: &ProfileError) -> (StatusCode, &'static str) {
    use ProfileError as P;
    match e {
        P::TooLong(_) | P::ControlCharacters(_) => (StatusCode::BAD_REQUEST, "bad_request"),
        P::BadImage => (StatusCode::BAD_REQUEST, "bad_image"),
        P::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        P::NotVisible => (StatusCode::NOT_FOUND, "not_found"),
        P::Unreachable(_) => (StatusCode::BAD_GATEWAY, "unreachable"),
        P::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            warn!(error = %self, "internal error");
            "internal error".to_string()
        } else {
            self.to_string()
        };
        let mut resp = (status, Json(json!({"error": {"code": code, "message": message}}))).into_response();
        if let Self::Account(AccountError::RateLimited(after)) | Self::Contact(ContactError::RateLimited(after)) = &self
        {
            if let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string()) {
                resp.headers_mut().insert(RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::TooLarge
        } else {
            Self::BadRequest(r.body_text())
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        Self::BadRequest(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::BadRequest(r.body_text())
    }
}

/// A JSON body whose rejection is a typed [`ApiError`].
#[derive(FromRequest)]
#[from_request(via(Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// A path parameter whose rejection is a typed [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// A query string whose rejection is a typed [`ApiError`].
#[derive(FromRequestParts)]
#[from_request(via(Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// The authenticated caller, from `Authorization: Bearer <token>`.
pub struct Auth(pub Authed);

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).ok_or(AccountError::InvalidToken)?;
        Ok(Auth(state.accounts.authenticate(token)?))
    }
}

/// The token of `Authorization: Bearer <token>`, trimmed, if sent.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Every route of the node.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.limits.max_body_bytes;
    Router::new()
        .route("/", get(crate::api::web::index))
        .route("/app.css", get(crate::api::web::css))
        .route("/pkg/xarxa_client.js", get(crate::api::web::js))
        .route("/pkg/xarxa_client_bg.wasm", get(crate::api::web::wasm))
        .route("/health", get(health))
        .route("/metrics", get(crate::api::metrics::metrics))
        .route("/api/v1/register", post(register))
        .route("/api/v1/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/me", get(me))
        .route("/api/v1/sessions", get(sessions))
        .route("/api/v1/sessions/{id}", delete(revoke_session))
        .route("/api/v1/password", post(change_password))
        .route("/api/v1/history", get(history).delete(clear_history))
        .route("/api/v1/history/{id}", delete(delete_history))
        .route("/api/v1/invites", get(list_invites).post(create_invite))
        .route("/api/v1/notices", get(notices))
        .route("/api/v1/notices/{id}/read", post(read_notice))
        .merge(crate::api::contacts::routes())
        .merge(crate::api::profiles::routes())
        .route("/api/v1/ws", get(crate::api::ws::upgrade))
        .route("/api/v1/ice", get(ice_servers))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// # `GET /health`
async fn health(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "zone": s.accounts.zone().as_str(), "version": env!("CARGO_PKG_VERSION")}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    name: String,
    password: String,
    #[serde(default)]
    invite: Option<String>,
}

/// # `POST /api/v1/register`
async fn register(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(b): ApiJson<RegisterBody>,
) -> Result<impl IntoResponse, ApiError> {
    let user = s.accounts.register(&b.name, &b.password, b.invite.as_deref(), peer.ip()).await?;
    if let Some(mesh) = &s.mesh {
        mesh.publish_user(user.name.clone()).await;
    }
    Ok((StatusCode::CREATED, Json(json!({"user": user}))))
}

/// Longest device label a login may give, in characters.
pub const MAX_DEVICE_LABEL: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    name: String,
    password: String,
    #[serde(default)]
    device: Option<String>,
}

/// # `POST /api/v1/login`
async fn login(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(b): ApiJson<LoginBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let device = b.device.as_deref().unwrap_or("");
    if device.chars().count() > MAX_DEVICE_LABEL {
        return Err(ApiError::BadRequest(format!("device: at most {MAX_DEVICE_LABEL} characters")));
    }
    let (login, revoked) = s.accounts.login(&b.name, &b.password, device, peer.ip()).await?;
    if !revoked.is_empty() {
        s.calls.send(Command::SessionsRevoked { ids: revoked }).await;
    }
    Ok(Json(json!({
        "token": login.token,
        "session": login.session.id,
        "user": format!("{}@{}", login.session.user, s.accounts.zone()),
        "expires_at_ms": login.session.expires_at_ms,
    })))
}

/// # `POST /api/v1/logout`
async fn logout(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<StatusCode, ApiError> {
    s.accounts.revoke(&a.user.name, &a.session.id).await?;
    s.calls.send(Command::SessionsRevoked { ids: vec![a.session.id] }).await;
    Ok(StatusCode::NO_CONTENT)
}

/// # `GET /api/v1/me`
async fn me(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Json<serde_json::Value>, ApiError> {
    let rec = s.store.user(a.user.name.as_str())?.ok_or(AccountError::InvalidToken)?;
    Ok(Json(json!({"user": a.user, "zone": s.accounts.zone().as_str(), "created_at_ms": rec.created_at_ms,
                    "admin": rec.admin})))
}

/// The caller, if an administrator of the zone; `forbidden` otherwise.
fn admin_of(s: &AppState, a: &Authed) -> Result<(), ApiError> {
    match s.store.user(a.user.name.as_str())? {
        Some(rec) if rec.admin => Ok(()),
        Some(_) => Err(ApiError::Forbidden("only an administrator of the zone may do this")),
        None => Err(AccountError::InvalidToken.into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    uses: u32,
}

/// Most registrations one invite code may allow.
const MAX_INVITE_USES: u32 = 1000;

/// # `POST /api/v1/invites` (administrators)
/// Makes an invite code: `{"uses": 5}` → 201 `{"code": "…", "uses": 5}`.
async fn create_invite(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiJson(b): ApiJson<InviteBody>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    admin_of(&s, &a)?;
    if b.uses == 0 || b.uses > MAX_INVITE_USES {
        return Err(ApiError::BadRequest(format!("uses must be 1 to {MAX_INVITE_USES}")));
    }
    let code = s.accounts.create_invite(b.uses).await?;
    Ok((StatusCode::CREATED, Json(json!({"code": code, "uses": b.uses}))))
}

/// # `GET /api/v1/invites` (administrators)
/// The invite codes with the registrations each still allows.
async fn list_invites(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Json<serde_json::Value>, ApiError> {
    admin_of(&s, &a)?;
    let list: Vec<serde_json::Value> =
        s.store.invites()?.into_iter().map(|(code, r)| json!({"code": code, "uses_left": r.uses_left})).collect();
    Ok(Json(json!({"invites": list})))
}

#[derive(Serialize)]
struct SessionView {
    id: String,
    device: String,
    created_at_ms: u64,
    last_used_at_ms: u64,
    expires_at_ms: u64,
    current: bool,
}

/// # `GET /api/v1/sessions`
async fn sessions(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Json<serde_json::Value>, ApiError> {
    let list: Vec<SessionView> = s
        .accounts
        .sessions(&a.user.name)?
        .into_iter()
        .map(|r| SessionView {
            current: r.id == a.session.id,
            id: r.id,
            device: r.device,
            created_at_ms: r.created_at_ms,
            last_used_at_ms: r.last_used_at_ms,
            expires_at_ms: r.expires_at_ms,
        })
        .collect();
    Ok(Json(json!({ "sessions": list })))
}

/// # `DELETE /api/v1/sessions/{id}`
async fn revoke_session(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    s.accounts.revoke(&a.user.name, &id).await?;
    s.calls.send(Command::SessionsRevoked { ids: vec![id] }).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordBody {
    old: String,
    new: String,
}

/// # `POST /api/v1/password`
async fn change_password(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiJson(b): ApiJson<PasswordBody>,
) -> Result<StatusCode, ApiError> {
    let revoked = s.accounts.change_password(&a, &b.old, &b.new).await?;
    s.calls.send(Command::SessionsRevoked { ids: revoked }).await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    before: Option<u64>,
}

#[derive(Serialize)]
struct HistoryPage {
    entries: Vec<HistoryEntry>,
    next: Option<u64>,
}

/// # `GET /api/v1/history?limit=&before=`
async fn history(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 200 {
        return Err(ApiError::BadRequest("limit must be 1 to 200".into()));
    }
    let mut entries = s.store.history(a.user.name.as_str(), q.before, limit + 1)?;
    let next = if entries.len() > limit {
        entries.truncate(limit);
        entries.last().map(|e| e.id)
    } else {
        None
    };
    Ok(Json(HistoryPage { entries, next }))
}

/// # `DELETE /api/v1/history/{id}`
async fn delete_history(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<u64>,
) -> Result<StatusCode, ApiError> {
    if !s.store.delete_history(a.user.name.as_str(), id)? {
        return Err(ApiError::NotFound);
    }
    s.store.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// # `DELETE /api/v1/history`
async fn clear_history(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<StatusCode, ApiError> {
    s.store.clear_history(a.user.name.as_str())?;
    s.store.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoticesQuery {
    #[serde(default)]
    all: bool,
}

/// # `GET /api/v1/notices?all=`
async fn notices(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiQuery(q): ApiQuery<NoticesQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let list = s.store.notices(a.user.name.as_str(), q.all)?;
    Ok(Json(json!({ "notices": list })))
}

/// # `POST /api/v1/notices/{id}/read`
async fn read_notice(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(id): ApiPath<u64>,
) -> Result<StatusCode, ApiError> {
    if !s.store.mark_notice_read(a.user.name.as_str(), id)? {
        return Err(ApiError::NotFound);
    }
    s.store.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The host part of a `Host` header or URI authority (`[::1]:8443` →
/// `[::1]`, `node.example:8443` → `node.example`), if it is a plain host
/// name or IP literal.
fn host_part(authority: &str) -> Option<&str> {
    let host = if authority.starts_with('[') {
        &authority[..=authority.find(']')?]
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let ok =
        !host.is_empty() && host.len() <= 253 && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    ok.then_some(host)
}

/// # `GET /api/v1/ice`
///
/// ICE servers for the caller's `RTCPeerConnection`: this node's STUN and
/// TURN with time-limited credentials (never the secret).
async fn ice_servers(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(turn) = &s.turn else {
        return Ok(Json(json!({"ice_servers": [], "ttl_s": 0})));
    };
    let authority = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let host = match &s.config.turn.public_host {
        Some(h) => h.as_str(),
        None => host_part(authority).ok_or_else(|| ApiError::BadRequest("no usable Host header".into()))?,
    };
    let port = turn.local_addr().port();
    let creds = turn.credentials(a.user.name.as_str());
    Ok(Json(json!({
        "ice_servers": [{
            "urls": [format!("stun:{host}:{port}"), format!("turn:{host}:{port}?transport=udp")],
            "username": creds.username,
            "credential": creds.password,
        }],
        "ttl_s": turn.credential_ttl().as_secs(),
    })))
}
