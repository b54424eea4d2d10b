//! Backups: one file holding every tree of the database at one moment, and
//! (for `xarxa backup`) the node's key, certificate and TURN secret.
//!
//! A backup is taken while the store's writers wait (see [`Store::writing`]),
//! so it never holds half of a compound write: a session without its index
//! entry, a removed user whose history is still there. The mesh's record
//! tree, which the dht crate writes without the gate, is a cache of signed
//! records that are each whole on their own; it is copied as it is.
//!
//! The file is lines of JSON: a header, the files, each tree (a line naming
//! it, then one `[key, value]` line per entry, base64), and
//! an end line with the count of entries and the SHA-256 of every byte
//! before it. [`verify`] reads a file through once before [`restore`]
//! writes anything, so a truncated or altered backup is refused whole.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Store, StoreError, SCHEMA_VERSION};

/// The first line's `format`.
pub const MAGIC: &str = "xarxa-backup";
/// The version of this file format.
pub const FORMAT_VERSION: u32 = 1;
/// The files of the data directory a backup may carry, by path relative to
/// it. [`restore`] writes no other name, so a crafted backup cannot reach
/// outside the data directory.
pub const DATA_FILES: [&str; 6] =
    ["node.key", "tls/cert.pem", "tls/key.pem", "turn.secret", "handover.json", "handed-over.json"];
/// The longest line a backup may have (a tree entry or a file, base64).
const MAX_LINE: usize = 4 * 1024 * 1024;

/// Why a backup could not be written, read or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a backup, or is damaged or cut short.
    #[error("not a valid backup (line {line}): {why}")]
    Invalid {
        /// The 1-based line.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// The backup was made by a newer Xarxa.
    #[error(
        "the backup has schema version {found}, newer than this build's {supported}: restore it with a newer xarxa"
    )]
    SchemaTooNew {
        /// Version in the backup.
        found: u32,
        /// Version this build knows.
        supported: u32,
    },
    /// The target already holds a database.
    #[error("{0} already holds a database; restore into a new data directory, or give --force to move it aside")]
    Exists(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
    let what = what.into();
    move |source| BackupError::Io { what, source }
}

/// A section line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Section {
    Header { format: String, version: u32, schema: u32, created_at_ms: u64 },
    File { name: String, data: String },
    Tree { name: String },
    End { entries: u64, sha256: String },
}

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// The database's schema version when it was taken.
    pub schema: u32,
    /// When it was taken, ms since the epoch.
    pub created_at_ms: u64,
    /// Entries per tree, by tree name.
    pub trees: Vec<(String, u64)>,
    /// The data-directory files it carries.
    pub files: Vec<String>,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Counts and hashes what passes through.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn line<W: Write>(w: &mut W, v: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, v).map_err(std::io::Error::other)?;
    w.write_all(b"\n")
}

impl Store {
    /// Writes a backup of every tree, with `files` (names from
    /// [`DATA_FILES`] and their contents), to `out`. Writers wait while the
    /// trees are copied.
    pub fn write_backup<W: Write>(
        &self,
        out: W,
        files: &[(&str, Vec<u8>)],
        created_at_ms: u64,
    ) -> Result<Summary, BackupError> {
        let mut w = Hashing { inner: std::io::BufWriter::new(out), hash: Sha256::new(), bytes: 0 };
        let write = io("writing the backup");
        let _quiet = self.gate.write();
        let schema = self.schema_version()?;
        let mut summary = Summary { schema, created_at_ms, trees: Vec::new(), files: Vec::new(), bytes: 0 };
        let header = Section::Header { format: MAGIC.into(), version: FORMAT_VERSION, schema, created_at_ms };
        let mut result = line(&mut w, &header);
        for (name, data) in files {
            if result.is_err() {
                break;
            }
            summary.files.push((*name).to_string());
            result = line(&mut w, &Section::File { name: (*name).to_string(), data: B64.encode(data) });
        }
        let mut total = 0u64;
        let mut names: Vec<_> = self.db.tree_names().into_iter().collect();
        names.sort();
        for raw in names {
            if result.is_err() {
                break;
            }
            let name = String::from_utf8_lossy(&raw).into_owned();
            let tree = self.db.open_tree(&raw).map_err(StoreError::Db)?;
            result = line(&mut w, &Section::Tree { name: name.clone() });
            let mut written = 0u64;
            for kv in tree.iter() {
                if result.is_err() {
                    break;
                }
                let (k, v) = kv.map_err(StoreError::Db)?;
                result = line(&mut w, &(B64.encode(&k), B64.encode(&v)));
                written += 1;
            }
            total += written;
            summary.trees.push((name, written));
        }
        result.map_err(write)?;
        drop(_quiet);
        let sha256 = hex::encode(w.hash.clone().finalize());
        summary.bytes = w.bytes;
        let mut inner = w.inner;
        line(&mut inner, &Section::End { entries: total, sha256 }).map_err(io("writing the backup"))?;
        inner.flush().map_err(io("writing the backup"))?;
        Ok(summary)
    }
}

/// Reads a backup through, checking its form, counts and checksum; calls
/// `on_file` and `on_entry` for what it holds.
fn read_backup<R: Read>(
    input: R,
    mut on_file: impl FnMut(&str, Vec<u8>) -> Result<(), BackupError>,
    mut on_entry: impl FnMut(&str, Vec<u8>, Vec<u8>) -> Result<(), BackupError>,
) -> Result<Summary, BackupError> {
    let mut r = BufReader::new(input);
    let mut hash = Sha256::new();
    let mut buf = Vec::new();
    let mut n = 0usize;
    let mut bytes = 0u64;
    let mut summary: Option<Summary> = None;
    let mut tree: Option<(String, u64)> = None;
    let mut total = 0u64;
    loop {
        buf.clear();
        n += 1;
        let bad = |why: String| BackupError::Invalid { line: n, why };
        let got = (&mut r).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf).map_err(io("reading the backup"))?;
        if got == 0 {
            return Err(bad("cut short: no end line".into()));
        }
        if buf.last() != Some(&b'\n') {
            return Err(bad(if got > MAX_LINE { "line too long".into() } else { "cut short".into() }));
        }
        if buf.first() == Some(&b'[') {
            let Some((name, seen)) = &mut tree else { return Err(bad("an entry outside a tree".into())) };
            let (k, v): (String, String) = serde_json::from_slice(&buf).map_err(|e| bad(format!("entry: {e}")))?;
            let k = B64.decode(k).map_err(|e| bad(format!("key: {e}")))?;
            let v = B64.decode(v).map_err(|e| bad(format!("value: {e}")))?;
            on_entry(name, k, v)?;
            *seen += 1;
            total += 1;
            hash.update(&buf);
            bytes += buf.len() as u64;
            continue;
        }
        let section: Section = serde_json::from_slice(&buf).map_err(|e| bad(format!("section: {e}")))?;
        match (section, summary.as_mut()) {
            (Section::Header { format, version, schema, created_at_ms }, None) => {
                if format != MAGIC {
                    return Err(bad(format!("format {format:?}, not {MAGIC}")));
                }
                if version != FORMAT_VERSION {
                    return Err(bad(format!("file format {version}; this build reads {FORMAT_VERSION}")));
                }
                if schema > SCHEMA_VERSION {
                    return Err(BackupError::SchemaTooNew { found: schema, supported: SCHEMA_VERSION });
                }
                summary = Some(Summary { schema, created_at_ms, trees: Vec::new(), files: Vec::new(), bytes: 0 });
            }
            (_, None) => return Err(bad(format!("not a backup: the first line is not a {MAGIC} header"))),
            (Section::File { name, data }, Some(s)) if tree.is_none() => {
                if !DATA_FILES.contains(&name.as_str()) || s.files.contains(&name) {
                    return Err(bad(format!("unexpected file {name:?}")));
                }
                on_file(&name, B64.decode(data).map_err(|e| bad(format!("file {name}: {e}")))?)?;
                s.files.push(name);
            }
            (Section::Tree { name }, Some(s)) => {
                if let Some(done) = tree.take() {
                    s.trees.push(done);
                }
                if s.trees.iter().any(|(t, _)| *t == name) {
                    return Err(bad(format!("tree {name} twice")));
                }
                tree = Some((name, 0));
            }
            (Section::End { entries, sha256 }, Some(s)) => {
                if let Some(done) = tree.take() {
                    s.trees.push(done);
                }
                if entries != total {
                    return Err(bad(format!("{total} entries, the end line says {entries}")));
                }
                if hex::encode(hash.finalize()) != sha256 {
                    return Err(bad("checksum does not match: the file was changed or damaged".into()));
                }
                let mut rest = [0u8; 1];
                if r.read(&mut rest).map_err(io("reading the backup"))? != 0 {
                    return Err(bad("bytes after the end line".into()));
                }
                s.bytes = bytes;
                return Ok(s.clone());
            }
            (other, Some(_)) => return Err(bad(format!("unexpected {other:?}"))),
        }
        hash.update(&buf);
        bytes += buf.len() as u64;
    }
}

/// A data-directory file a backup carries: its name in [`DATA_FILES`] and
/// its contents.
pub type DataFile = (String, Vec<u8>);

/// Checks a backup file whole without writing anything.
pub fn verify(path: &Path) -> Result<Summary, BackupError> {
    let f = std::fs::File::open(path).map_err(io(format!("opening {}", path.display())))?;
    read_backup(f, |_, _| Ok(()), |_, _, _| Ok(()))
}

/// Restores the backup read from `file` into a new database at `db_dir`
/// (which must not hold one) and returns the data-directory files it
/// carries. The file is verified whole first; a database of an older
/// schema is migrated the next time it is opened.
pub fn restore(file: &mut std::fs::File, db_dir: &Path) -> Result<(Summary, Vec<DataFile>), BackupError> {
    use std::io::Seek;
    let rewind = |f: &mut std::fs::File| f.rewind().map_err(io("reading the backup"));
    rewind(file)?;
    read_backup(&mut *file, |_, _| Ok(()), |_, _, _| Ok(()))?;
    rewind(file)?;
    if db_dir.exists() && std::fs::read_dir(db_dir).map_err(io(db_dir.display().to_string()))?.next().is_some() {
        return Err(BackupError::Exists(db_dir.display().to_string()));
    }
    let db = sled::Config::new().path(db_dir).open().map_err(StoreError::Db)?;
    let mut files = Vec::new();
    let mut current: Option<(String, sled::Tree)> = None;
    let imported = read_backup(
        &mut *file,
        |name, data| {
            files.push((name.to_string(), data));
            Ok(())
        },
        |name, k, v| {
            if current.as_ref().map(|(n, _)| n.as_str()) != Some(name) {
                current = Some((name.to_string(), db.open_tree(name).map_err(StoreError::Db)?));
            }
            if let Some((_, t)) = &current {
                t.insert(k, v).map_err(StoreError::Db)?;
            }
            Ok(())
        },
    )
    .and_then(|summary| db.flush().map(|_| summary).map_err(|e| StoreError::Db(e).into()));
    drop((current, db));
    match imported {
        Ok(summary) => Ok((summary, files)),
        Err(e) => {
            // The directory was empty or absent: leave it so, not half full.
            let _ = std::fs::remove_dir_all(db_dir);
            Err(e)
        }
    }
}

/// The [`DATA_FILES`] present in `data_dir`, with their contents.
pub fn data_files(data_dir: &Path) -> Result<Vec<(&'static str, Vec<u8>)>, BackupError> {
    let mut out = Vec::new();
    for name in DATA_FILES {
        let path = data_dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => out.push((name, bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BackupError::Io { what: format!("reading {}", path.display()), source: e }),
        }
    }
    Ok(out)
}

/// What [`restore_data_dir`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    /// What the backup held.
    pub summary: Summary,
    /// The files written into the data directory.
    pub files: Vec<String>,
    /// What was moved aside (with `force`, or a file the backup replaced).
    pub moved_aside: Vec<String>,
}

/// Restores a backup into `data_dir`: its database into `data_dir/db` and
/// its files (key, certificate, TURN secret) beside it, each readable only
/// by the owner. An existing database is refused, or with `force` moved
/// aside; an existing file that differs from the backup's is moved aside.
/// The caller makes sure no node runs on `data_dir` (the database lock
/// also refuses one).
/// With `without_node_key`, the backup's node key (and the hand-over files
/// that go with it) are left out: the data directory keeps its own key, for
/// a move to a new key (see [`crate::handover`]).
pub fn restore_data_dir(
    file: &mut std::fs::File,
    data_dir: &Path,
    force: bool,
    without_node_key: bool,
) -> Result<Restored, BackupError> {
    let db_dir = data_dir.join("db");
    let stamp = crate::services::accounts::now_ms() / 1000;
    let mut moved_aside = Vec::new();
    let mut aside = |path: &Path| -> Result<(), BackupError> {
        let to = path.with_file_name(format!(
            "{}.before-restore.{stamp}",
            path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        ));
        std::fs::rename(path, &to).map_err(io(format!("moving {} aside", path.display())))?;
        moved_aside.push(to.display().to_string());
        Ok(())
    };
    // The whole file first: a bad backup changes nothing.
    {
        use std::io::Seek;
        file.rewind().map_err(io("reading the backup"))?;
        read_backup(&mut *file, |_, _| Ok(()), |_, _, _| Ok(()))?;
    }
    let mut old_db = None;
    if db_dir.exists() {
        // Proves no node holds it (sled's lock), without opening it as a
        // store, which would migrate the database about to be replaced.
        match sled::Config::new().path(&db_dir).open() {
            Ok(db) => drop(db),
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(11) => {
                return Err(StoreError::Locked.into())
            }
            Err(e) => return Err(StoreError::Db(e).into()),
        }
        if !force {
            return Err(BackupError::Exists(db_dir.display().to_string()));
        }
        aside(&db_dir)?;
        old_db = Some(db_dir.with_file_name(format!("db.before-restore.{stamp}")));
    }
    std::fs::create_dir_all(data_dir).map_err(io(format!("creating {}", data_dir.display())))?;
    let (summary, files) = match restore(file, &db_dir) {
        Ok(r) => r,
        Err(e) => {
            // Put the database that was there back.
            if let Some(old) = old_db {
                let _ = std::fs::rename(old, &db_dir);
            }
            return Err(e);
        }
    };
    let mut written = Vec::new();
    for (name, bytes) in files {
        if without_node_key && ["node.key", "handover.json", "handed-over.json"].contains(&name.as_str()) {
            continue;
        }
        let path = data_dir.join(&name);
        match std::fs::read(&path) {
            Ok(old) if old == bytes => {}
            Ok(_) => aside(&path)?,
            Err(_) => {}
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        if !path.exists() {
            crate::identity::write_private(&path, &bytes).map_err(io(format!("writing {}", path.display())))?;
        }
        written.push(name);
    }
    Ok(Restored { summary, files: written, moved_aside })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{SessionRecord, UserRecord};

    fn user(name: &str) -> UserRecord {
        UserRecord { name: name.into(), password_hash: "h".into(), created_at_ms: 1, admin: false }
    }

    #[test]
    fn a_backup_restores_every_tree_and_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&dir.path().join("db")).expect("open");
        s.create_user(&user("alice")).expect("user");
        let rec = SessionRecord {
            id: "s1".into(),
            user: "alice".into(),
            device: String::new(),
            created_at_ms: 1,
            last_used_at_ms: 1,
            expires_at_ms: u64::MAX,
        };
        s.create_session(&[7; 32], &rec, 5).expect("session");
        let id = s.next_id().expect("id");
        let file = dir.path().join("b.xarxa-backup");
        let out = std::fs::File::create(&file).expect("create");
        let summary = s.write_backup(out, &[("node.key", b"secret".to_vec())], 42).expect("backup");
        assert_eq!(verify(&file).expect("verify"), summary);
        drop(s);

        let mut f = std::fs::File::open(&file).expect("open");
        let (restored, files) = restore(&mut f, &dir.path().join("db2")).expect("restore");
        assert_eq!(restored, summary);
        assert_eq!(files, vec![("node.key".to_string(), b"secret".to_vec())]);
        let r = Store::open(&dir.path().join("db2")).expect("open restored");
        assert_eq!(r.users().expect("users"), vec![user("alice")]);
        assert_eq!(r.sessions_of("alice").expect("sessions"), vec![rec]);
        assert!(r.next_id().expect("id") > id, "ids go on from the backup's counter");
        assert!(matches!(restore(&mut f, &dir.path().join("db2")), Err(BackupError::Exists(_))));
    }

    /// Sessions are written in two trees at once; a backup taken while
    /// sessions come and go holds each one in both trees or in neither.
    #[test]
    fn a_backup_taken_during_writes_is_one_moment() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&dir.path().join("db")).expect("open");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = format!("s{i}");
                    let rec = SessionRecord {
                        id: id.clone(),
                        user: "alice".into(),
                        device: String::new(),
                        created_at_ms: u64::from(i),
                        last_used_at_ms: 0,
                        expires_at_ms: u64::MAX,
                    };
                    let mut hash = [0u8; 32];
                    hash[..4].copy_from_slice(&i.to_be_bytes());
                    s.create_session(&hash, &rec, 1000).expect("create");
                    if i % 2 == 0 {
                        s.revoke_session("alice", &id).expect("revoke");
                    }
                    i += 1;
                }
            })
        };
        for round in 0..40 {
            let mut out = Vec::new();
            s.write_backup(&mut out, &[], 1).expect("backup");
            let (mut sessions, mut ids) = (0u64, 0u64);
            read_backup(
                out.as_slice(),
                |_, _| Ok(()),
                |tree, _, _| {
                    match tree {
                        "sessions" => sessions += 1,
                        "session_ids" => ids += 1,
                        _ => {}
                    }
                    Ok(())
                },
            )
            .expect("read");
            assert_eq!(sessions, ids, "round {round}: a session without its index entry, or the reverse");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().expect("writer");
    }

    #[test]
    fn a_damaged_backup_is_refused_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(&dir.path().join("db")).expect("open");
        for n in ["alice", "bob", "carol"] {
            s.create_user(&user(n)).expect("user");
        }
        let mut good = Vec::new();
        s.write_backup(&mut good, &[], 1).expect("backup");
        let text = String::from_utf8(good.clone()).expect("utf8");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("cut short", good[..good.len() / 2].to_vec()),
            ("altered", text.replacen("YWxpY2U", "YWxpY2X", 1).into_bytes()),
            ("no end", text.lines().take(text.lines().count() - 1).collect::<Vec<_>>().join("\n").into_bytes()),
            ("not a backup", b"{\"users\": []}\n".to_vec()),
            ("trailing", [good.clone(), b"x".to_vec()].concat()),
            (
                "escaping file",
                text.replacen("\n", "\n{\"kind\":\"file\",\"name\":\"../../etc/passwd\",\"data\":\"\"}\n", 1)
                    .into_bytes(),
            ),
        ];
        for (what, bytes) in cases {
            let path = dir.path().join("bad");
            std::fs::write(&path, &bytes).expect("write");
            assert!(matches!(verify(&path), Err(BackupError::Invalid { .. })), "{what}");
            let target = dir.path().join(format!("db-{}", what.replace(' ', "-")));
            let mut f = std::fs::File::open(&path).expect("open");
            assert!(restore(&mut f, &target).is_err(), "{what}");
            assert!(!target.exists(), "{what}: nothing written");
        }
    }
}
