//! The web client, embedded in the binary: the page and stylesheet from
//! `client-wasm/static`, and the WebAssembly module with its JavaScript glue
//! built from `client-wasm/` by `build.rs`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

const INDEX: &str = include_str!("../../../client-wasm/static/index.html");
const CSS: &str = include_str!("../../../client-wasm/static/app.css");
const JS: &str = include_str!(concat!(env!("OUT_DIR"), "/web/xarxa_client.js"));
const WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/web/xarxa_client_bg.wasm"));

/// What the page may load: only this node's own files (and media from
/// WebRTC, which the policy does not govern).
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval' 'unsafe-inline'; \
                   style-src 'self'; img-src 'self' data:; connect-src 'self' wss: ws:; media-src 'self' blob: mediastream:";

fn asset(content_type: &'static str, body: impl IntoResponse) -> Response {
    ([(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache"), (X_CONTENT_TYPE_OPTIONS, "nosniff")], body)
        .into_response()
}

/// # `GET /`
pub async fn index(State(s): State<Arc<AppState>>) -> Response {
    let zone = s.accounts.zone().as_str();
    let page = INDEX.replace("__ZONE__", zone).replace("__VERSION__", env!("CARGO_PKG_VERSION"));
    let mut resp = asset("text/html; charset=utf-8", page);
    if let Ok(v) = CSP.parse() {
        resp.headers_mut().insert(CONTENT_SECURITY_POLICY, v);
    }
    resp
}

/// # `GET /app.css`
pub async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

/// # `GET /pkg/xarxa_client.js`
pub async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

/// # `GET /pkg/xarxa_client_bg.wasm`
pub async fn wasm() -> Response {
    asset("application/wasm", WASM)
}
