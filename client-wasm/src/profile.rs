//! The profile card (the user's nickname, description and avatar), and
//! the contacts' profiles the contacts card shows: fetched when a
//! contact's presence names a newer profile version than the one held.

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::json;
use signalling::profiles::Profile;
use signalling::Address;
use wasm_bindgen::JsCast;
use web_sys::{HtmlInputElement, HtmlTextAreaElement};

use crate::app;
use crate::contacts::path_of;
use crate::dom::{el, input, on, show, text};
use crate::http;

/// A contact's profile as held here, and an object URL of their avatar.
#[derive(Clone, Default)]
pub struct Held {
    /// The profile.
    pub profile: Profile,
    /// `blob:` URL of the avatar, if fetched.
    pub avatar_url: Option<String>,
}

thread_local! {
    static HELD: RefCell<HashMap<Address, Held>> = RefCell::new(HashMap::new());
}

/// What is held of `address`'s profile.
pub fn held(address: &Address) -> Option<Held> {
    HELD.with(|h| h.borrow().get(address).cloned())
}

/// Wires the profile card.
pub fn wire() {
    on("profile-form", "submit", |e| {
        e.prevent_default();
        wasm_bindgen_futures::spawn_local(save());
    });
    on("avatar-input", "change", |_| wasm_bindgen_futures::spawn_local(upload()));
    on("avatar-remove-btn", "click", |_| {
        wasm_bindgen_futures::spawn_local(async {
            let token = app::token();
            let _ = http::call("DELETE", "/api/v1/profile/avatar", token.as_deref(), None).await;
            load_own().await;
        });
    });
}

fn say(message: &str, error: bool) {
    text("profile-note", message);
    let _ = el("profile-note").set_attribute("class", if error { "error" } else { "muted" });
    show("profile-note", !message.is_empty());
}

/// Loads the user's own profile into the card.
pub async fn load_own() {
    let token = app::token();
    let Ok(r) = http::call("GET", "/api/v1/profile", token.as_deref(), None).await else { return };
    let Ok(p) = serde_json::from_value::<Profile>(r.body) else { return };
    input("profile-nickname").set_value(&p.nickname);
    if let Ok(t) = el("profile-description").dyn_into::<HtmlTextAreaElement>() {
        t.set_value(&p.description);
    }
    let url = match p.avatar {
        Some(_) => http::get_blob("/api/v1/profile/avatar", token.as_deref())
            .await
            .and_then(|b| web_sys::Url::create_object_url_with_blob(&b).ok()),
        None => None,
    };
    let img = el("profile-avatar");
    match url {
        Some(u) => {
            let _ = img.set_attribute("src", &u);
            img.set_hidden(false);
        }
        None => img.set_hidden(true),
    }
    show("avatar-remove-btn", p.avatar.is_some());
}

async fn save() {
    let nickname = input("profile-nickname").value();
    let description =
        el("profile-description").dyn_into::<HtmlTextAreaElement>().map(|t| t.value()).unwrap_or_default();
    let token = app::token();
    let body = json!({ "nickname": nickname, "description": description });
    match http::call("PUT", "/api/v1/profile", token.as_deref(), Some(&body)).await {
        Ok(r) if r.ok() => say("Saved. Your contacts see it now.", false),
        Ok(r) => say(&r.message(), true),
        Err(e) => say(&e, true),
    }
}

async fn upload() {
    let Ok(field) = el("avatar-input").dyn_into::<HtmlInputElement>() else { return };
    let Some(file) = field.files().and_then(|f| f.get(0)) else { return };
    let token = app::token();
    match http::put_blob("/api/v1/profile/avatar", token.as_deref(), file.as_ref()).await {
        Ok(r) if r.ok() => {
            say("Picture saved.", false);
            load_own().await;
        }
        Ok(r) if r.status == 413 => say("That picture is too large: at most 40 KB.", true),
        Ok(r) if r.status == 400 => say("A picture must be a PNG, JPEG or WebP image.", true),
        Ok(r) => say(&r.message(), true),
        Err(e) => say(&e, true),
    }
    field.set_value("");
}

/// Makes sure the profile of `address` held here is at least version
/// `v`; calls `done` if it fetched a newer one.
pub fn want(address: &Address, v: u64, done: impl FnOnce() + 'static) {
    let have = held(address).map_or(0, |h| h.profile.v);
    if v == 0 || have >= v {
        return;
    }
    let address = address.clone();
    wasm_bindgen_futures::spawn_local(async move {
        let token = app::token();
        let path = format!("/api/v1/contacts/{}/profile?v={v}", path_of(&address));
        let Ok(r) = http::call("GET", &path, token.as_deref(), None).await else { return };
        let Ok(profile) = serde_json::from_value::<Profile>(r.body) else { return };
        let avatar_url = match profile.avatar {
            Some(_) => {
                let path = format!("/api/v1/contacts/{}/avatar", path_of(&address));
                http::get_blob(&path, token.as_deref())
                    .await
                    .and_then(|b| web_sys::Url::create_object_url_with_blob(&b).ok())
            }
            None => None,
        };
        HELD.with(|h| {
            if let Some(old) = h.borrow_mut().insert(address, Held { profile, avatar_url }) {
                if let Some(u) = old.avatar_url {
                    let _ = web_sys::Url::revoke_object_url(&u);
                }
            }
        });
        done();
    });
}
