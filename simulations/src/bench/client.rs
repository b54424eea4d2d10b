//! A lean signalling client for many sockets to one node.
//!
//! The harness's [`xarxa_tests::Device`] is made for tests: each builds its
//! own TLS configuration and keeps tungstenite's default 128 KiB read
//! buffer, which tungstenite zero-fills on every read (a third of the
//! bench's CPU with two thousand devices). Here every connection shares one
//! TLS configuration (trusting only the node's certificate, without session
//! resumption, so every socket pays a full handshake as a distinct browser
//! would) and reads through a 4 KiB buffer, so that the client takes as
//! little as possible of the CPU the node it measures runs on.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use signalling::{ClientToNode, NodeToClient, RequestId, PROTOCOL_VERSION};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use xarxa_tests::Node;

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Opens connections to one node.
#[derive(Clone)]
pub struct LeanClient {
    tls: tokio_rustls::TlsConnector,
    addr: SocketAddr,
    ws_config: WebSocketConfig,
}

/// How far a connection goes before it idles: the lower stages tell what
/// part of a socket's memory the TLS session, the WebSocket and the device
/// registration take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// TCP and TLS handshakes, no HTTP request.
    Tls,
    /// WebSocket upgrade, no `hello` (needs a long `timeouts.hello`).
    Upgraded,
    /// `hello` answered by `welcome`: an authenticated device.
    Authenticated,
}

/// One idle connection.
pub enum Held {
    /// After the TLS handshake.
    Tls(Box<TlsStream<TcpStream>>),
    /// After the WebSocket upgrade (and maybe `welcome`).
    Ws(Box<Ws>),
}

/// An authenticated device: typed messages over one socket.
pub struct LeanDevice {
    ws: Ws,
    next_id: RequestId,
    /// Messages read while waiting for something else, oldest first.
    unread: VecDeque<NodeToClient>,
}

impl LeanClient {
    /// A client for `node`, trusting the certificate in its data directory.
    pub fn new(node: &Node) -> Result<Self> {
        let cert_path = node.data_dir().join("tls").join("cert.pem");
        let pem = std::fs::read(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            roots.add(cert.context("parsing cert.pem")?).context("adding the node's certificate")?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        let ws_config = WebSocketConfig::default().read_buffer_size(4 * 1024).write_buffer_size(0);
        Ok(Self { tls: tokio_rustls::TlsConnector::from(Arc::new(config)), addr: node.addr(), ws_config })
    }

    /// Opens a connection up to `stage`; at [`Stage::Authenticated`], says
    /// `hello` with `token` and waits for `welcome` (events before it, such
    /// as unread missed-call notices, are dropped).
    pub async fn open(&self, token: &str, stage: Stage) -> Result<Held> {
        let tcp = TcpStream::connect(self.addr).await.with_context(|| format!("TCP connect to {}", self.addr))?;
        tcp.set_nodelay(true).context("nodelay")?;
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        let tls = self.tls.connect(name, tcp).await.context("TLS handshake")?;
        if stage == Stage::Tls {
            return Ok(Held::Tls(Box::new(tls)));
        }
        let url = format!("wss://{}/api/v1/ws", self.addr);
        let (ws, _) = tokio_tungstenite::client_async_with_config(url.as_str(), tls, Some(self.ws_config))
            .await
            .context("WebSocket handshake")?;
        if stage == Stage::Upgraded {
            return Ok(Held::Ws(Box::new(ws)));
        }
        let mut device = LeanDevice { ws, next_id: 1, unread: VecDeque::new() };
        device.hello(token).await?;
        Ok(Held::Ws(Box::new(device.ws)))
    }

    /// Opens an authenticated device with `token`.
    pub async fn device(&self, token: &str) -> Result<LeanDevice> {
        match self.open(token, Stage::Upgraded).await? {
            Held::Ws(ws) => {
                let mut device = LeanDevice { ws: *ws, next_id: 1, unread: VecDeque::new() };
                device.hello(token).await?;
                Ok(device)
            }
            Held::Tls(_) => bail!("no WebSocket"),
        }
    }
}

impl Held {
    /// Reads (so the node's pings are answered) until `stop` turns true
    /// (then `true`) or the node ends the connection (then `false`).
    pub async fn idle(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return true,
                open = self.read_some(&mut buf) => if !open { return false },
            }
        }
    }

    async fn read_some(&mut self, buf: &mut [u8]) -> bool {
        match self {
            Held::Tls(tls) => matches!(tokio::io::AsyncReadExt::read(tls.as_mut(), buf).await, Ok(n) if n > 0),
            Held::Ws(ws) => matches!(ws.next().await, Some(Ok(m)) if !m.is_close()),
        }
    }

    /// Closes the connection (bounded).
    pub async fn close(self) {
        let limit = Duration::from_secs(2);
        match self {
            Held::Tls(mut tls) => {
                let _ = tokio::time::timeout(limit, tokio::io::AsyncWriteExt::shutdown(tls.as_mut())).await;
            }
            Held::Ws(mut ws) => {
                let _ = tokio::time::timeout(limit, WebSocketStream::close(ws.as_mut(), None)).await;
            }
        }
    }
}

impl LeanDevice {
    /// A fresh request id.
    pub fn next_id(&mut self) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    async fn hello(&mut self, token: &str) -> Result<()> {
        let id = self.next_id();
        self.send(&ClientToNode::Hello { id, version: PROTOCOL_VERSION, token: token.to_owned(), resume: None })
            .await?;
        let reply = self.reply(id, Duration::from_secs(30)).await.context("waiting for welcome")?;
        self.unread.clear();
        match reply {
            NodeToClient::Welcome { .. } => Ok(()),
            other => bail!("hello refused: {other:?}"),
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, msg: &ClientToNode) -> Result<()> {
        self.ws.send(Message::text(msg.to_json())).await.context("sending a frame")
    }

    /// Waits (at most `timeout`) for the reply to request `id` (a success
    /// or an `error`); other messages stay unread.
    pub async fn reply(&mut self, id: RequestId, timeout: Duration) -> Result<NodeToClient> {
        self.wait_for(&format!("the reply to request {id}"), timeout, |m| reply_id(m) == Some(id)).await
    }

    /// Waits (at most `timeout`) for the first message matching `pred`;
    /// other messages stay unread, in order. `what` names it in errors.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&NodeToClient) -> bool,
    ) -> Result<NodeToClient> {
        if let Some(i) = self.unread.iter().position(&pred) {
            if let Some(m) = self.unread.remove(i) {
                return Ok(m);
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("no {what} within {timeout:?}; unread: {:?}", self.unread))?;
            let text = match frame {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(f))) => bail!("the node closed the socket waiting for {what}: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(anyhow!(e).context(format!("reading, waiting for {what}"))),
                None => bail!("the connection ended waiting for {what}"),
            };
            let msg = NodeToClient::parse(text.as_str())
                .map_err(|e| anyhow!("unreadable frame from the node ({e}): {}", text.as_str()))?;
            if pred(&msg) {
                return Ok(msg);
            }
            if self.unread.len() >= 64 {
                bail!("64 unexpected messages waiting for {what}: {:?}", self.unread);
            }
            self.unread.push_back(msg);
        }
    }

    /// Closes the socket (bounded).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

/// The request id a reply answers (`None` for events and id-less errors).
fn reply_id(msg: &NodeToClient) -> Option<RequestId> {
    match msg {
        NodeToClient::Welcome { id, .. }
        | NodeToClient::Ok { id }
        | NodeToClient::CallPlaced { id, .. }
        | NodeToClient::Pong { id } => Some(*id),
        NodeToClient::Error { id, .. } => *id,
        _ => None,
    }
}
