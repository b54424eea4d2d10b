//! The node's embedded database: typed access to its sled trees. Nothing
//! outside this module touches sled.
//!
//! Trees: `meta` (schema version), `users` (name → [`UserRecord`]),
//! `sessions` (SHA-256 of token → [`SessionRecord`]), `session_ids`
//! (user \0 session id → token hash), `history` (user \0 id → entry),
//! `notices` (user \0 id → notice), `invites` (code → [`InviteRecord`]).
//! Values are JSON. Writes a caller acknowledges are followed by
//! [`Store::flush`], so they survive a crash.

use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use signalling::{HistoryEntry, Notice};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database belongs to a newer Xarxa.
    #[error("the database has schema version {found}, newer than this build's {supported}: upgrade xarxa")]
    SchemaTooNew {
        /// Version found on disk.
        found: u32,
        /// Version this build knows.
        supported: u32,
    },
    /// Another process (a running node) has the database open.
    #[error("the database is in use by another process (is the node running?)")]
    Locked,
    /// A stored value could not be decoded.
    #[error("corrupt record in {tree}: {why}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// The decoding error.
        why: String,
    },
    /// sled failed.
    #[error("database: {0}")]
    Db(#[from] sled::Error),
}

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The local name.
    pub name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
}

/// A login session. The token itself is never stored, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Public id (hex), used to list and revoke.
    pub id: String,
    /// The user's local name.
    pub user: String,
    /// The device label given at login.
    pub device: String,
    /// Created, ms since the epoch.
    pub created_at_ms: u64,
    /// Last used, ms since the epoch (updated at most once a minute).
    pub last_used_at_ms: u64,
    /// Expiry, ms since the epoch.
    pub expires_at_ms: u64,
}

/// An invite code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    /// Registrations it still allows.
    pub uses_left: u32,
    /// Created, ms since the epoch.
    pub created_at_ms: u64,
}

/// The database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    users: sled::Tree,
    sessions: sled::Tree,
    session_ids: sled::Tree,
    history: sled::Tree,
    notices: sled::Tree,
    invites: sled::Tree,
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    // Our records are plain structs of strings and numbers: serialising cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn dec<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { tree, why: e.to_string() })
}

fn user_prefix(user: &str) -> Vec<u8> {
    let mut k = user.as_bytes().to_vec();
    k.push(0);
    k
}

fn user_key(user: &str, id: u64) -> Vec<u8> {
    let mut k = user_prefix(user);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn user_str_key(user: &str, id: &str) -> Vec<u8> {
    let mut k = user_prefix(user);
    k.extend_from_slice(id.as_bytes());
    k
}

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Db(e),
    }
}

impl Store {
    /// Opens (creating if needed) the database in `dir`. Refuses a database
    /// written by a newer schema, and one another process holds.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).open().map_err(|e| match e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.raw_os_error() == Some(11) => {
                StoreError::Locked
            }
            other => StoreError::Db(other),
        })?;
        let meta = db.open_tree("meta")?;
        match meta.get("schema_version")? {
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt { tree: "meta", why: "schema_version".into() })?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION });
                }
            }
            None => {
                meta.insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                db.flush()?;
            }
        }
        Ok(Self {
            users: db.open_tree("users")?,
            sessions: db.open_tree("sessions")?,
            session_ids: db.open_tree("session_ids")?,
            history: db.open_tree("history")?,
            notices: db.open_tree("notices")?,
            invites: db.open_tree("invites")?,
            db,
        })
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Makes every write so far durable, blocking.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    // ----- users -----

    /// Creates an account; `false` if the name is taken.
    pub fn create_user(&self, rec: &UserRecord) -> Result<bool, StoreError> {
        let r = self.users.compare_and_swap(rec.name.as_bytes(), None as Option<&[u8]>, Some(enc(rec)))?;
        Ok(r.is_ok())
    }

    /// An account by name.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        self.users.get(name.as_bytes())?.map(|v| dec("users", &v)).transpose()
    }

    /// Whether an account exists.
    pub fn user_exists(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.users.contains_key(name.as_bytes())?)
    }

    /// Every account, by name.
    pub fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.users.iter().values().map(|v| dec("users", &v?)).collect()
    }

    /// Replaces an account's password hash; `false` if there is no such user.
    pub fn set_password(&self, name: &str, hash: &str) -> Result<bool, StoreError> {
        let Some(mut rec) = self.user(name)? else { return Ok(false) };
        rec.password_hash = hash.to_string();
        self.users.insert(name.as_bytes(), enc(&rec))?;
        Ok(true)
    }

    /// Deletes an account with its sessions, history and notices. Returns
    /// the revoked session ids, or `None` if there was no such user.
    pub fn remove_user(&self, name: &str) -> Result<Option<Vec<String>>, StoreError> {
        if self.users.remove(name.as_bytes())?.is_none() {
            return Ok(None);
        }
        let revoked = self.revoke_sessions(name, None)?;
        for tree in [&self.history, &self.notices] {
            for k in tree.scan_prefix(user_prefix(name)).keys() {
                tree.remove(k?)?;
            }
        }
        Ok(Some(revoked))
    }

    // ----- sessions -----

    /// Stores a new session under its token hash, revoking the user's
    /// oldest sessions beyond `max`. Returns the revoked ids.
    pub fn create_session(
        &self,
        token_hash: &[u8; 32],
        rec: &SessionRecord,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        (&self.sessions, &self.session_ids)
            .transaction(|(s, ids)| {
                s.insert(&token_hash[..], enc(rec))?;
                ids.insert(user_str_key(&rec.user, &rec.id), &token_hash[..])?;
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_err)?;
        let mut all = self.sessions_of(&rec.user)?;
        let mut revoked = Vec::new();
        if all.len() > max {
            all.sort_by_key(|s| s.created_at_ms);
            let excess = all.len() - max;
            for old in all.into_iter().take(excess) {
                if self.revoke_session(&rec.user, &old.id)?.is_some() {
                    revoked.push(old.id);
                }
            }
        }
        Ok(revoked)
    }

    /// The session a token hash belongs to (expired ones included: check).
    pub fn session(&self, token_hash: &[u8; 32]) -> Result<Option<SessionRecord>, StoreError> {
        self.sessions.get(token_hash)?.map(|v| dec("sessions", &v)).transpose()
    }

    /// Updates a session's last-used time.
    pub fn touch_session(&self, token_hash: &[u8; 32], now_ms: u64) -> Result<(), StoreError> {
        if let Some(mut rec) = self.session(token_hash)? {
            rec.last_used_at_ms = now_ms;
            self.sessions.insert(token_hash, enc(&rec))?;
        }
        Ok(())
    }

    /// A user's sessions.
    pub fn sessions_of(&self, user: &str) -> Result<Vec<SessionRecord>, StoreError> {
        let mut out = Vec::new();
        for hash in self.session_ids.scan_prefix(user_prefix(user)).values() {
            if let Some(v) = self.sessions.get(hash?)? {
                out.push(dec("sessions", &v)?);
            }
        }
        Ok(out)
    }

    /// Revokes one of `user`'s sessions by id; `None` if it has no such session.
    pub fn revoke_session(&self, user: &str, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let key = user_str_key(user, id);
        let Some(hash) = self.session_ids.get(&key)? else { return Ok(None) };
        let old = (&self.sessions, &self.session_ids)
            .transaction(|(s, ids)| {
                ids.remove(key.as_slice())?;
                Ok::<_, ConflictableTransactionError<StoreError>>(s.remove(hash.as_ref())?)
            })
            .map_err(tx_err)?;
        old.map(|v| dec("sessions", &v)).transpose()
    }

    /// Revokes every session of `user` except `keep`; returns their ids.
    pub fn revoke_sessions(&self, user: &str, keep: Option<&str>) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> =
            self.sessions_of(user)?.into_iter().map(|s| s.id).filter(|id| Some(id.as_str()) != keep).collect();
        for id in &ids {
            self.revoke_session(user, id)?;
        }
        Ok(ids)
    }

    /// Deletes sessions that expired before `now_ms`; returns how many.
    pub fn purge_expired_sessions(&self, now_ms: u64) -> Result<usize, StoreError> {
        let mut expired = Vec::new();
        for kv in self.sessions.iter() {
            let (_, v) = kv?;
            let rec: SessionRecord = dec("sessions", &v)?;
            if rec.expires_at_ms <= now_ms {
                expired.push(rec);
            }
        }
        for rec in &expired {
            self.revoke_session(&rec.user, &rec.id)?;
        }
        Ok(expired.len())
    }

    // ----- history and notices -----

    /// A fresh id, increasing over time, unique in this database.
    pub fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    /// Appends a history entry (its `id` set here), dropping the user's
    /// oldest beyond `max`. Returns the stored entry.
    pub fn add_history(&self, user: &str, mut entry: HistoryEntry, max: usize) -> Result<HistoryEntry, StoreError> {
        entry.id = self.next_id()?;
        self.history.insert(user_key(user, entry.id), enc(&entry))?;
        let count = self.history.scan_prefix(user_prefix(user)).keys().count();
        if count > max {
            for k in self.history.scan_prefix(user_prefix(user)).keys().take(count - max) {
                self.history.remove(k?)?;
            }
        }
        Ok(entry)
    }

    /// Up to `limit` entries older than `before` (all if `None`), newest first.
    pub fn history(&self, user: &str, before: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let start = user_key(user, 0);
        let end = user_key(user, before.unwrap_or(u64::MAX));
        self.history
            .range(start..end)
            .rev()
            .take(limit)
            .map(|kv| {
                let (_, v) = kv?;
                dec("history", &v)
            })
            .collect()
    }

    /// Deletes one entry; `false` if the user has no such entry.
    pub fn delete_history(&self, user: &str, id: u64) -> Result<bool, StoreError> {
        Ok(self.history.remove(user_key(user, id))?.is_some())
    }

    /// Deletes every entry of `user`; returns how many.
    pub fn clear_history(&self, user: &str) -> Result<usize, StoreError> {
        let mut n = 0;
        for k in self.history.scan_prefix(user_prefix(user)).keys() {
            self.history.remove(k?)?;
            n += 1;
        }
        Ok(n)
    }

    /// Stores a notice (its `id` set here) and returns it.
    pub fn add_notice(&self, user: &str, mut notice: Notice) -> Result<Notice, StoreError> {
        notice.id = self.next_id()?;
        self.notices.insert(user_key(user, notice.id), enc(&notice))?;
        Ok(notice)
    }

    /// A user's notices, oldest first; read ones only if `include_read`.
    pub fn notices(&self, user: &str, include_read: bool) -> Result<Vec<Notice>, StoreError> {
        let mut out = Vec::new();
        for v in self.notices.scan_prefix(user_prefix(user)).values() {
            let n: Notice = dec("notices", &v?)?;
            if include_read || !n.read {
                out.push(n);
            }
        }
        Ok(out)
    }

    /// Marks a notice read; `false` if the user has no such notice.
    pub fn mark_notice_read(&self, user: &str, id: u64) -> Result<bool, StoreError> {
        let key = user_key(user, id);
        let Some(v) = self.notices.get(&key)? else { return Ok(false) };
        let mut n: Notice = dec("notices", &v)?;
        n.read = true;
        self.notices.insert(key, enc(&n))?;
        Ok(true)
    }

    // ----- invites -----

    /// Stores an invite code.
    pub fn create_invite(&self, code: &str, rec: &InviteRecord) -> Result<(), StoreError> {
        self.invites.insert(code.as_bytes(), enc(rec))?;
        Ok(())
    }

    /// Every invite code with its record.
    pub fn invites(&self) -> Result<Vec<(String, InviteRecord)>, StoreError> {
        self.invites
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).into_owned(), dec("invites", &v)?))
            })
            .collect()
    }

    /// Uses up one registration of an invite; `false` if it is unknown or spent.
    pub fn take_invite(&self, code: &str) -> Result<bool, StoreError> {
        loop {
            let Some(old) = self.invites.get(code.as_bytes())? else { return Ok(false) };
            let mut rec: InviteRecord = dec("invites", &old)?;
            if rec.uses_left == 0 {
                return Ok(false);
            }
            rec.uses_left -= 1;
            let new = if rec.uses_left == 0 { None } else { Some(enc(&rec)) };
            if self.invites.compare_and_swap(code.as_bytes(), Some(old), new)?.is_ok() {
                return Ok(true);
            }
        }
    }

    /// The tree the mesh keeps its DHT records in (handed to the dht crate's
    /// persistent record store, which owns its contents).
    pub fn mesh_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree("mesh_records")?)
    }

    /// Counts of records, for status output.
    pub fn counts(&self) -> (usize, usize) {
        (self.users.len(), self.sessions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signalling::{Address, CallId, EndReason, HistoryKind, Media, Outcome};

    fn entry(peer: &str) -> HistoryEntry {
        HistoryEntry {
            id: 0,
            call: CallId("c".into()),
            kind: HistoryKind::Sent,
            peer: Address::parse(peer).expect("addr"),
            media: Media { audio: true, video: false },
            started_at_ms: 1,
            duration_ms: 0,
            outcome: Outcome::NoAnswer,
        }
    }

    #[test]
    fn history_pages_newest_first_and_trims() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        let ids: Vec<u64> =
            (0..5).map(|i| s.add_history("alice", entry(&format!("u{i}@z")), 4).expect("add").id).collect();
        s.add_history("bob", entry("x@z"), 4).expect("add");
        let page = s.history("alice", None, 2).expect("page");
        assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[4], ids[3]]);
        let page = s.history("alice", Some(ids[3]), 10).expect("page");
        assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[2], ids[1]], "oldest trimmed");
        assert!(s.delete_history("alice", ids[2]).expect("del"));
        assert!(!s.delete_history("bob", ids[1]).expect("del"), "not bob's");
        assert_eq!(s.clear_history("alice").expect("clear"), 3);
        assert_eq!(s.history("bob", None, 10).expect("bob").len(), 1);
    }

    #[test]
    fn sessions_revoke_and_cap() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        for i in 0..3u8 {
            let rec = SessionRecord {
                id: format!("s{i}"),
                user: "alice".into(),
                device: String::new(),
                created_at_ms: u64::from(i),
                last_used_at_ms: 0,
                expires_at_ms: 10,
            };
            let revoked = s.create_session(&[i; 32], &rec, 2).expect("create");
            assert_eq!(revoked, if i == 2 { vec!["s0".to_string()] } else { vec![] });
        }
        assert!(s.session(&[0; 32]).expect("get").is_none());
        assert_eq!(s.revoke_sessions("alice", Some("s2")).expect("revoke"), vec!["s1".to_string()]);
        assert_eq!(s.purge_expired_sessions(11).expect("purge"), 1);
        assert!(s.sessions_of("alice").expect("list").is_empty());
    }

    #[test]
    fn refuses_newer_schema_and_second_opener() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let s = Store::open(dir.path()).expect("open");
            assert!(matches!(Store::open(dir.path()), Err(StoreError::Locked) | Err(StoreError::Db(_))));
            s.db.open_tree("meta")
                .expect("meta")
                .insert("schema_version", &(SCHEMA_VERSION + 1).to_be_bytes())
                .expect("w");
            s.flush_blocking().expect("flush");
        }
        match Store::open(dir.path()) {
            Err(e @ StoreError::SchemaTooNew { .. }) => assert!(e.to_string().contains("newer")),
            Err(e) => panic!("wrong error {e}"),
            Ok(_) => panic!("opened a newer schema"),
        }
    }

    #[test]
    fn invites_are_used_up() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        s.create_invite("abc", &InviteRecord { uses_left: 2, created_at_ms: 0 }).expect("create");
        assert!(s.take_invite("abc").expect("1"));
        assert!(s.take_invite("abc").expect("2"));
        assert!(!s.take_invite("abc").expect("3"));
        assert!(!s.take_invite("nope").expect("4"));
        let n = Notice {
            id: 0,
            call: CallId("c".into()),
            from: Address::parse("a@z").expect("a"),
            at_ms: 0,
            reason: EndReason::Busy,
            read: false,
        };
        let n = s.add_notice("bob", n).expect("notice");
        assert!(s.mark_notice_read("bob", n.id).expect("read"));
        assert!(s.notices("bob", false).expect("list").is_empty());
        assert_eq!(s.notices("bob", true).expect("list").len(), 1);
    }
}
