//! `GET /metrics`: the node's figures in the Prometheus text format
//! ([`crate::metrics`]), for loopback scrapers, or for any scraper that
//! sends the configured token.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use sha2::{Digest, Sha256};

use crate::api::http::{bearer, ApiError};
use crate::metrics::{encode, Snapshot, CONTENT_TYPE as OPENMETRICS};
use crate::services::accounts::AccountError;
use crate::state::AppState;

/// Whether this request may scrape: the token when one is configured
/// (compared by digest, so the comparison's time tells nothing of the
/// token), else a loopback client.
fn allowed(s: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ApiError> {
    let m = &s.config.metrics;
    if !m.enabled {
        return Err(ApiError::NotFound);
    }
    match &m.token {
        Some(token) => {
            let sent = bearer(headers).ok_or(AccountError::InvalidToken)?;
            if Sha256::digest(sent) != Sha256::digest(token) {
                return Err(AccountError::InvalidToken.into());
            }
            Ok(())
        }
        // `to_canonical`: an IPv4 client on a dual-stack socket is ::ffff:a.b.c.d.
        None if peer.ip().to_canonical().is_loopback() => Ok(()),
        None => Err(ApiError::Forbidden("metrics are served to this machine only (set metrics.token)")),
    }
}

/// # `GET /metrics`
pub async fn metrics(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    allowed(&s, peer, &headers)?;
    let (users, sessions) = s.store.counts();
    let snap = Snapshot {
        websockets: s.config.limits.max_connections.saturating_sub(s.connections.available_permits()),
        calls: s.calls.stats().await,
        users,
        sessions,
        database_bytes: s.store.size_on_disk()?,
        mesh: match &s.mesh {
            Some(m) => Some(m.status().await),
            None => None,
        },
        turn: s.turn.as_ref().map(crate::media::turn::Turn::stats),
    };
    Ok(([(CONTENT_TYPE, OPENMETRICS)], encode(&s.metrics, &snap)))
}
