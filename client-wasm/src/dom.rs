//! Small helpers over web-sys for the static page in `static/index.html`.

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{Document, Element, HtmlElement, HtmlInputElement, Window};

/// The browser window. The client only runs in a page, where it exists.
pub fn window() -> Window {
    web_sys::window().expect_throw("no window")
}

/// The page's document.
pub fn document() -> Document {
    window().document().expect_throw("no document")
}

/// The element with `id`, which the page must have.
pub fn el(id: &str) -> HtmlElement {
    document()
        .get_element_by_id(id)
        .and_then(|e| e.dyn_into::<HtmlElement>().ok())
        .unwrap_or_else(|| wasm_bindgen::throw_str(&format!("missing element #{id}")))
}

/// The input element with `id`.
pub fn input(id: &str) -> HtmlInputElement {
    el(id).unchecked_into()
}

/// Shows or hides an element.
pub fn show(id: &str, visible: bool) {
    el(id).set_hidden(!visible);
}

/// Sets an element's text.
pub fn text(id: &str, s: &str) {
    el(id).set_text_content(Some(s));
}

/// Runs `f` on every `event` of element `id`, for the life of the page.
pub fn on(id: &str, event: &str, f: impl FnMut(web_sys::Event) + 'static) {
    listen(el(id).as_ref(), event, f);
}

/// Runs `f` on every `event` of `target`, for the life of the page.
pub fn listen(target: &web_sys::EventTarget, event: &str, f: impl FnMut(web_sys::Event) + 'static) {
    let cb = Closure::<dyn FnMut(web_sys::Event)>::new(f);
    let _ = target.add_event_listener_with_callback(event, cb.as_ref().unchecked_ref());
    cb.forget();
}

/// A new element with a class and text.
pub fn make(tag: &str, class: &str, content: &str) -> Element {
    let e = document().create_element(tag).expect_throw("create element");
    if !class.is_empty() {
        e.set_class_name(class);
    }
    if !content.is_empty() {
        e.set_text_content(Some(content));
    }
    e
}

/// Calls `f` once after `ms` milliseconds.
pub fn after(ms: i32, f: impl FnOnce() + 'static) {
    let cb = Closure::once_into_js(f);
    let _ = window().set_timeout_with_callback_and_timeout_and_arguments_0(cb.unchecked_ref(), ms);
}

/// Calls `f` every `ms` milliseconds; returns the interval id.
pub fn every(ms: i32, f: impl FnMut() + 'static) -> i32 {
    let cb = Closure::<dyn FnMut()>::new(f);
    let id =
        window().set_interval_with_callback_and_timeout_and_arguments_0(cb.as_ref().unchecked_ref(), ms).unwrap_or(0);
    cb.forget();
    id
}

/// Milliseconds since the epoch.
pub fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// A local date and time for a timestamp in ms.
pub fn local_time(ms: u64) -> String {
    let d = js_sys::Date::new(&JsValue::from_f64(ms as f64));
    String::from(d.to_locale_string("default", &JsValue::UNDEFINED))
}

/// Reads a key of the page's local storage.
pub fn stored(key: &str) -> Option<String> {
    window().local_storage().ok().flatten()?.get_item(key).ok().flatten()
}

/// Writes (or with `None`, removes) a key of local storage.
pub fn store(key: &str, value: Option<&str>) {
    if let Ok(Some(s)) = window().local_storage() {
        let _ = match value {
            Some(v) => s.set_item(key, v),
            None => s.remove_item(key),
        };
    }
}

/// A query parameter of the page's URL.
pub fn query(name: &str) -> Option<String> {
    let search = window().location().search().ok()?;
    web_sys::UrlSearchParams::new_with_str(&search).ok()?.get(name)
}

/// Sets a property on `window` (test and debugging hooks).
pub fn expose(name: &str, value: &JsValue) {
    let _ = js_sys::Reflect::set(&window(), &JsValue::from_str(name), value);
}
