//! Time-limited TURN credentials in the "TURN REST API" style (as coturn's
//! `use-auth-secret`): the username is `<expiry>:<user>` (expiry in Unix
//! seconds) and the password is `base64(HMAC-SHA1(secret, username))`. The
//! node hands them to logged-in users; the secret itself never leaves the
//! node. Nonces are stateless: a timestamp and a MAC over it and the
//! client's address.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::{Digest as _, Md5};
use rand::RngCore as _;
use sha1::Sha1;
use sha2::Sha256;

/// Credentials for one user, valid until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `<expiry>:<user>`.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))`.
    pub password: String,
    /// Unix seconds after which the server refuses them.
    pub expires_at: u64,
}

/// Makes credentials for `user`, valid for `ttl` from `now_s`.
pub fn mint(secret: &str, user: &str, now_s: u64, ttl: Duration) -> Credentials {
    let expires_at = now_s.saturating_add(ttl.as_secs());
    let username = format!("{expires_at}:{user}");
    let password = password(secret, &username);
    Credentials { username, password, expires_at }
}

/// The password the secret gives `username`.
pub fn password(secret: &str, username: &str) -> String {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The long-term credential key: `MD5(username ":" realm ":" password)`.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// Why a username is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UsernameError {
    /// Not `<expiry>:<user>`.
    #[error("malformed username")]
    Malformed,
    /// The expiry has passed.
    #[error("expired credentials")]
    Expired,
}

/// The user part of a REST username, unless it is malformed or expired.
pub fn check_username(username: &str, now_s: u64) -> Result<&str, UsernameError> {
    let (expiry, user) = username.split_once(':').ok_or(UsernameError::Malformed)?;
    if expiry.is_empty() || expiry.len() > 20 || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UsernameError::Malformed);
    }
    if user.is_empty() || user.len() > 128 || user.chars().any(char::is_control) {
        return Err(UsernameError::Malformed);
    }
    let expiry: u64 = expiry.parse().map_err(|_| UsernameError::Malformed)?;
    if expiry < now_s {
        return Err(UsernameError::Expired);
    }
    Ok(user)
}

/// Stateless nonces bound to the client's address.
pub struct Nonces {
    key: [u8; 32],
    lifetime_s: u64,
}

impl Nonces {
    /// Nonces valid for `lifetime`, under a fresh random key.
    pub fn new(lifetime: Duration) -> Self {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        Self { key, lifetime_s: lifetime.as_secs().max(1) }
    }

    fn tag(&self, issued: u64, client: SocketAddr) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(&issued.to_be_bytes());
        mac.update(client.to_string().as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// A nonce for `client` issued at `now_s`.
    pub fn mint(&self, client: SocketAddr, now_s: u64) -> String {
        format!("{now_s:016x}{}", self.tag(now_s, client))
    }

    /// Whether `nonce` was minted by this node for `client` and has not
    /// gone stale.
    pub fn valid(&self, nonce: &str, client: SocketAddr, now_s: u64) -> bool {
        let (Some(ts), Some(tag)) = (nonce.get(..16), nonce.get(16..)) else { return false };
        let Ok(issued) = u64::from_str_radix(ts, 16) else { return false };
        if issued > now_s || now_s - issued > self.lifetime_s {
            return false;
        }
        let want = self.tag(issued, client);
        // Constant-time enough: both are fixed-length hex of a MAC.
        want.len() == tag.len() && want.bytes().zip(tag.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_match_coturn_rest_scheme() {
        // The same computation as coturn's `use-auth-secret` and
        // turnutils_uclient -W: base64(HMAC-SHA1(secret, "expiry:user")).
        let c = mint("north", "alice", 1_700_000_000, Duration::from_secs(3600));
        assert_eq!(c.username, "1700003600:alice");
        assert_eq!(c.expires_at, 1_700_003_600);
        assert_eq!(c.password, password("north", "1700003600:alice"));
        assert_eq!(c.password.len(), 28, "base64 of 20 bytes");
        assert_ne!(c.password, password("south", "1700003600:alice"));
    }

    #[test]
    fn usernames_expire() {
        assert_eq!(check_username("1700003600:alice", 1_700_000_000), Ok("alice"));
        assert_eq!(check_username("1700003600:alice", 1_700_003_600), Ok("alice"));
        assert_eq!(check_username("1700003600:alice", 1_700_003_601), Err(UsernameError::Expired));
        for bad in ["alice", ":alice", "17x:alice", "1700003600:", "99999999999999999999999:a"] {
            assert_eq!(check_username(bad, 0), Err(UsernameError::Malformed), "{bad}");
        }
    }

    #[test]
    fn long_term_key_is_md5_of_user_realm_password() {
        // python3 -c "import hashlib; print(hashlib.md5(b'1700003600:alice:gracia:pw').hexdigest())"
        let k = long_term_key("1700003600:alice", "gracia", "pw");
        assert_eq!(hex::encode(k), "f221b3abb3f213818ae067164eaaa3ec");
    }

    #[test]
    fn nonces_are_bound_and_go_stale() {
        let n = Nonces::new(Duration::from_secs(600));
        let a: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        let b: SocketAddr = "192.0.2.1:5001".parse().expect("addr");
        let nonce = n.mint(a, 1000);
        assert!(n.valid(&nonce, a, 1000) && n.valid(&nonce, a, 1600));
        assert!(!n.valid(&nonce, a, 1601), "stale");
        assert!(!n.valid(&nonce, b, 1000), "another client's");
        assert!(!n.valid(&nonce, a, 999), "from the future");
        assert!(!Nonces::new(Duration::from_secs(600)).valid(&nonce, a, 1000), "another key's");
        for junk in ["", "zz", "00000000000003e8", "é0000000000003e8abcd"] {
            assert!(!n.valid(junk, a, 1000));
        }
    }
}
