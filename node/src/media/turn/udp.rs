//! The TURN server's sockets: quinn-udp's batched receive (`recvmmsg`,
//! GRO-coalesced datagrams split) and segmented send (GSO), and the
//! per-thread scratch buffers the relay tasks share.

use std::cell::RefCell;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

use super::relay::{BATCH, MAX_GSO_BYTES, MAX_GSO_SEGMENT, SLOT};
use crate::pii::Pii;

/// A UDP socket registered with this thread's runtime, with quinn-udp's
/// batched receive and segmented (GSO) send.
pub(crate) struct Udp {
    pub(super) io: UdpSocket,
    state: UdpSocketState,
}

impl Udp {
    /// Wraps a bound, non-blocking socket (inside a runtime).
    pub(crate) fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        let state = UdpSocketState::new((&socket).into())?;
        Ok(Self { io: UdpSocket::from_std(socket)?, state })
    }

    /// Reads up to [`BATCH`] datagrams; `WouldBlock` when none is queued.
    pub(super) fn recv_batch(&self, rx: &mut Rx) -> io::Result<usize> {
        let Rx { buf, meta } = rx;
        let mut slots = buf.chunks_mut(SLOT);
        let mut iovs: [IoSliceMut<'_>; BATCH] =
            std::array::from_fn(|_| IoSliceMut::new(slots.next().unwrap_or_default()));
        self.io.try_io(Interest::READABLE, || self.state.recv((&self.io).into(), &mut iovs, meta))
    }

    /// Sends `contents` to `to`: one datagram, or (with `segment`) datagrams
    /// of `segment` bytes, the last possibly shorter. Drops them if the
    /// socket buffer is full.
    ///
    /// The send is made straight on the socket, not through tokio's
    /// readiness (`try_send_to`): a relay socket made a moment ago has no
    /// writable readiness yet until the reactor has turned, and tokio would
    /// answer `WouldBlock` without asking the kernel, dropping the first
    /// datagrams of a call.
    pub(super) fn send(&self, to: SocketAddr, contents: &[u8], segment: Option<usize>) {
        let segment_size = segment.filter(|s| contents.len() > *s);
        let t = Transmit { destination: to, ecn: None, contents, segment_size, src_ip: None };
        if let Err(e) = self.state.send((&self.io).into(), &t) {
            debug!(error = %e, to = %Pii(&to), "turn: datagram dropped");
        }
    }

    /// Datagrams one GSO send may carry.
    pub(super) fn max_segments(&self) -> usize {
        self.state.max_gso_segments()
    }
}

/// Buffers for one batched read.
pub(crate) struct Rx {
    buf: Vec<u8>,
    meta: [RecvMeta; BATCH],
}

impl Rx {
    /// An `Rx` without a buffer, to stand in while the real one is lent.
    pub(super) fn placeholder() -> Self {
        Self { buf: Vec::new(), meta: [RecvMeta::default(); BATCH] }
    }

    pub(crate) fn new() -> Self {
        Self { buf: vec![0; BATCH * SLOT], meta: [RecvMeta::default(); BATCH] }
    }

    /// The first `n` reads as datagrams (source, local address it came to,
    /// bytes), GRO-coalesced ones split.
    pub(super) fn datagrams(&self, n: usize) -> impl Iterator<Item = (SocketAddr, Option<IpAddr>, &[u8])> {
        self.meta.iter().take(n).enumerate().flat_map(move |(i, m)| {
            let slot = &self.buf[i * SLOT..i * SLOT + m.len.min(SLOT)];
            let stride = if m.stride == 0 { slot.len().max(1) } else { m.stride };
            slot.chunks(stride).map(move |d| (m.addr, m.dst_ip, d))
        })
    }
}

/// Datagrams for one destination, gathered so that one GSO send can carry
/// them: all of one size but the last, which may be shorter.
#[derive(Default)]
pub(super) struct Outbox {
    buf: Vec<u8>,
    segment: usize,
    count: usize,
    closed: bool,
}

impl Outbox {
    /// Whether a datagram of `len` bytes may join (always, when empty).
    pub(super) fn fits(&self, len: usize, max_segments: usize) -> bool {
        self.count == 0
            || (!self.closed
                && len <= self.segment
                && self.segment <= MAX_GSO_SEGMENT
                && self.count < max_segments
                && self.buf.len() + len <= MAX_GSO_BYTES)
    }

    /// Appends the datagram `write` writes.
    pub(super) fn push(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let start = self.buf.len();
        write(&mut self.buf);
        let len = self.buf.len() - start;
        if self.count == 0 {
            self.segment = len;
        } else if len < self.segment {
            self.closed = true;
        }
        self.count += 1;
    }

    /// Sends what was gathered through `udp` to `to`, and empties.
    pub(super) fn flush(&mut self, udp: &Udp, to: SocketAddr) {
        if self.count > 0 {
            udp.send(to, &self.buf, (self.count > 1).then_some(self.segment));
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }
}

thread_local! {
    /// Buffers the relay tasks of a thread share (they run one at a time,
    /// and never hold them across an await).
    pub(super) static SCRATCH: RefCell<(Rx, Outbox)> = RefCell::new((Rx::new(), Outbox::default()));
}
