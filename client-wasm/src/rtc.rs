//! WebRTC: the peer connection, local media, and the chat data channel.

use js_sys::{Array, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    MediaStream, MediaStreamConstraints, MediaStreamTrack, RtcConfiguration, RtcDataChannel, RtcIceCandidateInit,
    RtcIceServer, RtcIceTransportPolicy, RtcPeerConnection, RtcSdpType, RtcSessionDescriptionInit,
};

use crate::dom;

/// An ICE server as the node hands it out (`GET /api/v1/ice`).
#[derive(Debug, Clone)]
pub struct IceServer {
    /// `stun:` / `turn:` URLs.
    pub urls: Vec<String>,
    /// TURN username (time-limited).
    pub username: Option<String>,
    /// TURN credential.
    pub credential: Option<String>,
}

fn js_err(v: JsValue) -> String {
    v.as_string()
        .or_else(|| Reflect::get(&v, &"message".into()).ok().and_then(|m| m.as_string()))
        .unwrap_or_else(|| format!("{v:?}"))
}

/// A new peer connection with the node's ICE servers.
pub fn peer_connection(servers: &[IceServer], relay_only: bool) -> Result<RtcPeerConnection, String> {
    let config = RtcConfiguration::new();
    let list = Array::new();
    for s in servers {
        let server = RtcIceServer::new();
        let urls = Array::new();
        for u in &s.urls {
            urls.push(&JsValue::from_str(u));
        }
        server.set_urls(&urls);
        if let Some(u) = &s.username {
            server.set_username(u);
        }
        if let Some(c) = &s.credential {
            server.set_credential(c);
        }
        list.push(&server);
    }
    config.set_ice_servers(&list);
    if relay_only {
        config.set_ice_transport_policy(RtcIceTransportPolicy::Relay);
    }
    let pc = RtcPeerConnection::new_with_configuration(&config).map_err(js_err)?;
    dom::expose("xarxaPc", &pc);
    Ok(pc)
}

/// Asks for the microphone (and camera) and adds the tracks to `pc`.
pub async fn add_local_media(pc: &RtcPeerConnection, video: bool) -> Result<MediaStream, String> {
    let devices = dom::window().navigator().media_devices().map_err(js_err)?;
    let constraints = MediaStreamConstraints::new();
    constraints.set_audio(&JsValue::TRUE);
    constraints.set_video(&JsValue::from_bool(video));
    let promise = devices.get_user_media_with_constraints(&constraints).map_err(js_err)?;
    let stream: MediaStream = JsFuture::from(promise).await.map_err(js_err)?.unchecked_into();
    for track in stream.get_tracks().iter() {
        let track: MediaStreamTrack = track.unchecked_into();
        pc.add_track_0(&track, &stream);
    }
    Ok(stream)
}

/// Creates the chat data channel (caller side).
pub fn chat_channel(pc: &RtcPeerConnection) -> RtcDataChannel {
    pc.create_data_channel("chat")
}

async fn description(promise: js_sys::Promise) -> Result<String, String> {
    let desc = JsFuture::from(promise).await.map_err(js_err)?;
    Reflect::get(&desc, &"sdp".into()).ok().and_then(|s| s.as_string()).ok_or_else(|| "no sdp".into())
}

fn init(kind: RtcSdpType, sdp: &str) -> RtcSessionDescriptionInit {
    let d = RtcSessionDescriptionInit::new(kind);
    d.set_sdp(sdp);
    d
}

/// Creates an offer and sets it as the local description.
pub async fn offer(pc: &RtcPeerConnection) -> Result<String, String> {
    let sdp = description(pc.create_offer()).await?;
    JsFuture::from(pc.set_local_description(&init(RtcSdpType::Offer, &sdp))).await.map_err(js_err)?;
    Ok(sdp)
}

/// Applies a remote offer and answers it.
pub async fn answer(pc: &RtcPeerConnection, offer: &str) -> Result<String, String> {
    JsFuture::from(pc.set_remote_description(&init(RtcSdpType::Offer, offer))).await.map_err(js_err)?;
    let sdp = description(pc.create_answer()).await?;
    JsFuture::from(pc.set_local_description(&init(RtcSdpType::Answer, &sdp))).await.map_err(js_err)?;
    Ok(sdp)
}

/// Applies the remote answer.
pub async fn accept_answer(pc: &RtcPeerConnection, answer: &str) -> Result<(), String> {
    JsFuture::from(pc.set_remote_description(&init(RtcSdpType::Answer, answer))).await.map_err(js_err)?;
    Ok(())
}

/// Adds a remote ICE candidate (an empty one ends the candidates).
pub async fn add_candidate(
    pc: &RtcPeerConnection,
    candidate: &str,
    mid: Option<&str>,
    index: Option<u16>,
) -> Result<(), String> {
    if candidate.is_empty() {
        return Ok(());
    }
    let c = RtcIceCandidateInit::new(candidate);
    c.set_sdp_mid(mid);
    c.set_sdp_m_line_index(index);
    JsFuture::from(pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(&c))).await.map_err(js_err)?;
    Ok(())
}

/// Turns every track of `kind` ("audio" or "video") on or off.
pub fn set_enabled(stream: &MediaStream, kind: &str, on: bool) {
    for t in stream.get_tracks().iter() {
        let t: MediaStreamTrack = t.unchecked_into();
        if t.kind() == kind {
            t.set_enabled(on);
        }
    }
}

/// Stops every track (releases camera and microphone).
pub fn stop(stream: &MediaStream) {
    for t in stream.get_tracks().iter() {
        t.unchecked_into::<MediaStreamTrack>().stop();
    }
}
