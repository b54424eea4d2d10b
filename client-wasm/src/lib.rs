//! The Xarxa browser client: Rust compiled to WebAssembly. It drives the
//! static page served by the zone node (`static/index.html`): log in, dial
//! `name@zone`, ring and answer, WebRTC media and a chat data channel,
//! history and missed calls, contacts with live presence (`contacts.rs`), profiles (`profile.rs`). It speaks the node's signalling WebSocket with
//! the `signalling` crate's message types.
//!
//! Test hooks: `window.xarxaPc` is the current `RTCPeerConnection`,
//! `window.xarxaPhase` the call phase (`idle`, `calling`, `ringing`,
//! `incoming`, `connecting`, `connected`). `?ice=relay` forces
//! `iceTransportPolicy: "relay"`; `?ice=loopback` offers only 127.0.0.1
//! candidates (for tests on one machine, with Chromium's
//! `--allow-loopback-in-peer-connection`).

pub mod text;

#[cfg(target_arch = "wasm32")]
mod app;
#[cfg(target_arch = "wasm32")]
mod contacts;
#[cfg(target_arch = "wasm32")]
mod dom;
#[cfg(target_arch = "wasm32")]
mod history;
#[cfg(target_arch = "wasm32")]
mod http;
#[cfg(target_arch = "wasm32")]
mod profile;
#[cfg(target_arch = "wasm32")]
mod rtc;

/// Entry point: called by the page once the module is loaded.
#[cfg(target_arch = "wasm32")]
#[wasm_bindgen::prelude::wasm_bindgen(start)]
pub fn start() {
    app::start();
}
