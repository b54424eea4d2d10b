//! Personal data in logs: addresses, user names, IPs and SDP are shown
//! only when debug logging is on, and redacted otherwise.

use std::fmt;

/// Wraps personal data for logging: `%Pii(&addr)` prints `<redacted>`
/// unless the `xarxa_node` target logs at debug level.
pub struct Pii<'a, T: fmt::Display>(pub &'a T);

impl<T: fmt::Display> fmt::Display for Pii<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if tracing::enabled!(target: "xarxa_node", tracing::Level::DEBUG) {
            self.0.fmt(f)
        } else {
            f.write_str("<redacted>")
        }
    }
}
