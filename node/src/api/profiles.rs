//! The profile routes (`docs/api.md`): the caller's own profile and
//! avatar, and those of their accepted contacts. Avatars are served only
//! as the image type sniffed when they were set, with `nosniff` and a CSP
//! that forbids everything, so no avatar can act as a page or a script.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use signalling::profiles::Profile;

use crate::api::http::{ApiError, ApiJson, ApiPath, ApiQuery, Auth};
use crate::state::AppState;
use crate::store::Avatar;

/// The routes of this module.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/profile", get(own).put(update))
        .route("/api/v1/profile/avatar", get(own_avatar).put(set_avatar).delete(clear_avatar))
        .route("/api/v1/contacts/{address}/profile", get(of))
        .route("/api/v1/contacts/{address}/avatar", get(avatar_of))
}

/// # `GET /api/v1/profile`
async fn own(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Json<Profile>, ApiError> {
    Ok(Json(s.profiles.own(&a.user.name)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    nickname: String,
    #[serde(default)]
    description: String,
}

/// # `PUT /api/v1/profile`
async fn update(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiJson(b): ApiJson<UpdateBody>,
) -> Result<Json<Profile>, ApiError> {
    Ok(Json(s.profiles.update(&a.user.name, &b.nickname, &b.description).await?))
}

/// # `PUT /api/v1/profile/avatar` (the image's bytes as the body)
async fn set_avatar(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Profile>, ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge
        } else {
            ApiError::BadRequest(r.body_text())
        }
    })?;
    Ok(Json(s.profiles.set_avatar(&a.user.name, Some(&bytes)).await?))
}

/// # `DELETE /api/v1/profile/avatar`
async fn clear_avatar(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Json<Profile>, ApiError> {
    Ok(Json(s.profiles.set_avatar(&a.user.name, None).await?))
}

/// # `GET /api/v1/profile/avatar`
async fn own_avatar(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Response, ApiError> {
    Ok(image(s.profiles.own_avatar(&a.user.name)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OfQuery {
    /// The version last seen in the contact's presence.
    #[serde(default)]
    v: u64,
}

/// # `GET /api/v1/contacts/{address}/profile?v=`
async fn of(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(address): ApiPath<String>,
    ApiQuery(q): ApiQuery<OfQuery>,
) -> Result<Json<Profile>, ApiError> {
    let of = s.contacts.parse(&address)?;
    Ok(Json(s.profiles.of(&a.user.name, &of, q.v).await?))
}

/// # `GET /api/v1/contacts/{address}/avatar`
async fn avatar_of(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(address): ApiPath<String>,
) -> Result<Response, ApiError> {
    let of = s.contacts.parse(&address)?;
    Ok(image(s.profiles.avatar_of(&a.user.name, &of).await?))
}

/// An avatar as a response that can only ever be an image.
fn image(a: Avatar) -> Response {
    let mut resp = a.data.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_str(&a.mime).unwrap_or(HeaderValue::from_static("image/png")));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'; sandbox"));
    h.insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("inline; filename=\"avatar\""));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=60"));
    resp
}
