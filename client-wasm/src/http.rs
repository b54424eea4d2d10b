//! The node's HTTP API, with `fetch`.

use serde_json::Value;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Request, RequestInit, Response};

use crate::dom::window;

/// An answer: status and JSON body (`Null` when empty).
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Value,
}

impl Reply {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error message the node gave, or a generic one.
    pub fn message(&self) -> String {
        self.body["error"]["message"].as_str().map_or_else(|| format!("HTTP {}", self.status), str::to_owned)
    }
}

/// Sends a request to the node that served the page.
pub async fn call(method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Result<Reply, String> {
    let json = body.map(|b| wasm_bindgen::JsValue::from_str(&b.to_string()));
    let resp = fetch(method, path, token, json.as_ref(), body.is_some().then_some("application/json")).await?;
    reply(resp).await
}

/// Sends `blob` (a file the user picked) as the body.
pub async fn put_blob(path: &str, token: Option<&str>, blob: &web_sys::Blob) -> Result<Reply, String> {
    reply(fetch("PUT", path, token, Some(blob.as_ref()), None).await?).await
}

/// Fetches `path` as a blob (an image), `None` unless 200.
pub async fn get_blob(path: &str, token: Option<&str>) -> Option<web_sys::Blob> {
    let resp = fetch("GET", path, token, None, None).await.ok()?;
    if resp.status() != 200 {
        return None;
    }
    JsFuture::from(resp.blob().ok()?).await.ok()?.dyn_into().ok()
}

async fn fetch(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&wasm_bindgen::JsValue>,
    content_type: Option<&str>,
) -> Result<Response, String> {
    let opts = RequestInit::new();
    opts.set_method(method);
    if let Some(b) = body {
        opts.set_body(b);
    }
    let req = Request::new_with_str_and_init(path, &opts).map_err(|_| "bad request".to_string())?;
    let headers = req.headers();
    if let Some(ct) = content_type {
        let _ = headers.set("Content-Type", ct);
    }
    if let Some(t) = token {
        let _ = headers.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = JsFuture::from(window().fetch_with_request(&req))
        .await
        .map_err(|_| "the node cannot be reached".to_string())?;
    resp.dyn_into().map_err(|_| "not a response".to_string())
}

async fn reply(resp: Response) -> Result<Reply, String> {
    let status = resp.status();
    let text = match resp.text() {
        Ok(p) => JsFuture::from(p).await.ok().and_then(|t| t.as_string()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    Ok(Reply { status, body })
}
