//! Accounts, passwords and sessions.
//!
//! Passwords are hashed with Argon2id (19 MiB, 2 passes, 1 lane: OWASP's
//! recommendation) on the blocking pool, at most two at a time. Session
//! tokens are 256 random bits, handed out once and stored only as their
//! SHA-256. Failed logins are throttled per account and per source address,
//! and the answer never tells whether the account exists.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use signalling::{Address, UserName, ZoneName};
use tokio::sync::Semaphore;

use crate::config::{Config, Registration};
use crate::store::{InviteRecord, SessionRecord, Store, StoreError, UserRecord};

/// Shortest password accepted, in bytes.
pub const MIN_PASSWORD: usize = 8;
/// Longest password accepted, in bytes.
pub const MAX_PASSWORD: usize = 1024;
/// Prefix of every session token.
const TOKEN_PREFIX: &str = "xt_";

/// Why an account operation failed. Mapped to HTTP statuses at the edge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// The name breaks the naming rules.
    #[error("{0}")]
    InvalidName(signalling::AddressError),
    /// The name belongs to another zone.
    #[error("this node only holds accounts of zone {0}")]
    WrongZone(String),
    /// The password is too short or too long.
    #[error("a password must be {MIN_PASSWORD} to {MAX_PASSWORD} bytes")]
    WeakPassword,
    /// The name is taken.
    #[error("that name is taken")]
    NameTaken,
    /// Registration is admin-only.
    #[error("registration on this node is closed; ask its admin for an account")]
    RegistrationClosed,
    /// The invite code is missing, unknown or used up.
    #[error("a valid invite code is needed to register here")]
    InvalidInvite,
    /// Wrong name or password (deliberately the same for both).
    #[error("wrong name or password")]
    InvalidCredentials,
    /// The token is missing, malformed, unknown, revoked or expired.
    #[error("invalid or expired session token")]
    InvalidToken,
    /// Too many attempts; retry after this long.
    #[error("too many attempts; try again in {} s", .0.as_secs().max(1))]
    RateLimited(Duration),
    /// No such user or session.
    #[error("not found")]
    NotFound,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing failed or its task died.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct Login {
    /// The bearer token (shown once).
    pub token: String,
    /// The session record.
    pub session: SessionRecord,
}

/// An authenticated session, as the API sees it.
#[derive(Debug, Clone)]
pub struct Authed {
    /// The user.
    pub user: Address,
    /// The session.
    pub session: SessionRecord,
}

/// Counts failures per key in a sliding window, with a bounded key set.
#[derive(Debug)]
pub struct Throttle {
    limit: u32,
    window: Duration,
    max_keys: usize,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl Throttle {
    /// At most `limit` failures per key in `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self { limit, window, max_keys: 100_000, failures: Mutex::new(HashMap::new()) }
    }

    /// `Err(retry_after)` when `key` is over its limit now.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = map.get_mut(key) else { return Ok(()) };
        list.retain(|t| now.duration_since(*t) < self.window);
        if list.len() as u32 >= self.limit {
            let oldest = list.first().copied().unwrap_or(now);
            return Err(self.window.saturating_sub(now.duration_since(oldest)));
        }
        Ok(())
    }

    /// Records one failure for `key`.
    pub fn fail(&self, key: &str, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max_keys && !map.contains_key(key) {
            let window = self.window;
            map.retain(|_, l| l.last().is_some_and(|t| now.duration_since(*t) < window));
            if map.len() >= self.max_keys {
                return; // Under a flood of distinct keys: do not grow.
            }
        }
        let list = map.entry(key.to_string()).or_default();
        list.push(now);
        let cap = self.limit as usize + 1;
        if list.len() > cap {
            list.drain(..list.len() - cap);
        }
    }
}

/// The accounts service.
pub struct Accounts {
    store: Store,
    zone: ZoneName,
    registration: Registration,
    session_ttl: Duration,
    max_sessions: usize,
    by_account: Throttle,
    by_address: Throttle,
    registrations: Throttle,
    hashing: Arc<Semaphore>,
    /// A hash of a random password, verified against when the account does
    /// not exist so that both cases take the same time.
    dummy_hash: String,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn argon2() -> Argon2<'static> {
    // OWASP: m = 19 MiB, t = 2, p = 1. These constant parameters are valid.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_password_blocking(password: &str) -> Result<String, AccountError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Internal(e.to_string()))
}

fn verify_blocking(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
}

/// SHA-256 of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

fn check_password(p: &str) -> Result<(), AccountError> {
    if p.len() < MIN_PASSWORD || p.len() > MAX_PASSWORD {
        return Err(AccountError::WeakPassword);
    }
    Ok(())
}

impl Accounts {
    /// The service over `store`, configured by `config`.
    pub fn new(store: Store, config: &Config) -> Result<Self, AccountError> {
        let l = &config.limits;
        Ok(Self {
            store,
            zone: config.zone_name().map_err(|e| AccountError::Internal(e.to_string()))?,
            registration: config.registration,
            session_ttl: config.timeouts.session,
            max_sessions: l.max_sessions_per_user,
            by_account: Throttle::new(l.login_failures_per_account, l.login_window),
            by_address: Throttle::new(l.login_failures_per_address, l.login_window),
            registrations: Throttle::new(l.registrations_per_address, l.login_window),
            hashing: Arc::new(Semaphore::new(2)),
            dummy_hash: hash_password_blocking(&random_b64(16))?,
        })
    }

    /// This node's zone.
    pub fn zone(&self) -> &ZoneName {
        &self.zone
    }

    /// Parses a user name as given at login or registration: `alice` or
    /// `alice@<this zone>`.
    pub fn parse_local(&self, name: &str) -> Result<UserName, AccountError> {
        let a = Address::parse_with_default_zone(name, &self.zone).map_err(AccountError::InvalidName)?;
        if a.zone != self.zone {
            return Err(AccountError::WrongZone(self.zone.to_string()));
        }
        Ok(a.name)
    }

    async fn hash(&self, password: String) -> Result<String, AccountError> {
        let _permit = self.hashing.acquire().await.map_err(|e| AccountError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(move || hash_password_blocking(&password))
            .await
            .map_err(|e| AccountError::Internal(e.to_string()))?
    }

    async fn verify(&self, password: String, phc: String) -> Result<bool, AccountError> {
        let _permit = self.hashing.acquire().await.map_err(|e| AccountError::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(move || verify_blocking(&password, &phc))
            .await
            .map_err(|e| AccountError::Internal(e.to_string()))
    }

    /// Creates an account through the public API, per the registration policy.
    pub async fn register(
        &self,
        name: &str,
        password: &str,
        invite: Option<&str>,
        from: IpAddr,
    ) -> Result<Address, AccountError> {
        let now = Instant::now();
        self.registrations.check(&from.to_string(), now).map_err(AccountError::RateLimited)?;
        match self.registration {
            Registration::Open => {}
            Registration::AdminOnly => return Err(AccountError::RegistrationClosed),
            Registration::Invite => {
                let code = invite.ok_or(AccountError::InvalidInvite)?;
                if code.len() > 128 || !self.store.take_invite(code)? {
                    self.registrations.fail(&from.to_string(), now);
                    return Err(AccountError::InvalidInvite);
                }
            }
        }
        let user = self.create(name, password, false).await?;
        // Every registration counts towards the per-address limit.
        self.registrations.fail(&from.to_string(), now);
        Ok(user)
    }

    /// Creates an account (admin path: no policy, no throttle), an
    /// administrator of the zone if `admin`.
    pub async fn create(&self, name: &str, password: &str, admin: bool) -> Result<Address, AccountError> {
        let name = self.parse_local(name)?;
        check_password(password)?;
        if self.store.user_exists(name.as_str())? {
            return Err(AccountError::NameTaken);
        }
        let hash = self.hash(password.to_string()).await?;
        let rec = UserRecord { name: name.to_string(), password_hash: hash, created_at_ms: now_ms(), admin };
        if !self.store.create_user(&rec)? {
            return Err(AccountError::NameTaken);
        }
        self.store.flush().await?;
        Ok(Address::new(name, self.zone.clone()))
    }

    /// Checks a password and opens a session. Returns also the ids of
    /// sessions revoked to stay under the per-user cap.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        device: &str,
        from: IpAddr,
    ) -> Result<(Login, Vec<String>), AccountError> {
        let now = Instant::now();
        let addr_key = from.to_string();
        self.by_address.check(&addr_key, now).map_err(AccountError::RateLimited)?;
        // A malformed name is simply a wrong name: same answer, same cost.
        let parsed = self.parse_local(name).ok();
        let acct_key = parsed.as_ref().map_or_else(|| name.chars().take(64).collect(), |n| n.to_string());
        self.by_account.check(&acct_key, now).map_err(AccountError::RateLimited)?;
        let rec = match &parsed {
            Some(n) => self.store.user(n.as_str())?,
            None => None,
        };
        let password_ok = password.len() <= MAX_PASSWORD;
        let phc = rec.as_ref().map_or_else(|| self.dummy_hash.clone(), |r| r.password_hash.clone());
        let verified = self.verify(password.chars().take(MAX_PASSWORD).collect(), phc).await?;
        let (Some(rec), true, true) = (rec, verified, password_ok) else {
            self.by_account.fail(&acct_key, now);
            self.by_address.fail(&addr_key, now);
            return Err(AccountError::InvalidCredentials);
        };
        let token = format!("{TOKEN_PREFIX}{}", random_b64(32));
        let hash = token_hash(&token);
        let now_ms = now_ms();
        let session = SessionRecord {
            id: hex::encode(&hash[..8]),
            user: rec.name.clone(),
            device: device.chars().take(100).collect(),
            created_at_ms: now_ms,
            last_used_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(self.session_ttl.as_millis() as u64),
        };
        let revoked = self.store.create_session(&hash, &session, self.max_sessions)?;
        self.store.flush().await?;
        Ok((Login { token, session }, revoked))
    }

    /// Resolves a bearer token to its live session.
    pub fn authenticate(&self, token: &str) -> Result<Authed, AccountError> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 100 {
            return Err(AccountError::InvalidToken);
        }
        let hash = token_hash(token);
        let session = self.store.session(&hash)?.ok_or(AccountError::InvalidToken)?;
        let now = now_ms();
        if session.expires_at_ms <= now {
            return Err(AccountError::InvalidToken);
        }
        if now.saturating_sub(session.last_used_at_ms) > 60_000 {
            self.store.touch_session(&hash, now)?;
        }
        let name = UserName::parse(&session.user).map_err(|_| AccountError::InvalidToken)?;
        Ok(Authed { user: Address::new(name, self.zone.clone()), session })
    }

    /// Revokes one of `user`'s sessions.
    pub async fn revoke(&self, user: &UserName, id: &str) -> Result<(), AccountError> {
        self.store.revoke_session(user.as_str(), id)?.ok_or(AccountError::NotFound)?;
        self.store.flush().await?;
        Ok(())
    }

    /// A user's sessions.
    pub fn sessions(&self, user: &UserName) -> Result<Vec<SessionRecord>, AccountError> {
        Ok(self.store.sessions_of(user.as_str())?)
    }

    /// Changes a password after checking the old one; revokes every other
    /// session. Returns the revoked ids.
    pub async fn change_password(&self, authed: &Authed, old: &str, new: &str) -> Result<Vec<String>, AccountError> {
        check_password(new)?;
        let name = authed.user.name.as_str();
        let rec = self.store.user(name)?.ok_or(AccountError::InvalidCredentials)?;
        if !self.verify(old.chars().take(MAX_PASSWORD).collect(), rec.password_hash).await? {
            return Err(AccountError::InvalidCredentials);
        }
        self.set_password(&authed.user.name, new, Some(&authed.session.id)).await
    }

    /// Sets a password (admin path) and revokes sessions except `keep`.
    pub async fn set_password(
        &self,
        user: &UserName,
        new: &str,
        keep: Option<&str>,
    ) -> Result<Vec<String>, AccountError> {
        check_password(new)?;
        let hash = self.hash(new.to_string()).await?;
        if !self.store.set_password(user.as_str(), &hash)? {
            return Err(AccountError::NotFound);
        }
        let revoked = self.store.revoke_sessions(user.as_str(), keep)?;
        self.store.flush().await?;
        Ok(revoked)
    }

    /// Deletes an account and everything it owns; returns revoked session ids.
    pub async fn remove(&self, user: &UserName) -> Result<Vec<String>, AccountError> {
        let address = Address::new(user.clone(), self.zone.clone());
        let revoked = self.store.remove_user(&address)?.ok_or(AccountError::NotFound)?;
        self.store.flush().await?;
        Ok(revoked)
    }

    /// Makes an invite code good for `uses` registrations.
    pub async fn create_invite(&self, uses: u32) -> Result<String, AccountError> {
        let code = random_b64(12);
        self.store.create_invite(&code, &InviteRecord { uses_left: uses.max(1), created_at_ms: now_ms() })?;
        self.store.flush().await?;
        Ok(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_counts_failures_in_window() {
        let t = Throttle::new(3, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..3 {
            assert!(t.check("k", now).is_ok());
            t.fail("k", now);
        }
        let retry = t.check("k", now).expect_err("throttled");
        assert!(retry <= Duration::from_secs(60) && retry > Duration::from_secs(50));
        assert!(t.check("other", now).is_ok());
        assert!(t.check("k", now + Duration::from_secs(61)).is_ok(), "window passed");
    }

    #[tokio::test]
    async fn login_hides_whether_user_exists() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(dir.path()).expect("open");
        let config = Config { zone: "gracia".into(), ..Config::default() };
        let a = Accounts::new(store, &config).expect("accounts");
        let ip: IpAddr = [127, 0, 0, 1].into();
        a.register("alice", "a good password", None, ip).await.expect("register");
        assert!(matches!(a.register("Alice", "another one", None, ip).await, Err(AccountError::NameTaken)));
        assert!(matches!(a.register("bob@sants", "another one", None, ip).await, Err(AccountError::WrongZone(_))));
        assert!(matches!(a.register("bob", "short", None, ip).await, Err(AccountError::WeakPassword)));
        let wrong = a.login("alice", "not the password", "", ip).await.expect_err("wrong");
        let unknown = a.login("nobody", "not the password", "", ip).await.expect_err("unknown");
        assert_eq!(wrong.to_string(), unknown.to_string());
        let (login, _) = a.login("alice@gracia", "a good password", "laptop", ip).await.expect("login");
        let authed = a.authenticate(&login.token).expect("auth");
        assert_eq!(authed.user.to_string(), "alice@gracia");
        assert!(matches!(a.authenticate("xt_forged"), Err(AccountError::InvalidToken)));
        a.revoke(&authed.user.name, &login.session.id).await.expect("revoke");
        assert!(matches!(a.authenticate(&login.token), Err(AccountError::InvalidToken)));
    }
}
