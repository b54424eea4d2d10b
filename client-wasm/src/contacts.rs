//! The contacts card of the home screen: the list with presence dots,
//! requests to answer, adding a contact, calling one, the user's own
//! availability and status, and telling the node when the person at this
//! device goes idle.

use std::cell::RefCell;

use serde_json::json;
use signalling::contacts::{Contact, ContactState, Presence, PresenceState};
use signalling::{Address, ClientToNode, NodeToClient};
use wasm_bindgen::JsCast;
use web_sys::HtmlSelectElement;

use crate::app;
use crate::dom::{self, el, input, on, show, text};
use crate::http;
use crate::text as say;

/// No input for this long and the device counts as idle.
const IDLE_AFTER_MS: f64 = 5.0 * 60.0 * 1000.0;

#[derive(Default)]
struct State {
    contacts: Vec<Contact>,
    last_input_ms: f64,
    idle: bool,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

/// `address` as one path segment (`bob%40sants`).
pub(crate) fn path_of(address: &Address) -> String {
    address.to_string().replace('@', "%40")
}

/// Wires the card's forms and the idle watch.
pub fn wire() {
    on("contact-form", "submit", |e| {
        e.prevent_default();
        wasm_bindgen_futures::spawn_local(add());
    });
    on("status-form", "submit", |e| {
        e.prevent_default();
        wasm_bindgen_futures::spawn_local(set_presence());
    });
    on("my-availability", "change", |_| wasm_bindgen_futures::spawn_local(set_presence()));
    with(|s| s.last_input_ms = dom::now_ms());
    for event in ["pointerdown", "keydown", "pointermove", "wheel", "touchstart"] {
        dom::listen(dom::document().as_ref(), event, |_| active());
    }
    dom::every(15_000, || {
        let idle_now = with(|s| !s.idle && dom::now_ms() - s.last_input_ms > IDLE_AFTER_MS);
        if idle_now {
            with(|s| s.idle = true);
            app::request(|id| ClientToNode::Idle { id, idle: true });
        }
    });
}

fn active() {
    let was_idle = with(|s| {
        s.last_input_ms = dom::now_ms();
        std::mem::replace(&mut s.idle, false)
    });
    if was_idle {
        app::request(|id| ClientToNode::Idle { id, idle: false });
    }
}

/// Loads the list and the user's own presence (after every welcome).
pub async fn load() {
    let token = app::token();
    let Ok(r) = http::call("GET", "/api/v1/contacts", token.as_deref(), None).await else { return };
    if !r.ok() {
        return;
    }
    let mut list: Vec<Contact> = serde_json::from_value(r.body["contacts"].clone()).unwrap_or_default();
    with(|s| {
        // An event may have come while the list was on its way: keep the
        // newer presence of the two.
        for c in &mut list {
            let held = s.contacts.iter().find(|h| h.address == c.address).and_then(|h| h.presence.clone());
            if let (Some(h), Some(p)) = (held, c.presence.as_ref()) {
                if h.v > p.v {
                    c.presence = Some(h);
                }
            }
        }
        s.contacts = list;
    });
    render();
    if let Ok(r) = http::call("GET", "/api/v1/presence", token.as_deref(), None).await {
        if let Ok(p) = serde_json::from_value::<Presence>(r.body) {
            input("my-status").set_value(&p.status);
            let value = match p.state {
                PresenceState::Busy => "busy",
                PresenceState::Away => "away",
                _ => "online",
            };
            if let Ok(sel) = el("my-availability").dyn_into::<HtmlSelectElement>() {
                sel.set_value(value);
            }
        }
    }
}

/// Takes a contact or presence event; `false` if `msg` is not one.
pub fn handle(msg: &NodeToClient) -> bool {
    match msg {
        NodeToClient::Contact { contact } => {
            with(|s| {
                let keep = s.contacts.iter().find(|c| c.address == contact.address).and_then(|c| c.presence.clone());
                s.contacts.retain(|c| c.address != contact.address);
                let mut c = contact.clone();
                if c.state == ContactState::Accepted && c.presence.is_none() {
                    c.presence = Some(keep.unwrap_or_default());
                }
                s.contacts.push(c);
            });
            render();
        }
        NodeToClient::ContactRemoved { address } => {
            with(|s| s.contacts.retain(|c| &c.address != address));
            render();
        }
        NodeToClient::Presence { address, presence } => {
            with(|s| {
                if let Some(c) = s.contacts.iter_mut().find(|c| &c.address == address) {
                    c.presence = Some(presence.clone());
                }
            });
            render();
        }
        _ => return false,
    }
    true
}

fn fail(message: &str) {
    text("contact-error", message);
    show("contact-error", !message.is_empty());
}

async fn add() {
    let to = input("contact-input").value().trim().to_string();
    if to.is_empty() {
        return;
    }
    fail("");
    let token = app::token();
    match http::call("POST", "/api/v1/contacts", token.as_deref(), Some(&json!({ "address": to }))).await {
        Ok(r) if r.ok() => {
            input("contact-input").set_value("");
            load().await;
        }
        Ok(r) => fail(&say::contact_error(r.body["error"]["code"].as_str().unwrap_or(""), &r.message())),
        Err(e) => fail(&e),
    }
}

async fn set_presence() {
    let availability = el("my-availability").dyn_into::<HtmlSelectElement>().map(|s| s.value()).unwrap_or_default();
    let status = input("my-status").value();
    let token = app::token();
    let body = json!({ "availability": availability, "status": status.trim() });
    match http::call("PUT", "/api/v1/presence", token.as_deref(), Some(&body)).await {
        Ok(r) if r.ok() => fail(""),
        Ok(r) => fail(&r.message()),
        Err(e) => fail(&e),
    }
}

/// A step on one contact (`accept`, `deny`, or removal), then a reload.
fn step(address: &Address, what: &'static str) {
    let address = address.clone();
    wasm_bindgen_futures::spawn_local(async move {
        let token = app::token();
        let (method, path) = match what {
            "remove" => ("DELETE", format!("/api/v1/contacts/{}", path_of(&address))),
            other => ("POST", format!("/api/v1/contacts/{}/{other}", path_of(&address))),
        };
        match http::call(method, &path, token.as_deref(), Some(&json!({}))).await {
            Ok(r) if r.ok() => fail(""),
            Ok(r) => fail(&say::contact_error(r.body["error"]["code"].as_str().unwrap_or(""), &r.message())),
            Err(e) => fail(&e),
        }
        load().await;
    });
}

fn button(label: &str, class: &str, f: impl FnMut(web_sys::Event) + 'static) -> web_sys::Element {
    let b = dom::make("button", class, label);
    dom::listen(b.as_ref(), "click", f);
    b
}

fn render() {
    let mut contacts = with(|s| s.contacts.clone());
    contacts.sort_by_key(|c| c.address.to_string());
    let requests = el("contact-requests");
    requests.set_inner_html("");
    let list = el("contact-list");
    list.set_inner_html("");
    show("contacts-empty", contacts.is_empty());
    for c in contacts {
        let li = dom::make("li", "contact", "");
        let addr = c.address.to_string();
        let _ = li.set_attribute("data-address", &addr);
        let _ = li.set_attribute("data-state", state_name(c.state));
        match c.state {
            ContactState::Accepted => {
                let p = c.presence.clone().unwrap_or_default();
                crate::profile::want(&c.address, p.profile_v, render);
                let label = say::presence(p.state);
                let dot = dom::make("span", &format!("dot {}", presence_class(p.state)), "");
                let _ = dot.set_attribute("aria-hidden", "true");
                let _ = li.append_child(&dot);
                let held = crate::profile::held(&c.address).unwrap_or_default();
                if let Some(url) = &held.avatar_url {
                    let img = dom::make("img", "avatar", "");
                    let _ = img.set_attribute("src", url);
                    let _ = img.set_attribute("alt", "");
                    let _ = li.append_child(&img);
                }
                let who = dom::make("span", "who", "");
                if held.profile.nickname.is_empty() {
                    who.set_text_content(Some(&addr));
                } else {
                    let _ = who.append_child(&dom::make("strong", "nickname", &held.profile.nickname));
                    let _ = who.append_child(&dom::make("span", "address muted", &format!(" {addr}")));
                }
                if !held.profile.description.is_empty() {
                    let _ = who.set_attribute("title", &held.profile.description);
                }
                if !p.status.is_empty() {
                    let _ = who.append_child(&dom::make("span", "status muted", &format!(" — {}", p.status)));
                }
                let _ = li.append_child(&who);
                let tag = dom::make("span", "presence", label);
                let _ = tag.set_attribute("data-presence", presence_class(p.state));
                let _ = li.append_child(&tag);
                let to = addr.clone();
                let _ = li.append_child(&button("Call", "link call", move |_| app::call_to(&to, false)));
                let to = addr.clone();
                let _ = li.append_child(&button("Video", "link video", move |_| app::call_to(&to, true)));
                let a = c.address.clone();
                let _ = li.append_child(&button("Remove", "link remove", move |_| step(&a, "remove")));
                let _ = list.append_child(&li);
            }
            ContactState::Incoming => {
                let _ = li.append_child(&dom::make("span", "who", &format!("{addr} wants to be your contact")));
                let a = c.address.clone();
                let _ = li.append_child(&button("Accept", "primary accept", move |_| step(&a, "accept")));
                let a = c.address.clone();
                let _ = li.append_child(&button("Deny", "deny", move |_| step(&a, "deny")));
                let _ = requests.append_child(&li);
            }
            ContactState::Outgoing => {
                let _ = li.append_child(&dom::make("span", "who", &addr));
                let _ = li.append_child(&dom::make("span", "presence muted", "asked, waiting for an answer"));
                let a = c.address.clone();
                let _ = li.append_child(&button("Withdraw", "link remove", move |_| step(&a, "remove")));
                let _ = list.append_child(&li);
            }
        }
    }
}

fn state_name(s: ContactState) -> &'static str {
    match s {
        ContactState::Accepted => "accepted",
        ContactState::Incoming => "incoming",
        ContactState::Outgoing => "outgoing",
    }
}

fn presence_class(s: PresenceState) -> &'static str {
    match s {
        PresenceState::Online => "online",
        PresenceState::Away => "away",
        PresenceState::Busy => "busy",
        PresenceState::InCall => "in_call",
        _ => "offline",
    }
}
