//! The contacts and presence routes (`docs/api.md`): thin handlers over
//! [`crate::services::contacts`] and [`crate::services::presence`].
//! Every route acts for the authenticated user only: a user reads and
//! changes their own contacts, and sees the presence of accepted
//! contacts, never anyone else's.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use signalling::contacts::{Availability, Contact, Presence, MAX_STATUS_CHARS};

use crate::api::http::{ApiError, ApiJson, ApiPath, Auth};
use crate::state::AppState;
use crate::store::PresenceSetting;

/// The routes of this module.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/contacts", get(list).post(ask))
        .route("/api/v1/contacts/{address}", axum::routing::delete(remove))
        .route("/api/v1/contacts/{address}/accept", post(accept))
        .route("/api/v1/contacts/{address}/deny", post(deny))
        .route("/api/v1/presence", get(own).put(set))
}

/// # `GET /api/v1/contacts`
async fn list(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Result<Json<serde_json::Value>, ApiError> {
    let contacts: Vec<Contact> = s.contacts.list(&a.user.name).await?;
    Ok(Json(json!({ "contacts": contacts })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AskBody {
    address: String,
}

/// # `POST /api/v1/contacts`
async fn ask(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiJson(b): ApiJson<AskBody>,
) -> Result<impl IntoResponse, ApiError> {
    let to = s.contacts.parse(&b.address)?;
    let state = s.contacts.ask(&a.user.name, &to).await?;
    Ok((StatusCode::CREATED, Json(json!({ "address": to, "state": state }))))
}

/// # `POST /api/v1/contacts/{address}/accept`
async fn accept(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(address): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let from = s.contacts.parse(&address)?;
    s.contacts.accept(&a.user.name, &from).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// # `POST /api/v1/contacts/{address}/deny`
async fn deny(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(address): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let from = s.contacts.parse(&address)?;
    s.contacts.deny(&a.user.name, &from).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// # `DELETE /api/v1/contacts/{address}`
async fn remove(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiPath(address): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let other = s.contacts.parse(&address)?;
    s.contacts.remove(&a.user.name, &other).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// # `GET /api/v1/presence`
async fn own(State(s): State<Arc<AppState>>, Auth(a): Auth) -> Json<Presence> {
    Json(s.presence.own(a.user.name).await)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetBody {
    availability: Availability,
    #[serde(default)]
    status: String,
}

/// # `PUT /api/v1/presence`
async fn set(
    State(s): State<Arc<AppState>>,
    Auth(a): Auth,
    ApiJson(b): ApiJson<SetBody>,
) -> Result<Json<Presence>, ApiError> {
    let status = b.status.trim().to_string();
    if status.chars().count() > MAX_STATUS_CHARS {
        return Err(ApiError::BadRequest(format!("status: at most {MAX_STATUS_CHARS} characters")));
    }
    if status.chars().any(char::is_control) {
        return Err(ApiError::BadRequest("status: no control characters".into()));
    }
    let setting = PresenceSetting { availability: b.availability, status };
    let presence = s.presence.set(&s.store, a.user.name, setting).await?;
    Ok(Json(presence))
}
