//! The node's embedded database: typed access to its sled trees. Nothing
//! outside this module touches sled.
//!
//! Trees: `meta` (schema version, id counter), `users` (name → [`UserRecord`]),
//! `sessions` (SHA-256 of token → [`SessionRecord`]), `session_ids`
//! (user \0 session id → token hash), `history` (user \0 id → entry),
//! `notices` (user \0 id → notice), `invites` (code → [`InviteRecord`]),
//! `contacts` (user \0 address → [`ContactRecord`]) with its index
//! `contact_holders` (address \0 user → state), `presence` (user →
//! [`PresenceSetting`]), `profiles` (user → profile), `avatars` (user →
//! [`Avatar`]).
//! Values are JSON. Writes a caller acknowledges are followed by
//! [`Store::flush`], so they survive a crash.
//!
//! Every write method (and [`Store::next_id`], through them) takes the
//! write gate (shared) through
//! [`Store::writing`]; a backup takes it exclusively, so it copies the
//! database between whole writes (`backup.rs`). The schema version is in
//! `meta`; [`Store::open`] brings an older database forward one step at a
//! time (`migrate.rs`), after leaving a backup beside it.
//!
//! This file holds the [`Store`] itself (opening, the schema check,
//! flushing, errors, the tree handles) and the helpers every domain uses
//! (JSON values, `user \0 …` keys). Each domain's trees have a file of
//! `impl Store` blocks: `users.rs`, `sessions.rs` (with `session_ids`),
//! `history.rs` (history and notices), `invites.rs`, `contacts.rs`
//! (contacts, their index and presence settings), `profiles.rs`, and
//! `mesh.rs` (the
//! `mesh_records` tree, whose contents the dht crate owns). A new domain
//! adds its trees to [`Store`] and a file here.

use std::path::Path;

use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::TransactionError;

pub mod backup;
mod contacts;
mod history;
mod invites;
mod mesh;
mod migrate;
mod profiles;
mod sessions;
mod users;

pub use contacts::{ContactChange, ContactRecord, PresenceSetting};
pub use invites::InviteRecord;
pub use migrate::Migrated;
pub use profiles::Avatar;
pub use sessions::SessionRecord;
pub use users::UserRecord;

/// The schema version this build writes and reads. What each version
/// changed is in `migrate.rs`.
pub const SCHEMA_VERSION: u32 = 2;

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
    /// The backup that must precede a migration could not be written.
    #[error("backing up before migrating from schema {from}: {why}")]
    BackupFailed {
        /// The schema found.
        from: u32,
        /// Why.
        why: String,
    },
    /// sled failed.
    #[error("database: {0}")]
    Db(#[from] sled::Error),
}

/// The database.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// Shared by writers, taken whole by a backup.
    gate: std::sync::Arc<parking_lot::RwLock<()>>,
    /// Keeps sled's transactions apart from its flushes. A sled
    /// transaction takes sled's process-wide lock exclusively and waits
    /// for every holder; a flush holds that lock shared while it waits for
    /// the log to reach the disk, and sled's log flusher needs it shared
    /// to get it there. A transaction that starts during a flush stalls all
    /// three for good (seen with 25 contact accepts at once). So a flush
    /// holds this lock shared and a transaction holds it whole
    /// ([`Store::transacting`]): the two never overlap.
    tx_gate: std::sync::Arc<parking_lot::RwLock<()>>,
    /// One read-modify-write of a profile at a time.
    profile_lock: std::sync::Arc<parking_lot::Mutex<()>>,
    meta: sled::Tree,
    users: sled::Tree,
    sessions: sled::Tree,
    session_ids: sled::Tree,
    history: sled::Tree,
    notices: sled::Tree,
    invites: sled::Tree,
    contacts: sled::Tree,
    contact_holders: sled::Tree,
    presence: sled::Tree,
    profiles: sled::Tree,
    avatars: sled::Tree,
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

/// The key in `meta` holding the schema version (u32, big-endian).
const SCHEMA_KEY: &str = "schema_version";

fn tx_err(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Db(e),
    }
}

impl Store {
    /// Opens (creating if needed) the database in `dir`. Refuses a database
    /// written by a newer schema, and one another process holds; migrates
    /// an older one (see [`Store::open_migrating`]).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_migrating(dir).map(|(s, _)| s)
    }

    /// Opens the database in `dir` like [`Store::open`], and says whether
    /// it was migrated: an older schema is first backed up to a file beside
    /// `dir` (named in the answer), then brought forward one version at a
    /// time, each step atomic with the version it writes.
    pub fn open_migrating(dir: &Path) -> Result<(Self, Option<Migrated>), StoreError> {
        let db = sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).open().map_err(|e| match e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.raw_os_error() == Some(11) => {
                StoreError::Locked
            }
            other => StoreError::Db(other),
        })?;
        let meta = db.open_tree("meta")?;
        let store = Self {
            users: db.open_tree("users")?,
            sessions: db.open_tree("sessions")?,
            session_ids: db.open_tree("session_ids")?,
            history: db.open_tree("history")?,
            notices: db.open_tree("notices")?,
            invites: db.open_tree("invites")?,
            contacts: db.open_tree("contacts")?,
            contact_holders: db.open_tree("contact_holders")?,
            presence: db.open_tree("presence")?,
            profiles: db.open_tree("profiles")?,
            avatars: db.open_tree("avatars")?,
            gate: std::sync::Arc::default(),
            tx_gate: std::sync::Arc::default(),
            profile_lock: std::sync::Arc::default(),
            meta,
            db,
        };
        if store.meta.get(SCHEMA_KEY)?.is_none() {
            let mut fresh = sled::Batch::default();
            fresh.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes());
            fresh.insert(migrate::NEXT_ID_KEY, &1u64.to_be_bytes());
            store.meta.apply_batch(fresh)?;
            store.db.flush()?;
            return Ok((store, None));
        }
        let found = store.schema_version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew { found, supported: SCHEMA_VERSION });
        }
        let migrated = if found < SCHEMA_VERSION { Some(store.migrate(dir, found)?) } else { None };
        Ok((store, migrated))
    }

    /// The schema version recorded in `meta`.
    fn schema_version(&self) -> Result<u32, StoreError> {
        let v =
            self.meta.get(SCHEMA_KEY)?.ok_or(StoreError::Corrupt { tree: "meta", why: "no schema_version".into() })?;
        <[u8; 4]>::try_from(v.as_ref())
            .map(u32::from_be_bytes)
            .map_err(|_| StoreError::Corrupt { tree: "meta", why: "schema_version".into() })
    }

    /// Held by every write, shared; a backup takes the gate whole so that it
    /// sees no write half done. Not recursive: a write that calls another
    /// calls its `*_held` form. (The lock is fair: once a backup waits, new
    /// writes wait behind it, so writers cannot starve a backup.)
    fn writing(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.gate.read()
    }

    /// Held whole around every sled transaction, so that none starts
    /// while a flush runs (see `tx_gate`). Take it inside
    /// [`Store::writing`], never the other way round.
    fn transacting(&self) -> parking_lot::RwLockWriteGuard<'_, ()> {
        self.tx_gate.write()
    }

    /// Makes every write so far durable, on one of tokio's blocking
    /// threads. Not sled's `flush_async`: that runs on sled's own small
    /// thread pool, and many of them at once with transactions stalled the
    /// store for good (the test `transactions_and_flushes_at_once_never_stall`
    /// hangs with it).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (db, gate) = (self.db.clone(), self.tx_gate.clone());
        let flushed = tokio::task::spawn_blocking(move || {
            let _f = gate.read();
            db.flush()
        })
        .await
        .map_err(|e| StoreError::Db(sled::Error::ReportableBug(format!("flush task: {e}"))))?;
        flushed?;
        Ok(())
    }

    /// Makes every write so far durable, blocking.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        let _f = self.tx_gate.read();
        self.db.flush()?;
        Ok(())
    }

    /// A fresh id, increasing over time, unique in this database. The
    /// counter is in `meta`, so a backup carries it.
    pub fn next_id(&self) -> Result<u64, StoreError> {
        let next = self.meta.update_and_fetch(migrate::NEXT_ID_KEY, |old| {
            let n = old.and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(1, u64::from_be_bytes);
            Some(n.saturating_add(1).to_be_bytes().to_vec())
        })?;
        let n = next.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok()).map(u64::from_be_bytes);
        n.map(|n| n - 1).ok_or(StoreError::Corrupt { tree: "meta", why: "next_id".into() })
    }

    /// The database's size on disk, in bytes.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }

    /// Counts of records, for status output.
    pub fn counts(&self) -> (usize, usize) {
        (self.users.len(), self.sessions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
