//! The signalling WebSocket: one per device. Turns frames into typed
//! messages at the edge (rejecting the rest with typed errors), checks
//! sizes and rates, and hands call requests to the calls service.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use signalling::{
    Address, ClientToNode, DeviceId, EndReason, ErrorCode, NodeToClient, Route, Signal, PROTOCOL_VERSION,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::{debug, info_span, warn, Instrument};

use crate::api::http::ApiError;
use crate::pii::Pii;
use crate::services::calls::{Command, Outgoing, DEVICE_QUEUE};
use crate::state::AppState;

/// Frames above `max_frame_bytes` times this close the socket outright.
const HARD_LIMIT_FACTOR: usize = 4;
/// How often the node pings an idle socket.
const PING_EVERY: Duration = Duration::from_secs(30);

/// A token bucket: `rate` per second, bursts of `2 × rate`.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        let rate = f64::from(rate);
        Self { rate, tokens: rate * 2.0, at: Instant::now() }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.rate * 2.0);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// # `GET /api/v1/ws`
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Not a WebSocket upgrade (no `Upgrade`/`Connection` headers, wrong
    // version or key): the API's JSON error, not axum's plain text.
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::BadRequest(format!("expected a WebSocket upgrade: {}", e.body_text())).into_response()
        }
    };
    let Ok(permit) = state.connections.clone().try_acquire_owned() else {
        return ApiError::Unavailable("too many connections").into_response();
    };
    let hard = state.config.limits.max_frame_bytes * HARD_LIMIT_FACTOR;
    ws.max_message_size(hard)
        .max_frame_size(hard)
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(hard * 2)
        .on_upgrade(move |socket| {
            let conn = state.next_conn.fetch_add(1, Ordering::Relaxed);
            let span = info_span!("ws", conn, peer = %Pii(&peer.ip()), device = tracing::field::Empty);
            Connection { state, conn, permit }.run(socket).instrument(span)
        })
}

struct Connection {
    state: Arc<AppState>,
    conn: u64,
    #[allow(dead_code)] // Held for its Drop: frees a connection slot.
    permit: OwnedSemaphorePermit,
}

enum Flow {
    Continue,
    Close,
}

impl Connection {
    async fn run(self, socket: WebSocket) {
        let (mut sink, mut stream) = socket.split();
        let (tx, mut rx) = mpsc::channel::<Outgoing>(DEVICE_QUEUE);
        let writer = tokio::spawn(async move {
            let mut ping = tokio::time::interval(PING_EVERY);
            ping.tick().await;
            loop {
                tokio::select! {
                    out = rx.recv() => match out {
                        Some(Outgoing::Text(t)) => {
                            if sink.send(Message::Text(t.into())).await.is_err() {
                                break;
                            }
                        }
                        Some(Outgoing::Close(code, reason)) => {
                            let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                            break;
                        }
                        None => {
                            let _ = sink.close().await;
                            break;
                        }
                    },
                    _ = ping.tick() => {
                        if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let device = self.session(&mut stream, &tx).await;
        if let Some((device, _)) = &device {
            self.state.calls.send(Command::Disconnected { device: device.clone(), conn: self.conn }).await;
        }
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    }

    /// Reads frames until the socket ends. Returns the device it became.
    async fn session(
        &self,
        stream: &mut futures_util::stream::SplitStream<WebSocket>,
        tx: &mpsc::Sender<Outgoing>,
    ) -> Option<(DeviceId, Address)> {
        let limits = &self.state.config.limits;
        let timeouts = &self.state.config.timeouts;
        let mut bucket = Bucket::new(limits.ws_messages_per_second);
        let mut device: Option<(DeviceId, Address)> = None;
        let hello_deadline = tokio::time::Instant::now() + timeouts.hello;
        loop {
            let wait = if device.is_some() {
                tokio::time::timeout(timeouts.idle, stream.next()).await
            } else {
                tokio::time::timeout_at(hello_deadline, stream.next()).await
            };
            let frame = match wait {
                Err(_) => {
                    let (code, why) = if device.is_some() { (1001, "idle") } else { (1008, "no hello in time") };
                    if device.is_none() {
                        let e = NodeToClient::error(None, ErrorCode::NotAuthenticated, "no hello in time");
                        let _ = tx.send(Outgoing::Text(e.to_json())).await;
                    }
                    let _ = tx.send(Outgoing::Close(code, why)).await;
                    return device;
                }
                Ok(None) => return device,
                Ok(Some(Err(e))) => {
                    debug!(error = %e, "socket read failed");
                    if is_capacity(&e) {
                        let err = NodeToClient::error(None, ErrorCode::FrameTooLarge, "frame over the hard limit");
                        let _ = tx.send(Outgoing::Text(err.to_json())).await;
                        let _ = tx.send(Outgoing::Close(1009, "frame too large")).await;
                    }
                    return device;
                }
                Ok(Some(Ok(m))) => m,
            };
            let text = match frame {
                Message::Text(t) => t,
                Message::Binary(_) => {
                    let e = NodeToClient::error(None, ErrorCode::BinaryNotSupported, "frames are JSON text");
                    let _ = tx.send(Outgoing::Text(e.to_json())).await;
                    continue;
                }
                Message::Close(_) => return device,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if text.len() > limits.max_frame_bytes {
                let msg = format!("frame of {} bytes is over the {} byte limit", text.len(), limits.max_frame_bytes);
                let _ =
                    tx.send(Outgoing::Text(NodeToClient::error(None, ErrorCode::FrameTooLarge, msg).to_json())).await;
                continue;
            }
            let parsed = ClientToNode::parse(text.as_str());
            if !bucket.take() {
                let id = parsed.as_ref().map_or_else(|e| e.id, |m| Some(m.id()));
                let e = NodeToClient::error(id, ErrorCode::RateLimited, "too many messages; slow down");
                let _ = tx.send(Outgoing::Text(e.to_json())).await;
                continue;
            }
            let msg = match parsed {
                Ok(m) => m,
                Err(e) => {
                    let _ = tx.send(Outgoing::Text(NodeToClient::error(e.id, e.code, e.message).to_json())).await;
                    continue;
                }
            };
            let flow = match &device {
                None => self.hello(msg, tx, &mut device).await,
                Some((d, user)) => self.request(d, user, msg, tx).await,
            };
            if matches!(flow, Flow::Close) {
                return device;
            }
        }
    }

    async fn hello(
        &self,
        msg: ClientToNode,
        tx: &mpsc::Sender<Outgoing>,
        device: &mut Option<(DeviceId, Address)>,
    ) -> Flow {
        let reply_err = |id, code, m: &str| Outgoing::Text(NodeToClient::error(Some(id), code, m).to_json());
        let ClientToNode::Hello { id, version, token, resume } = msg else {
            let _ = tx.send(reply_err(msg.id(), ErrorCode::NotAuthenticated, "send hello first")).await;
            let _ = tx.send(Outgoing::Close(1008, "not authenticated")).await;
            return Flow::Close;
        };
        if version != PROTOCOL_VERSION {
            let m = format!("this node speaks protocol version {PROTOCOL_VERSION}");
            let _ = tx.send(reply_err(id, ErrorCode::UnsupportedVersion, &m)).await;
            let _ = tx.send(Outgoing::Close(1008, "unsupported version")).await;
            return Flow::Close;
        }
        let authed = match self.state.accounts.authenticate(&token) {
            Ok(a) => a,
            Err(e) => {
                let _ = tx.send(reply_err(id, ErrorCode::InvalidToken, &e.to_string())).await;
                let _ = tx.send(Outgoing::Close(1008, "invalid token")).await;
                return Flow::Close;
            }
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.state
            .calls
            .send(Command::Connect {
                hello: id,
                user: authed.user.clone(),
                session: authed.session.id.clone(),
                expires_at_ms: authed.session.expires_at_ms,
                resume,
                conn: self.conn,
                tx: tx.clone(),
                reply,
            })
            .await;
        match rx.await {
            Ok(Ok(d)) => {
                tracing::Span::current().record("device", d.0.as_str());
                *device = Some((d, authed.user));
                Flow::Continue
            }
            Ok(Err(code)) => {
                let m = match code {
                    ErrorCode::TooManyDevices => "too many devices connected for this user",
                    ErrorCode::ShuttingDown => "the node is shutting down; reconnect later",
                    _ => "that device cannot be resumed; send hello without resume",
                };
                let _ = tx.send(reply_err(id, code, m)).await;
                if code == ErrorCode::ShuttingDown {
                    return Flow::Close;
                }
                Flow::Continue
            }
            Err(_) => {
                let _ = tx.send(reply_err(id, ErrorCode::Internal, "calls service unavailable")).await;
                Flow::Close
            }
        }
    }

    async fn request(&self, device: &DeviceId, user: &Address, msg: ClientToNode, tx: &mpsc::Sender<Outgoing>) -> Flow {
        let limits = &self.state.config.limits;
        let send = |m: NodeToClient| Outgoing::Text(m.to_json());
        match msg {
            ClientToNode::Hello { id, .. } => {
                let _ = tx
                    .send(send(NodeToClient::error(Some(id), ErrorCode::AlreadyAuthenticated, "already authenticated")))
                    .await;
            }
            ClientToNode::Ping { id } => {
                let _ = tx.send(send(NodeToClient::Pong { id })).await;
            }
            ClientToNode::Idle { id, idle } => {
                self.state.calls.send(Command::Idle { device: device.clone(), idle }).await;
                let _ = tx.send(send(NodeToClient::Ok { id })).await;
            }
            ClientToNode::MarkRead { id, notice } => {
                let reply = match self.state.store.mark_notice_read(user.name.as_str(), notice) {
                    Ok(true) => match self.state.store.flush().await {
                        Ok(()) => NodeToClient::Ok { id },
                        Err(e) => NodeToClient::error(Some(id), ErrorCode::Internal, e.to_string()),
                    },
                    Ok(false) => NodeToClient::error(Some(id), ErrorCode::NotFound, "no such notice"),
                    Err(e) => {
                        warn!(error = %e, "mark_read failed");
                        NodeToClient::error(Some(id), ErrorCode::Internal, "store error")
                    }
                };
                let _ = tx.send(send(reply)).await;
            }
            ClientToNode::Call { id, to, media } => {
                let zone = self.state.accounts.zone();
                let to = match Address::parse_with_default_zone(&to, zone) {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = tx
                            .send(send(NodeToClient::error(Some(id), ErrorCode::InvalidAddress, e.to_string())))
                            .await;
                        return Flow::Continue;
                    }
                };
                let route = if &to.zone != zone {
                    // Other zones are reached through the mesh; without it,
                    // no node is known to hold that zone.
                    if self.state.mesh.is_some() {
                        Route::Remote
                    } else {
                        Route::Refused(EndReason::UnknownZone)
                    }
                } else {
                    match self.state.store.user_exists(to.name.as_str()) {
                        Ok(true) => Route::Local,
                        Ok(false) => Route::Refused(EndReason::UnknownUser),
                        Err(e) => {
                            warn!(error = %e, "user lookup failed");
                            let _ =
                                tx.send(send(NodeToClient::error(Some(id), ErrorCode::Internal, "store error"))).await;
                            return Flow::Continue;
                        }
                    }
                };
                self.state.calls.send(Command::Dial { device: device.clone(), id, to, route, media }).await;
            }
            ClientToNode::Signal { id, call, signal } => {
                let len = signal.payload_len();
                let too_big = match &signal {
                    s if s.is_sdp() && len > limits.max_sdp_bytes => {
                        Some((ErrorCode::SdpTooLarge, limits.max_sdp_bytes))
                    }
                    Signal::Ice { .. } | Signal::Chat { .. } if len > limits.max_chat_bytes => {
                        Some((ErrorCode::TextTooLarge, limits.max_chat_bytes))
                    }
                    _ => None,
                };
                if let Some((code, max)) = too_big {
                    let m = format!("{len} bytes is over the {max} byte limit");
                    let _ = tx.send(send(NodeToClient::error(Some(id), code, m))).await;
                    return Flow::Continue;
                }
                let msg = ClientToNode::Signal { id, call, signal };
                self.state.calls.send(Command::Request { device: device.clone(), msg }).await;
            }
            other => {
                self.state.calls.send(Command::Request { device: device.clone(), msg: other }).await;
            }
        }
        Flow::Continue
    }
}

fn is_capacity(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("Space limit exceeded") || text.contains("too long") || text.contains("Capacity")
}
