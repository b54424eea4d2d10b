//! Schema versions and the steps between them.
//!
//! - **1**: the first release. Ids of history entries and notices came from
//!   sled's own id generator, which lives outside the trees, so a backup
//!   restored into a new database would hand out ids again from zero and
//!   overwrite entries.
//! - **2**: the id counter is `meta/next_id` (u64, big-endian), a value like
//!   any other, carried by backups. The step from 1 sets it past every id
//!   in `history` and `notices` (and past sled's generator, in case an id
//!   was handed out and not yet written).
//!
//! A step runs only after a backup of the whole database is on disk beside
//! it; each step writes its changes and the new version in one batch on
//! `meta`, or in one transaction where it touches other trees, so a crash
//! leaves the old version or the new one.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Store, StoreError, SCHEMA_KEY, SCHEMA_VERSION};

/// The key in `meta` of the id counter (from schema 2).
pub(super) const NEXT_ID_KEY: &str = "next_id";

/// What [`Store::open_migrating`] did to an older database.
#[derive(Debug, Clone, Serialize)]
pub struct Migrated {
    /// The schema found.
    pub from: u32,
    /// The schema now.
    pub to: u32,
    /// The backup taken before the first step.
    pub backup: PathBuf,
}

impl Store {
    /// Backs the database up beside `dir`, then brings it from schema
    /// `from` to [`SCHEMA_VERSION`].
    pub(super) fn migrate(&self, dir: &Path, from: u32) -> Result<Migrated, StoreError> {
        let backup = backup_path(dir, from);
        let failed = |why: String| StoreError::BackupFailed { from, why };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&backup)
            .map_err(|e| failed(format!("{}: {e}", backup.display())))?;
        self.write_backup(&file, &[], crate::services::accounts::now_ms()).map_err(|e| failed(e.to_string()))?;
        file.sync_all().map_err(|e| failed(format!("{}: {e}", backup.display())))?;
        super::backup::verify(&backup).map_err(|e| failed(e.to_string()))?;
        for version in from..SCHEMA_VERSION {
            match version {
                1 => self.v1_to_v2()?,
                other => {
                    return Err(StoreError::Corrupt { tree: "meta", why: format!("no migration from schema {other}") })
                }
            }
            self.db.flush()?;
            tracing::info!(from = version, to = version + 1, "database schema migrated");
        }
        Ok(Migrated { from, to: SCHEMA_VERSION, backup })
    }

    /// 1 → 2: the id counter moves into `meta`.
    fn v1_to_v2(&self) -> Result<(), StoreError> {
        let mut highest = self.db.generate_id()?;
        for tree in [&self.history, &self.notices] {
            for k in tree.iter().keys() {
                let k = k?;
                if let Some(id) = k.len().checked_sub(8).and_then(|at| <[u8; 8]>::try_from(&k[at..]).ok()) {
                    highest = highest.max(u64::from_be_bytes(id));
                }
            }
        }
        let mut step = sled::Batch::default();
        step.insert(NEXT_ID_KEY, &highest.saturating_add(1).to_be_bytes());
        step.insert(SCHEMA_KEY, &2u32.to_be_bytes());
        self.meta.apply_batch(step)?;
        Ok(())
    }
}

/// `db.before-schema-2.<unix seconds>.xarxa-backup`, beside the database's
/// directory.
fn backup_path(dir: &Path, from: u32) -> PathBuf {
    let name = dir.file_name().map_or_else(|| "db".into(), |n| n.to_string_lossy().into_owned());
    let secs = crate::services::accounts::now_ms() / 1000;
    let file = format!("{name}.before-schema-{}.{secs}.xarxa-backup", from + 1);
    dir.parent().map_or_else(|| PathBuf::from(&file), |p| p.join(&file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use signalling::{Address, CallId, HistoryEntry, HistoryKind, Media, Outcome};

    /// A database as schema 1 wrote it: sled's generator for ids.
    fn v1_fixture(dir: &Path) -> u64 {
        let db = sled::open(dir).expect("sled");
        db.open_tree("meta").expect("meta").insert(SCHEMA_KEY, &1u32.to_be_bytes()).expect("v");
        let users = db.open_tree("users").expect("users");
        users.insert("alice", br#"{"name":"alice","password_hash":"h","created_at_ms":1}"#.as_slice()).expect("u");
        let history = db.open_tree("history").expect("history");
        let mut last = 0;
        for _ in 0..3 {
            last = db.generate_id().expect("id") + 1000;
            let mut k = b"alice\0".to_vec();
            k.extend_from_slice(&last.to_be_bytes());
            history.insert(k, b"{}".as_slice()).expect("h");
        }
        db.flush().expect("flush");
        last
    }

    #[test]
    fn schema_1_moves_its_id_counter_into_meta_after_a_backup() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = dir.path().join("db");
        let last = v1_fixture(&db);
        let (s, migrated) = Store::open_migrating(&db).expect("open");
        let m = migrated.expect("migrated");
        assert_eq!((m.from, m.to), (1, 2));
        assert_eq!(m.backup.parent(), Some(dir.path()));
        let summary = super::super::backup::verify(&m.backup).expect("backup beside");
        assert_eq!(summary.schema, 1);
        assert!(summary.trees.iter().any(|(t, n)| t == "history" && *n == 3));
        let entry = HistoryEntry {
            id: 0,
            call: CallId("c".into()),
            kind: HistoryKind::Sent,
            peer: Address::parse("bob@z").expect("addr"),
            media: Media { audio: true, video: false },
            started_at_ms: 1,
            duration_ms: 0,
            outcome: Outcome::NoAnswer,
        };
        let added = s.add_history("alice", entry, 100).expect("add");
        assert!(added.id > last, "{} must follow {last}", added.id);
        assert_eq!(s.schema_version().expect("v"), SCHEMA_VERSION);
        drop(s);
        let (_, again) = Store::open_migrating(&db).expect("reopen");
        assert!(again.is_none(), "migrated once");
    }
}
