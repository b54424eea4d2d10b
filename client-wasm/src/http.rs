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
    let opts = RequestInit::new();
    opts.set_method(method);
    if let Some(b) = body {
        opts.set_body(&wasm_bindgen::JsValue::from_str(&b.to_string()));
    }
    let req = Request::new_with_str_and_init(path, &opts).map_err(|_| "bad request".to_string())?;
    let headers = req.headers();
    if body.is_some() {
        let _ = headers.set("Content-Type", "application/json");
    }
    if let Some(t) = token {
        let _ = headers.set("Authorization", &format!("Bearer {t}"));
    }
    let resp = JsFuture::from(window().fetch_with_request(&req))
        .await
        .map_err(|_| "the node cannot be reached".to_string())?;
    let resp: Response = resp.dyn_into().map_err(|_| "not a response".to_string())?;
    let status = resp.status();
    let text = match resp.text() {
        Ok(p) => JsFuture::from(p).await.ok().and_then(|t| t.as_string()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
    Ok(Reply { status, body })
}
