//! End-to-end harness for Xarxa: real `xarxa` processes on loopback, driven
//! over HTTPS and the signalling WebSocket exactly as browsers drive them.
//!
//! # The pieces
//!
//! Each module holds what drives one thing; everything is re-exported at the
//! crate root (`xarxa_tests::Node`, `xarxa_tests::connect_call`, …).
//!
//! - [`node`]: [`Node`], one `xarxa run` process with its own temporary data
//!   directory, listening on `127.0.0.1:0`. [`Node::start`] builds the binary
//!   once per test binary (with `escargot`, or takes `$XARXA_BIN`; see
//!   [`xarxa_bin`]), spawns it, and waits (bounded) for `DATA/node.json`
//!   ([`NodeInfo`]) to learn the port. The process is killed with SIGKILL
//!   and reaped when the [`Node`] is dropped, also on panic; a watchdog
//!   shell kills it as well if the test process itself goes away, so a node
//!   kept in a `static` (shared by the tests of one file) does not outlive
//!   its test binary.
//! - [`http`]: HTTP helpers on [`Node`] ([`Node::get`], [`Node::post`],
//!   [`Node::register`], [`Node::login`], [`Node::history`],
//!   [`Node::notices`], …) with a client that trusts exactly the node's
//!   self-signed certificate, and what they answer ([`Reply`], [`Session`],
//!   [`User`]).
//! - [`device`]: [`Device`], one signalling WebSocket (TLS to `127.0.0.1`,
//!   the node's certificate as the only root). [`Device::request`] sends a
//!   request and waits for the reply with the same id while buffering
//!   events; [`Device::next_event`], [`Device::expect_event`] and
//!   [`Device::expect_no_event`] consume events.
//! - [`calls`]: the signalling requests and call events by name on
//!   [`Device`] ([`Device::call`], [`Device::accept`],
//!   [`Device::expect_incoming`], [`Device::expect_ended`], …), and
//!   [`connect_call`] to set up a call between two devices.
//! - [`contacts`]: the contacts and presence API on [`Node`]
//!   ([`Node::contacts`], [`Node::ask_contact`], …) and their events on
//!   [`Device`] ([`Device::expect_presence`], …).
//! - [`rogue`]: a rogue mesh node of the test's own key, and the forged
//!   records it offers.
//! - Here: the bounds ([`WAIT`], [`START_WAIT`], [`STOP_WAIT`]), the test
//!   [`PASSWORD`], the media sets [`AUDIO`] and [`AUDIO_VIDEO`], and small
//!   utilities ([`init_crypto`], [`now_ms`], [`unique`]).
//!
//! # Rules the harness keeps
//!
//! Every wait is bounded ([`WAIT`] unless told otherwise), and every failure
//! is an [`anyhow::Error`] that says what was expected and what came
//! instead, so a test can simply use `?`. Nothing here sleeps to assert
//! timing: waits end as soon as what is awaited arrives.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use xarxa_tests::{Node, WAIT};
//! let node = Node::start("gracia", &[("XARXA_TIMEOUTS__RING", "2s")])?;
//! let alice = node.user("alice").await?;
//! let bob = node.user("bob").await?;
//! let mut a1 = node.device(&alice.token, "a1").await?;
//! let mut b1 = node.device(&bob.token, "b1").await?;
//! let call = a1.call(&bob.address).await?;
//! b1.expect_incoming(&call, &alice.address, WAIT).await?;
//! b1.accept(&call).await?;
//! a1.expect_accepted(&call, WAIT).await?;
//! # Ok(()) }
//! ```

pub mod calls;
pub mod contacts;
pub mod device;
pub mod http;
pub mod node;
pub mod rogue;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use signalling::Media;

pub use calls::{connect_call, fake_sdp};
pub use device::{check_error, reply_id, Device};
pub use http::{Reply, Session, User};
pub use node::{xarxa_bin, Node, NodeInfo};

/// Default bound for waiting on a reply or an event.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long [`Node::start`] waits for `node.json` to appear.
pub const START_WAIT: Duration = Duration::from_secs(30);

/// How long a graceful stop may take before the node is killed.
pub const STOP_WAIT: Duration = Duration::from_secs(10);

/// Password given to users made by [`Node::user`].
pub const PASSWORD: &str = "correct horse battery";

/// Audio only.
pub const AUDIO: Media = Media { audio: true, video: false };

/// Audio and video.
pub const AUDIO_VIDEO: Media = Media { audio: true, video: true };

/// Installs rustls' `ring` provider as the process default (once; an
/// already installed provider is kept).
pub fn init_crypto() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let _already_installed = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Milliseconds since the Unix epoch, as the node stamps times.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A name unique within this test process: `prefix` + a counter, for
/// tests that share a node.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}{}", N.fetch_add(1, Ordering::Relaxed))
}
