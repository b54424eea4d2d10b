//! The home screen's history card (calls, newest first, each deletable)
//! and missed-call card (call back, dismiss).

use signalling::{ClientToNode, HistoryEntry, Notice};

use crate::app;
use crate::dom::{self, el, show};
use crate::http;
use crate::text as say;

/// Loads the call history (and the missed-call notices) into the page.
pub async fn load_history() {
    let token = app::token();
    let Ok(r) = http::call("GET", "/api/v1/history?limit=50", token.as_deref(), None).await else { return };
    if r.status == 401 {
        return app::signed_out("Your session has ended. Please log in again.");
    }
    let entries: Vec<HistoryEntry> = serde_json::from_value(r.body["entries"].clone()).unwrap_or_default();
    let list = el("history-list");
    list.set_inner_html("");
    show("history-empty", entries.is_empty());
    for e in entries {
        let li = dom::make("li", "", "");
        let _ = li.set_attribute("data-call", &e.call.0);
        let kind = say::history_kind(e.kind);
        let _ = li.append_child(&dom::make("span", &format!("kind {kind}"), kind));
        let _ = li.append_child(&dom::make("span", "who", &e.peer.to_string()));
        let _ = li.append_child(&dom::make("span", "when", &dom::local_time(e.started_at_ms)));
        let _ = li.append_child(&dom::make("span", "what", &say::outcome(e.outcome, e.duration_ms)));
        let del = dom::make("button", "link", "Delete");
        let id = e.id;
        dom::listen(del.as_ref(), "click", move |_| {
            wasm_bindgen_futures::spawn_local(async move {
                let token = app::token();
                let _ = http::call("DELETE", &format!("/api/v1/history/{id}"), token.as_deref(), None).await;
                load_history().await;
            });
        });
        let _ = li.append_child(&del);
        let _ = list.append_child(&li);
    }
    load_notices().await;
}

/// Loads the unread missed-call notices.
async fn load_notices() {
    let token = app::token();
    let Ok(r) = http::call("GET", "/api/v1/notices", token.as_deref(), None).await else { return };
    let notices: Vec<Notice> = serde_json::from_value(r.body["notices"].clone()).unwrap_or_default();
    render_notices(&notices);
}

/// Shows `notices` in the missed-calls card.
fn render_notices(notices: &[Notice]) {
    let list = el("notice-list");
    list.set_inner_html("");
    show("notices-card", !notices.is_empty());
    for n in notices {
        let li = dom::make("li", "", "");
        let _ = li.append_child(&dom::make("span", "kind missed", "missed"));
        let _ = li.append_child(&dom::make("span", "who", &n.from.to_string()));
        let _ = li.append_child(&dom::make("span", "when", &dom::local_time(n.at_ms)));
        let back = dom::make("button", "link", "Call back");
        let from = n.from.to_string();
        dom::listen(back.as_ref(), "click", move |_| {
            app::call_to(&from, false);
        });
        let _ = li.append_child(&back);
        let ok = dom::make("button", "link", "Dismiss");
        let id = n.id;
        dom::listen(ok.as_ref(), "click", move |_| {
            app::request(|rid| ClientToNode::MarkRead { id: rid, notice: id });
            dom::after(300, || wasm_bindgen_futures::spawn_local(load_notices()));
        });
        let _ = li.append_child(&ok);
        let _ = list.append_child(&li);
    }
}
