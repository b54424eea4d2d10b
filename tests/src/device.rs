//! WebSocket devices: [`Device`], one signalling WebSocket of a user over
//! TLS to the node: connecting and `hello`, sending frames, waiting for the
//! reply to a request while buffering events, consuming events, and the
//! free helpers that read replies ([`reply_id`], [`check_error`]). The
//! requests and events by name are in [`crate::calls`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use signalling::{ClientToNode, DeviceId, ErrorCode, NodeToClient, RequestId, PROTOCOL_VERSION};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::{Node, WAIT};

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// One signalling WebSocket: a device of a user.
pub struct Device {
    ws: Ws,
    label: String,
    next_id: RequestId,
    events: VecDeque<NodeToClient>,
    replies: VecDeque<NodeToClient>,
    closed: Option<Option<u16>>,
    /// The device id the node gave in `welcome`.
    pub id: Option<DeviceId>,
}

/// What one read from the socket gave.
enum Frame {
    Msg(NodeToClient),
    Closed(Option<u16>),
}

impl Node {
    /// Opens a WebSocket (no `hello` yet).
    pub async fn connect(&self, label: &str) -> Result<Device> {
        Device::connect(self, label).await
    }

    /// Opens a WebSocket and says `hello` with `token`; expects `welcome`.
    pub async fn device(&self, token: &str, label: &str) -> Result<Device> {
        let mut d = Device::connect(self, label).await?;
        d.hello(token).await?;
        Ok(d)
    }

    fn tls_connector(&self) -> Result<tokio_rustls::TlsConnector> {
        let mut roots = rustls::RootCertStore::empty();
        let mut pem = self.cert_pem.as_slice();
        for cert in rustls_pemfile::certs(&mut pem) {
            roots.add(cert.context("reading cert.pem")?).context("adding the node's certificate as a root")?;
        }
        if roots.is_empty() {
            bail!("no certificate in {}/tls/cert.pem", self.data_dir().display());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

impl Device {
    /// Connects a TLS WebSocket to `wss://127.0.0.1:PORT/api/v1/ws`.
    pub async fn connect(node: &Node, label: &str) -> Result<Device> {
        let connector = node.tls_connector()?;
        let tcp = tokio::time::timeout(WAIT, TcpStream::connect(node.addr()))
            .await
            .map_err(|_| anyhow!("{label}: TCP connect to {} timed out", node.addr()))?
            .with_context(|| format!("{label}: TCP connect to {}", node.addr()))?;
        tcp.set_nodelay(true).context("nodelay")?;
        let name = rustls::pki_types::ServerName::IpAddress(node.addr().ip().into());
        let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .map_err(|_| anyhow!("{label}: TLS handshake timed out"))?
            .with_context(|| format!("{label}: TLS handshake with {}", node.addr()))?;
        let url = format!("wss://{}/api/v1/ws", node.addr());
        let (ws, _resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url.as_str(), tls))
            .await
            .map_err(|_| anyhow!("{label}: WebSocket handshake timed out"))?
            .with_context(|| format!("{label}: WebSocket handshake at {url}"))?;
        Ok(Device {
            ws,
            label: label.to_owned(),
            next_id: 1,
            events: VecDeque::new(),
            replies: VecDeque::new(),
            closed: None,
            id: None,
        })
    }

    /// The label used in failure messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A fresh request id.
    pub fn next_id(&mut self) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends `hello` with `token`; expects `welcome` (and no event before
    /// it), remembers the device id, returns the welcome.
    pub async fn hello(&mut self, token: &str) -> Result<NodeToClient> {
        self.hello_with(token, None).await
    }

    /// Sends `hello` with `token` and `resume`; expects `welcome`.
    pub async fn hello_with(&mut self, token: &str, resume: Option<DeviceId>) -> Result<NodeToClient> {
        let id = self.next_id();
        let msg = ClientToNode::Hello { id, version: PROTOCOL_VERSION, token: token.to_owned(), resume };
        let reply = self.request(msg).await?;
        match &reply {
            NodeToClient::Welcome { device, .. } => {
                if !self.events.is_empty() {
                    bail!("{}: events came before welcome: {:?}", self.label, self.events);
                }
                self.id = Some(device.clone());
                Ok(reply)
            }
            other => bail!("{}: expected welcome, got {other:?}", self.label),
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &ClientToNode) -> Result<()> {
        self.send_raw(msg.to_json()).await
    }

    /// Sends one text frame as is.
    pub async fn send_raw(&mut self, text: impl Into<String>) -> Result<()> {
        let text: String = text.into();
        tokio::time::timeout(WAIT, self.ws.send(Message::text(text)))
            .await
            .map_err(|_| anyhow!("{}: sending a text frame timed out", self.label))?
            .with_context(|| format!("{}: sending a text frame", self.label))
    }

    /// Sends one binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        tokio::time::timeout(WAIT, self.ws.send(Message::binary(bytes)))
            .await
            .map_err(|_| anyhow!("{}: sending a binary frame timed out", self.label))?
            .with_context(|| format!("{}: sending a binary frame", self.label))
    }

    /// Sends `msg` and waits for the reply with its id; events that come
    /// meanwhile are kept for [`Device::next_event`].
    pub async fn request(&mut self, msg: ClientToNode) -> Result<NodeToClient> {
        let id = msg.id();
        self.send(&msg).await?;
        self.reply_to(id, WAIT).await.with_context(|| format!("request {}", msg.to_json()))
    }

    /// Waits for the reply whose id is `id`.
    pub async fn reply_to(&mut self, id: RequestId, timeout: Duration) -> Result<NodeToClient> {
        if let Some(pos) = self.replies.iter().position(|r| reply_id(r) == Some(Some(id))) {
            if let Some(r) = self.replies.remove(pos) {
                return Ok(r);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline).await? {
                Some(Frame::Msg(m)) => match reply_id(&m) {
                    Some(Some(got)) if got == id => return Ok(m),
                    Some(_) => self.replies.push_back(m),
                    None => self.events.push_back(m),
                },
                Some(Frame::Closed(code)) => bail!(
                    "{}: socket closed (code {code:?}) while waiting for the reply to request {id}; \
                     other replies: {:?}; events: {:?}",
                    self.label,
                    Listing(&self.replies),
                    Listing(&self.events)
                ),
                None => bail!(
                    "{}: no reply to request {id} within {timeout:?}; other replies: {:?}; events: {:?}",
                    self.label,
                    Listing(&self.replies),
                    Listing(&self.events)
                ),
            }
        }
    }

    /// The next reply of any id (or an `error` without id), for raw frames.
    pub async fn next_reply(&mut self, timeout: Duration) -> Result<NodeToClient> {
        if let Some(r) = self.replies.pop_front() {
            return Ok(r);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline).await? {
                Some(Frame::Msg(m)) if reply_id(&m).is_some() => return Ok(m),
                Some(Frame::Msg(m)) => self.events.push_back(m),
                Some(Frame::Closed(code)) => {
                    bail!("{}: socket closed (code {code:?}) while waiting for a reply", self.label)
                }
                None => bail!("{}: no reply within {timeout:?}; events: {:?}", self.label, Listing(&self.events)),
            }
        }
    }

    /// Expects the next reply to be an `error` with `code` (and, if `id` is
    /// given, that id).
    pub async fn expect_error_reply(&mut self, code: ErrorCode, id: Option<RequestId>) -> Result<NodeToClient> {
        let r = self.next_reply(WAIT).await?;
        check_error(&self.label, &r, code, id)?;
        Ok(r)
    }

    /// The next event (buffered first).
    pub async fn next_event(&mut self, timeout: Duration) -> Result<NodeToClient> {
        if let Some(e) = self.events.pop_front() {
            return Ok(e);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline).await? {
                Some(Frame::Msg(m)) if reply_id(&m).is_none() => return Ok(m),
                Some(Frame::Msg(m)) => self.replies.push_back(m),
                Some(Frame::Closed(code)) => {
                    bail!("{}: socket closed (code {code:?}) while waiting for an event", self.label)
                }
                None => bail!("{}: no event within {timeout:?}", self.label),
            }
        }
    }

    /// Waits for the first event matching `pred`; other events stay buffered
    /// in order. `what` names the expectation in the failure message.
    pub async fn expect_event(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&NodeToClient) -> bool,
    ) -> Result<NodeToClient> {
        if let Some(pos) = self.events.iter().position(&pred) {
            if let Some(e) = self.events.remove(pos) {
                return Ok(e);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline).await? {
                Some(Frame::Msg(m)) => {
                    if reply_id(&m).is_some() {
                        self.replies.push_back(m);
                    } else if pred(&m) {
                        return Ok(m);
                    } else {
                        self.events.push_back(m);
                    }
                }
                Some(Frame::Closed(code)) => bail!(
                    "{}: expected {what}, but the socket closed (code {code:?}); events that came: {:?}",
                    self.label,
                    Listing(&self.events)
                ),
                None => {
                    bail!(
                        "{}: expected {what} within {timeout:?}; events that came: {:?}",
                        self.label,
                        Listing(&self.events)
                    )
                }
            }
        }
    }

    /// Fails if any event is buffered or arrives within `dur`.
    pub async fn expect_no_event(&mut self, dur: Duration) -> Result<()> {
        self.expect_no_event_matching("event", dur, |_| true).await
    }

    /// Fails if an event matching `pred` is buffered or arrives within `dur`;
    /// other events stay buffered.
    pub async fn expect_no_event_matching(
        &mut self,
        what: &str,
        dur: Duration,
        pred: impl Fn(&NodeToClient) -> bool,
    ) -> Result<()> {
        if let Some(e) = self.events.iter().find(|e| pred(e)) {
            bail!("{}: expected no {what}, but had {e:?}", self.label);
        }
        let deadline = Instant::now() + dur;
        loop {
            match self.read(deadline).await? {
                Some(Frame::Msg(m)) => {
                    if reply_id(&m).is_some() {
                        self.replies.push_back(m);
                    } else if pred(&m) {
                        bail!("{}: expected no {what} for {dur:?}, but got {m:?}", self.label);
                    } else {
                        self.events.push_back(m);
                    }
                }
                Some(Frame::Closed(code)) => {
                    bail!("{}: expected no {what}, but the socket closed (code {code:?})", self.label)
                }
                None => return Ok(()),
            }
        }
    }

    /// Takes every buffered event.
    pub fn drain_events(&mut self) -> Vec<NodeToClient> {
        self.events.drain(..).collect()
    }

    /// Waits until the node closes the socket; returns the close code (None
    /// when the connection just ended). Messages meanwhile are buffered.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Result<Option<u16>> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read(deadline).await? {
                Some(Frame::Msg(m)) => {
                    if reply_id(&m).is_some() {
                        self.replies.push_back(m);
                    } else {
                        self.events.push_back(m);
                    }
                }
                Some(Frame::Closed(code)) => return Ok(code),
                None => bail!(
                    "{}: expected the node to close the socket within {timeout:?}; it stayed open (replies {:?}, events {:?})",
                    self.label,
                    Listing(&self.replies),
                    Listing(&self.events)
                ),
            }
        }
    }

    /// Drops the connection without a close handshake (the TCP socket just
    /// goes away), as a crashed browser or a lost network would.
    pub fn drop_connection(self) {
        drop(self);
    }

    /// Closes the socket politely.
    pub async fn close(mut self) -> Result<()> {
        let _ = tokio::time::timeout(WAIT, self.ws.close(None)).await;
        Ok(())
    }

    /// Reads one frame, or `None` at the deadline.
    async fn read(&mut self, deadline: Instant) -> Result<Option<Frame>> {
        if let Some(code) = self.closed {
            return Ok(Some(Frame::Closed(code)));
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return Ok(None),
                Ok(next) => next,
            };
            match next {
                None | Some(Err(_)) => {
                    self.closed = Some(None);
                    return Ok(Some(Frame::Closed(None)));
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.as_ref().map(|f: &CloseFrame| u16::from(f.code));
                    self.closed = Some(code);
                    return Ok(Some(Frame::Closed(code)));
                }
                Some(Ok(Message::Text(text))) => {
                    let msg = NodeToClient::parse(text.as_str()).map_err(|e| {
                        anyhow!(
                            "{}: the node sent a frame that is not a NodeToClient ({e}): {}",
                            self.label,
                            text.as_str()
                        )
                    })?;
                    return Ok(Some(Frame::Msg(msg)));
                }
                Some(Ok(Message::Binary(b))) => {
                    bail!("{}: the node sent a binary frame ({} bytes)", self.label, b.len())
                }
                Some(Ok(_)) => {} // ping, pong, raw frames
            }
        }
    }
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("label", &self.label)
            .field("id", &self.id)
            .field("events", &self.events)
            .field("replies", &self.replies)
            .finish_non_exhaustive()
    }
}

/// A short listing of buffered messages for failure messages: the first
/// few, then how many more.
struct Listing<'a>(&'a VecDeque<NodeToClient>);

impl std::fmt::Debug for Listing<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 8;
        let mut list = f.debug_list();
        list.entries(self.0.iter().take(SHOWN));
        if self.0.len() > SHOWN {
            list.entry(&format_args!("… and {} more", self.0.len() - SHOWN));
        }
        list.finish()
    }
}

/// `Some(id)` for replies (an error may have no id), `None` for events.
pub fn reply_id(msg: &NodeToClient) -> Option<Option<RequestId>> {
    match msg {
        NodeToClient::Welcome { id, .. }
        | NodeToClient::Ok { id }
        | NodeToClient::CallPlaced { id, .. }
        | NodeToClient::Pong { id } => Some(Some(*id)),
        NodeToClient::Error { id, .. } => Some(*id),
        _ => None,
    }
}

/// Fails unless `reply` is an `error` with `code` (and `id` when given).
pub fn check_error(label: &str, reply: &NodeToClient, code: ErrorCode, id: Option<RequestId>) -> Result<()> {
    match reply {
        NodeToClient::Error { id: got_id, code: got, message } => {
            if *got != code {
                bail!("{label}: expected error {code:?}, got error {got:?} ({message})");
            }
            if id.is_some() && *got_id != id {
                bail!("{label}: expected error {code:?} with id {id:?}, got id {got_id:?}");
            }
            Ok(())
        }
        other => bail!("{label}: expected error {code:?}, got {other:?}"),
    }
}
