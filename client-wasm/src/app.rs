//! The page's behaviour: screens, the signalling socket, calls.
//!
//! All state lives in one [`App`] behind a thread-local `RefCell` (the page
//! has one thread). Handlers borrow it briefly and never across an `.await`.

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::json;
use signalling::{
    CallId, ClientToNode, DeviceId, EndReason, ErrorCode, Media, NodeToClient, Notice, RequestId, Signal,
    PROTOCOL_VERSION,
};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{
    HtmlMediaElement, MediaStream, MessageEvent, Notification, NotificationOptions, NotificationPermission,
    RtcDataChannel, RtcDataChannelEvent, RtcPeerConnection, RtcPeerConnectionIceEvent, RtcTrackEvent, WebSocket,
};

use crate::dom::{self, el, input, on, show, text};
use crate::history::load_history;
use crate::http;
use crate::rtc::{self, IceServer};
use crate::text as say;

const TOKEN_KEY: &str = "xarxa.token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Caller,
    Callee,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Calling,
    Ringing,
    Connecting,
    Connected,
}

struct Call {
    id: Option<CallId>,
    peer: String,
    media: Media,
    role: Role,
    phase: Phase,
    pc: Option<RtcPeerConnection>,
    local: Option<MediaStream>,
    dc: Option<RtcDataChannel>,
    answered_at: Option<f64>,
    remote_description: bool,
    /// Signals that arrived before the peer connection was ready.
    early: Vec<Signal>,
    muted: bool,
    camera_off: bool,
}

enum Pending {
    Dial,
    /// A hang-up: history is reloaded once the node has recorded it.
    Hangup,
    Accept(CallId, String, Media),
    Other,
}

#[derive(Default)]
struct App {
    zone: String,
    token: Option<String>,
    me: Option<String>,
    ws: Option<WebSocket>,
    generation: u32,
    device: Option<DeviceId>,
    next_id: RequestId,
    attempts: u32,
    pending: HashMap<RequestId, Pending>,
    call: Option<Call>,
    incoming: Vec<(CallId, String, Media)>,
    ice: Vec<IceServer>,
    relay_only: bool,
    loopback_only: bool,
}

thread_local! {
    static APP: RefCell<App> = RefCell::new(App::default());
}

fn with<R>(f: impl FnOnce(&mut App) -> R) -> R {
    APP.with(|a| f(&mut a.borrow_mut()))
}

/// Sets up the page.
pub fn start() {
    let zone = dom::document().body().and_then(|_| el("zone-name").text_content()).unwrap_or_default();
    with(|a| {
        a.zone = zone;
        a.relay_only = dom::query("ice").as_deref() == Some("relay");
        a.loopback_only = dom::query("ice").as_deref() == Some("loopback");
        a.token = dom::stored(TOKEN_KEY);
    });
    wire_ui();
    if with(|a| a.token.is_some()) {
        connect();
    } else {
        screen("login");
    }
    dom::every(1000, tick);
}

fn screen(name: &str) {
    for s in ["login", "home", "outgoing", "incoming", "call"] {
        show(&format!("screen-{s}"), s == name);
    }
    let logged_in = name != "login";
    show("logout-btn", logged_in);
    let phase = match name {
        "incoming" => "incoming",
        "outgoing" => "calling",
        "call" => with(|a| match a.call.as_ref().map(|c| c.phase) {
            Some(Phase::Connected) => "connected",
            _ => "connecting",
        }),
        _ => "idle",
    };
    dom::expose("xarxaPhase", &JsValue::from_str(phase));
}

fn banner(kind: &str, msg: &str) {
    let b = el("banner");
    let _ = b.set_attribute("data-kind", kind);
    b.set_text_content(Some(msg));
    b.set_hidden(msg.is_empty());
}

fn wire_ui() {
    on("login-form", "submit", |e| {
        e.prevent_default();
        wasm_bindgen_futures::spawn_local(login(false));
    });
    on("register-btn", "click", |_| wasm_bindgen_futures::spawn_local(login(true)));
    on("logout-btn", "click", |_| wasm_bindgen_futures::spawn_local(logout()));
    on("dial-form", "submit", |e| {
        e.prevent_default();
        dial(false);
    });
    on("call-video-btn", "click", |_| dial(true));
    on("cancel-btn", "click", |_| hang_up());
    on("hangup-btn", "click", |_| hang_up());
    on("accept-btn", "click", |_| answer(true));
    on("reject-btn", "click", |_| answer(false));
    on("mute-btn", "click", |_| toggle("audio"));
    on("camera-btn", "click", |_| toggle("video"));
    on("chat-form", "submit", |e| {
        e.prevent_default();
        send_chat();
    });
    crate::contacts::wire();
    crate::profile::wire();
    on("history-clear-btn", "click", |_| {
        wasm_bindgen_futures::spawn_local(async {
            let token = with(|a| a.token.clone());
            let _ = http::call("DELETE", "/api/v1/history", token.as_deref(), None).await;
            load_history().await;
        });
    });
}

// ----- account -----

async fn login(register: bool) {
    let name = input("login-name").value().trim().to_string();
    let password = input("login-password").value();
    let invite = input("login-invite").value();
    show("login-error", false);
    let fail = |m: String| {
        text("login-error", &m);
        show("login-error", true);
    };
    if register {
        let mut body = json!({"name": name, "password": password});
        if !invite.trim().is_empty() {
            body["invite"] = json!(invite.trim());
        }
        match http::call("POST", "/api/v1/register", None, Some(&body)).await {
            Ok(r) if r.ok() => {}
            Ok(r) => return fail(r.message()),
            Err(e) => return fail(e),
        }
    }
    let device = dom::window().navigator().user_agent().unwrap_or_default();
    let device: String = device.chars().take(80).collect();
    let body = json!({"name": name, "password": password, "device": device});
    match http::call("POST", "/api/v1/login", None, Some(&body)).await {
        Ok(r) if r.ok() => {
            let token = r.body["token"].as_str().unwrap_or_default().to_string();
            dom::store(TOKEN_KEY, Some(&token));
            input("login-password").set_value("");
            with(|a| a.token = Some(token));
            connect();
        }
        Ok(r) => fail(r.message()),
        Err(e) => fail(e),
    }
}

async fn logout() {
    let token = with(|a| a.token.clone());
    let _ = http::call("POST", "/api/v1/logout", token.as_deref(), None).await;
    signed_out("");
}

/// Back to the login screen, saying `why`.
pub(crate) fn signed_out(why: &str) {
    end_call_locally();
    let ws = with(|a| {
        a.token = None;
        a.me = None;
        a.device = None;
        a.generation += 1;
        a.incoming.clear();
        a.ws.take()
    });
    if let Some(ws) = ws {
        let _ = ws.close();
    }
    dom::store(TOKEN_KEY, None);
    text("me", "");
    set_conn("offline");
    banner("error", why);
    screen("login");
}

// ----- the signalling socket -----

fn set_conn(state: &str) {
    let c = el("conn-state");
    let _ = c.set_attribute("data-state", state);
    c.set_text_content(Some(state));
}

fn connect() {
    let loc = dom::window().location();
    let scheme = if loc.protocol().unwrap_or_default() == "https:" { "wss" } else { "ws" };
    let url = format!("{scheme}://{}/api/v1/ws", loc.host().unwrap_or_default());
    let Ok(ws) = WebSocket::new(&url) else {
        return reconnect_later();
    };
    let generation = with(|a| {
        a.generation += 1;
        a.ws = Some(ws.clone());
        a.generation
    });
    let current = move || with(|a| a.generation == generation);
    let ws2 = ws.clone();
    dom::listen(ws.as_ref(), "open", move |_| {
        if !current() {
            return;
        }
        let (token, resume) = with(|a| (a.token.clone().unwrap_or_default(), a.device.clone()));
        send_on(&ws2, |id| ClientToNode::Hello { id, version: PROTOCOL_VERSION, token, resume });
    });
    dom::listen(ws.as_ref(), "message", move |e| {
        if !current() {
            return;
        }
        let Some(data) = e.unchecked_ref::<MessageEvent>().data().as_string() else { return };
        match NodeToClient::parse(&data) {
            Ok(msg) => handle(msg),
            Err(err) => web_sys::console::warn_1(&format!("unreadable frame: {err}").into()),
        }
    });
    dom::listen(ws.as_ref(), "close", move |_| {
        if current() && with(|a| a.token.is_some()) {
            reconnect_later();
        }
    });
}

fn reconnect_later() {
    set_conn("reconnecting");
    banner("error", "Lost the connection to the node; reconnecting…");
    let attempt = with(|a| {
        a.attempts += 1;
        a.attempts
    });
    dom::after(say::backoff_ms(attempt) as i32, || {
        if with(|a| a.token.is_some()) {
            connect();
        }
    });
}

fn send_on(ws: &WebSocket, make: impl FnOnce(RequestId) -> ClientToNode) -> RequestId {
    let id = with(|a| {
        a.next_id += 1;
        a.next_id
    });
    let _ = ws.send_with_str(&make(id).to_json());
    id
}

/// Sends a request on the current socket, remembering what it was for.
fn send(pending: Pending, make: impl FnOnce(RequestId) -> ClientToNode) -> Option<RequestId> {
    let ws = with(|a| a.ws.clone())?;
    if ws.ready_state() != WebSocket::OPEN {
        banner("error", "Not connected to the node; reconnecting…");
        return None;
    }
    let id = send_on(&ws, make);
    with(|a| a.pending.insert(id, pending));
    Some(id)
}

/// The session token, if logged in (for the other cards' HTTP calls).
pub(crate) fn token() -> Option<String> {
    with(|a| a.token.clone())
}

/// Sends a request whose reply needs no handling.
pub(crate) fn request(make: impl FnOnce(RequestId) -> ClientToNode) {
    send(Pending::Other, make);
}

/// Calls `to`, as if dialled (from the contact list).
pub(crate) fn call_to(to: &str, video: bool) {
    input("dial-input").set_value(to);
    dial(video);
}

fn handle(msg: NodeToClient) {
    if crate::contacts::handle(&msg) {
        return;
    }
    match msg {
        NodeToClient::Welcome { device, user, resumed, .. } => {
            with(|a| {
                a.device = Some(device);
                a.me = Some(user.to_string());
                a.attempts = 0;
            });
            text("me", &user.to_string());
            set_conn("online");
            if !resumed {
                // A fresh device: nothing of an earlier call survives.
                end_call_locally();
                screen("home");
            }
            banner("", "");
            wasm_bindgen_futures::spawn_local(async {
                crate::contacts::load().await;
                crate::profile::load_own().await;
                load_history().await;
                load_ice().await;
            });
        }
        NodeToClient::Error { id, code, message } => {
            let pending = id.and_then(|i| with(|a| a.pending.remove(&i)));
            match code {
                ErrorCode::InvalidToken | ErrorCode::NotAuthenticated => {
                    return signed_out("Your session has ended. Please log in again.")
                }
                ErrorCode::ResumeFailed => {
                    // The old device is gone: start afresh on this socket.
                    let ws = with(|a| {
                        a.device = None;
                        a.ws.clone()
                    });
                    if let Some(ws) = ws {
                        let token = with(|a| a.token.clone().unwrap_or_default());
                        send_on(&ws, |id| ClientToNode::Hello { id, version: PROTOCOL_VERSION, token, resume: None });
                    }
                    return;
                }
                _ => {}
            }
            if matches!(pending, Some(Pending::Dial)) {
                end_call_locally();
                screen("home");
            }
            banner("error", &say::error(code, &message));
        }
        NodeToClient::CallPlaced { id, call } => {
            with(|a| a.pending.remove(&id));
            with(|a| {
                if let Some(c) = a.call.as_mut().filter(|c| c.id.is_none()) {
                    c.id = Some(call);
                }
            });
        }
        NodeToClient::Ok { id } => match with(|a| a.pending.remove(&id)) {
            Some(Pending::Accept(call, peer, media)) => start_callee(call, peer, media),
            Some(Pending::Hangup) => wasm_bindgen_futures::spawn_local(load_history()),
            _ => {}
        },
        NodeToClient::Pong { id } => {
            with(|a| a.pending.remove(&id));
        }
        NodeToClient::Incoming { call, from, media } => incoming(call, from.to_string(), media),
        NodeToClient::Ringing { call } if is_current(&call) => {
            with(|a| a.call.as_mut().map(|c| c.phase = Phase::Ringing));
            text("outgoing-state", "Ringing…");
        }
        NodeToClient::Accepted { call } if is_current(&call) => {
            wasm_bindgen_futures::spawn_local(start_caller());
        }
        NodeToClient::Ended { call, reason } => ended(call, reason),
        NodeToClient::Signal { call, signal } if is_current(&call) => {
            wasm_bindgen_futures::spawn_local(on_signal(signal));
        }
        NodeToClient::MissedCall { notice } => missed(notice),
        NodeToClient::GoingAway { within_ms } => banner("error", &say::going_away(within_ms)),
        _ => {}
    }
}

fn is_current(call: &CallId) -> bool {
    with(|a| a.call.as_ref().and_then(|c| c.id.as_ref()) == Some(call))
}

// ----- placing and answering -----

fn dial(video: bool) {
    let to = input("dial-input").value().trim().to_string();
    if to.is_empty() {
        return;
    }
    if with(|a| a.call.is_some()) {
        return banner("error", "You are already in a call.");
    }
    let media = Media { audio: true, video };
    let peer = if to.contains('@') { to.clone() } else { format!("{to}@{}", with(|a| a.zone.clone())) };
    with(|a| a.call = Some(new_call(None, peer.clone(), media, Role::Caller, Phase::Calling)));
    if send(Pending::Dial, |id| ClientToNode::Call { id, to, media }).is_none() {
        with(|a| a.call = None);
        return;
    }
    banner("", "");
    text("outgoing-peer", &peer);
    text("outgoing-state", "Calling…");
    screen("outgoing");
}

fn new_call(id: Option<CallId>, peer: String, media: Media, role: Role, phase: Phase) -> Call {
    Call {
        id,
        peer,
        media,
        role,
        phase,
        pc: None,
        local: None,
        dc: None,
        answered_at: None,
        remote_description: false,
        early: Vec::new(),
        muted: false,
        camera_off: false,
    }
}

fn incoming(call: CallId, from: String, media: Media) {
    with(|a| a.incoming.push((call, from.clone(), media)));
    if with(|a| a.call.is_some()) {
        return; // Busy here; the node tells the caller if we are busy everywhere.
    }
    text("incoming-peer", &from);
    text("incoming-kind", if media.video { "Incoming video call" } else { "Incoming call" });
    screen("incoming");
    notify(&format!("{from} is calling"), "Open Xarxa to answer.");
}

fn answer(accept: bool) {
    let Some((call, from, media)) = with(|a| a.incoming.last().cloned()) else { return };
    with(|a| a.incoming.retain(|(c, _, _)| *c != call));
    if accept {
        let c = call.clone();
        send(Pending::Accept(call, from, media), |id| ClientToNode::Accept { id, call: c });
        text("outgoing-state", "Answering…");
    } else {
        send(Pending::Other, |id| ClientToNode::Reject { id, call });
        show_next_incoming_or_home();
    }
}

fn show_next_incoming_or_home() {
    match with(|a| a.incoming.last().cloned()) {
        Some((_, from, _)) => {
            text("incoming-peer", &from);
            screen("incoming");
        }
        None => {
            screen("home");
            wasm_bindgen_futures::spawn_local(load_history());
        }
    }
}

fn hang_up() {
    let id = with(|a| a.call.as_ref().and_then(|c| c.id.clone()));
    if let Some(call) = id {
        send(Pending::Hangup, |id| ClientToNode::Hangup { id, call });
    }
    end_call_locally();
    banner("info", "Call ended.");
    show_next_incoming_or_home();
}

fn ended(call: CallId, reason: EndReason) {
    let ringing_here = with(|a| {
        let before = a.incoming.len();
        a.incoming.retain(|(c, _, _)| *c != call);
        before != a.incoming.len()
    });
    if is_current(&call) {
        let peer = with(|a| a.call.as_ref().map(|c| c.peer.clone()).unwrap_or_default());
        end_call_locally();
        let kind = if matches!(reason, EndReason::HungUp | EndReason::AnsweredElsewhere) { "info" } else { "error" };
        banner(kind, &say::ended(reason, &peer));
        show_next_incoming_or_home();
    } else if ringing_here {
        if reason == EndReason::AnsweredElsewhere {
            banner("info", &say::ended(reason, ""));
        }
        if with(|a| a.call.is_none()) {
            show_next_incoming_or_home();
        }
    }
}

/// Tears down the current call's media, if any.
fn end_call_locally() {
    if let Some(c) = with(|a| a.call.take()) {
        if let Some(dc) = c.dc {
            dc.close();
        }
        if let Some(pc) = c.pc {
            pc.close();
        }
        if let Some(s) = c.local {
            rtc::stop(&s);
        }
    }
    for v in ["local-video", "remote-video"] {
        el(v).unchecked_into::<HtmlMediaElement>().set_src_object(None);
    }
    el("chat-log").set_inner_html("");
    dom::expose("xarxaPc", &JsValue::NULL);
}

// ----- media -----

fn fail_call(why: &str) {
    hang_up();
    banner("error", why);
}

/// Builds the peer connection and its event handlers for the current call.
fn make_pc() -> Result<RtcPeerConnection, String> {
    let (ice, relay) = with(|a| (a.ice.clone(), a.relay_only));
    let pc = rtc::peer_connection(&ice, relay)?;
    dom::listen(pc.as_ref(), "icecandidate", |e| {
        let e: &RtcPeerConnectionIceEvent = e.unchecked_ref();
        if let Some(c) = e.candidate() {
            // `?ice=loopback` (tests, diagnostics) offers only 127.0.0.1
            // candidates, so media stays on this machine.
            let line = c.candidate();
            if with(|a| a.loopback_only) && !line.is_empty() && !line.contains(" 127.0.0.1 ") {
                return;
            }
            let signal =
                Signal::Ice { candidate: c.candidate(), sdp_mid: c.sdp_mid(), sdp_m_line_index: c.sdp_m_line_index() };
            send_signal(signal);
        }
    });
    dom::listen(pc.as_ref(), "track", |e| {
        let e: &RtcTrackEvent = e.unchecked_ref();
        if let Ok(stream) = e.streams().get(0).dyn_into::<MediaStream>() {
            el("remote-video").unchecked_into::<HtmlMediaElement>().set_src_object(Some(&stream));
        }
    });
    let pc2 = pc.clone();
    dom::listen(pc.as_ref(), "connectionstatechange", move |_| {
        let state = format!("{:?}", pc2.connection_state()).to_lowercase();
        text("call-state", &state);
        if state == "connected" {
            with(|a| {
                if let Some(c) = a.call.as_mut() {
                    c.phase = Phase::Connected;
                    c.answered_at.get_or_insert_with(dom::now_ms);
                }
            });
            dom::expose("xarxaPhase", &JsValue::from_str("connected"));
        }
    });
    dom::listen(pc.as_ref(), "datachannel", |e| {
        let dc = e.unchecked_ref::<RtcDataChannelEvent>().channel();
        wire_channel(&dc);
        with(|a| a.call.as_mut().map(|c| c.dc = Some(dc)));
    });
    Ok(pc)
}

fn wire_channel(dc: &RtcDataChannel) {
    dom::listen(dc.as_ref(), "message", |e| {
        if let Some(t) = e.unchecked_ref::<MessageEvent>().data().as_string() {
            chat_line(&t, false);
        }
    });
}

fn show_call_screen() {
    let (peer, video) = with(|a| a.call.as_ref().map(|c| (c.peer.clone(), c.media.video)).unwrap_or_default());
    text("call-peer", &peer);
    text("call-state", "connecting");
    text("call-duration", "00:00");
    text("camera-btn", "Camera off");
    text("mute-btn", "Mute");
    show("camera-btn", video);
    screen("call");
}

async fn attach_local(pc: &RtcPeerConnection, video: bool) -> Result<(), String> {
    let stream =
        rtc::add_local_media(pc, video).await.map_err(|e| format!("Cannot use the microphone or camera: {e}"))?;
    el("local-video").unchecked_into::<HtmlMediaElement>().set_src_object(Some(&stream));
    with(|a| a.call.as_mut().map(|c| c.local = Some(stream)));
    Ok(())
}

/// The callee accepted: build media, send the offer.
async fn start_caller() {
    with(|a| a.call.as_mut().map(|c| c.phase = Phase::Connecting));
    show_call_screen();
    let video = with(|a| a.call.as_ref().is_some_and(|c| c.media.video));
    let pc = match make_pc() {
        Ok(pc) => pc,
        Err(e) => return fail_call(&e),
    };
    let dc = rtc::chat_channel(&pc);
    wire_channel(&dc);
    with(|a| {
        if let Some(c) = a.call.as_mut() {
            c.pc = Some(pc.clone());
            c.dc = Some(dc);
        }
    });
    if let Err(e) = attach_local(&pc, video).await {
        return fail_call(&e);
    }
    match rtc::offer(&pc).await {
        Ok(sdp) => send_signal(Signal::Offer { sdp }),
        Err(e) => fail_call(&format!("Could not start the call: {e}")),
    }
}

/// This device accepted: build media and wait for the offer.
fn start_callee(call: CallId, peer: String, media: Media) {
    with(|a| a.call = Some(new_call(Some(call), peer, media, Role::Callee, Phase::Connecting)));
    show_call_screen();
    wasm_bindgen_futures::spawn_local(async move {
        let pc = match make_pc() {
            Ok(pc) => pc,
            Err(e) => return fail_call(&e),
        };
        if let Err(e) = attach_local(&pc, media.video).await {
            return fail_call(&e);
        }
        let early = with(|a| {
            a.call.as_mut().map(|c| {
                c.pc = Some(pc.clone());
                std::mem::take(&mut c.early)
            })
        });
        for s in early.unwrap_or_default() {
            on_signal(s).await;
        }
    });
}

async fn on_signal(signal: Signal) {
    let Some((pc, role)) = with(|a| a.call.as_ref().map(|c| (c.pc.clone(), c.role))) else { return };
    let Some(pc) = pc else {
        with(|a| a.call.as_mut().map(|c| c.early.push(signal)));
        return;
    };
    match signal {
        Signal::Offer { sdp } if role == Role::Callee => match rtc::answer(&pc, &sdp).await {
            Ok(answer) => {
                with(|a| a.call.as_mut().map(|c| c.remote_description = true));
                send_signal(Signal::Answer { sdp: answer });
                flush_candidates().await;
            }
            Err(e) => fail_call(&format!("Could not answer the call: {e}")),
        },
        Signal::Answer { sdp } if role == Role::Caller => match rtc::accept_answer(&pc, &sdp).await {
            Ok(()) => {
                with(|a| a.call.as_mut().map(|c| c.remote_description = true));
                flush_candidates().await;
            }
            Err(e) => fail_call(&format!("Could not connect the call: {e}")),
        },
        Signal::Ice { .. } => {
            if with(|a| a.call.as_ref().is_some_and(|c| c.remote_description)) {
                add_candidate(&pc, signal).await;
            } else {
                with(|a| a.call.as_mut().map(|c| c.early.push(signal)));
            }
        }
        Signal::Chat { text } => chat_line(&text, false),
        _ => {}
    }
}

async fn add_candidate(pc: &RtcPeerConnection, signal: Signal) {
    if let Signal::Ice { candidate, sdp_mid, sdp_m_line_index } = signal {
        if let Err(e) = rtc::add_candidate(pc, &candidate, sdp_mid.as_deref(), sdp_m_line_index).await {
            web_sys::console::warn_1(&format!("bad candidate: {e}").into());
        }
    }
}

/// Candidates that came before the remote description.
async fn flush_candidates() {
    let Some((pc, early)) = with(|a| a.call.as_mut().and_then(|c| Some((c.pc.clone()?, std::mem::take(&mut c.early)))))
    else {
        return;
    };
    for s in early {
        add_candidate(&pc, s).await;
    }
}

fn send_signal(signal: Signal) {
    if let Some(call) = with(|a| a.call.as_ref().and_then(|c| c.id.clone())) {
        send(Pending::Other, |id| ClientToNode::Signal { id, call, signal });
    }
}

fn toggle(kind: &str) {
    let Some((stream, now_off)) = with(|a| {
        let c = a.call.as_mut()?;
        let off = if kind == "audio" {
            c.muted = !c.muted;
            c.muted
        } else {
            c.camera_off = !c.camera_off;
            c.camera_off
        };
        Some((c.local.clone(), off))
    }) else {
        return;
    };
    if let Some(s) = stream {
        rtc::set_enabled(&s, kind, !now_off);
    }
    let (id, label_on, label_off) =
        if kind == "audio" { ("mute-btn", "Mute", "Unmute") } else { ("camera-btn", "Camera off", "Camera on") };
    text(id, if now_off { label_off } else { label_on });
    let _ = el(id).set_attribute("aria-pressed", if now_off { "true" } else { "false" });
    let media = with(|a| a.call.as_ref().map(|c| Media { audio: !c.muted, video: c.media.video && !c.camera_off }));
    if let Some(media) = media {
        send_signal(Signal::Media { media });
    }
}

// ----- chat -----

fn send_chat() {
    let line = input("chat-input").value();
    if line.trim().is_empty() {
        return;
    }
    input("chat-input").set_value("");
    let dc = with(|a| a.call.as_ref().and_then(|c| c.dc.clone()));
    match dc.filter(|d| d.ready_state() == web_sys::RtcDataChannelState::Open) {
        Some(dc) => {
            let _ = dc.send_with_str(&line);
        }
        None => send_signal(Signal::Chat { text: line.clone() }),
    }
    chat_line(&line, true);
}

fn chat_line(line: &str, mine: bool) {
    let who =
        if mine { "You".to_string() } else { with(|a| a.call.as_ref().map(|c| c.peer.clone()).unwrap_or_default()) };
    let li = dom::make("li", if mine { "mine" } else { "" }, &format!("{who}: {line}"));
    let log = el("chat-log");
    let _ = log.append_child(&li);
    log.set_scroll_top(log.scroll_height());
}

// ----- history, notices, ICE -----

async fn load_ice() {
    let token = with(|a| a.token.clone());
    let Ok(r) = http::call("GET", "/api/v1/ice", token.as_deref(), None).await else { return };
    if !r.ok() {
        return;
    }
    let servers = r.body["ice_servers"].as_array().cloned().unwrap_or_default();
    let ice = servers
        .iter()
        .map(|s| IceServer {
            urls: s["urls"]
                .as_array()
                .map(|u| u.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
            username: s["username"].as_str().map(str::to_owned),
            credential: s["credential"].as_str().map(str::to_owned),
        })
        .collect();
    with(|a| a.ice = ice);
}

fn missed(notice: Notice) {
    notify(&format!("Missed call from {}", notice.from), "");
    wasm_bindgen_futures::spawn_local(async {
        load_history().await;
    });
}

fn notify(title: &str, body: &str) {
    if Notification::permission() == NotificationPermission::Granted {
        let opts = NotificationOptions::new();
        opts.set_body(body);
        let _ = Notification::new_with_options(title, &opts);
    } else if Notification::permission() == NotificationPermission::Default {
        let _ = Notification::request_permission();
    }
}

fn tick() {
    if let Some(t) = with(|a| a.call.as_ref().and_then(|c| c.answered_at)) {
        text("call-duration", &say::duration((dom::now_ms() - t).max(0.0) as u64));
    }
    // No keep-alive needed: the browser answers the node's pings.
}
