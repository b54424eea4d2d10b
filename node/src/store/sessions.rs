//! The `sessions` tree (token hash → session) and its index
//! `session_ids` (user \0 session id → token hash), written together.

use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::{dec, enc, tx_err, user_prefix, user_str_key, Store, StoreError};

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

impl Store {
    /// Stores a new session under its token hash, revoking the user's
    /// oldest sessions beyond `max`. Returns the revoked ids.
    pub fn create_session(
        &self,
        token_hash: &[u8; 32],
        rec: &SessionRecord,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        let _w = self.writing();
        {
            let _t = self.transacting();
            (&self.sessions, &self.session_ids)
                .transaction(|(s, ids)| {
                    s.insert(&token_hash[..], enc(rec))?;
                    ids.insert(user_str_key(&rec.user, &rec.id), &token_hash[..])?;
                    Ok::<_, ConflictableTransactionError<StoreError>>(())
                })
                .map_err(tx_err)?;
        }
        let mut all = self.sessions_of(&rec.user)?;
        let mut revoked = Vec::new();
        if all.len() > max {
            all.sort_by_key(|s| s.created_at_ms);
            let excess = all.len() - max;
            for old in all.into_iter().take(excess) {
                if self.revoke_session_held(&rec.user, &old.id)?.is_some() {
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
        let _w = self.writing();
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
        let _w = self.writing();
        self.revoke_session_held(user, id)
    }

    /// [`Store::revoke_session`] for a caller that holds the write gate.
    fn revoke_session_held(&self, user: &str, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let key = user_str_key(user, id);
        let Some(hash) = self.session_ids.get(&key)? else { return Ok(None) };
        let _t = self.transacting();
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
        let _w = self.writing();
        self.revoke_sessions_held(user, keep)
    }

    /// [`Store::revoke_sessions`] for a caller that holds the write gate.
    pub(super) fn revoke_sessions_held(&self, user: &str, keep: Option<&str>) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> =
            self.sessions_of(user)?.into_iter().map(|s| s.id).filter(|id| Some(id.as_str()) != keep).collect();
        for id in &ids {
            self.revoke_session_held(user, id)?;
        }
        Ok(ids)
    }

    /// Deletes sessions that expired before `now_ms`; returns how many.
    pub fn purge_expired_sessions(&self, now_ms: u64) -> Result<usize, StoreError> {
        let _w = self.writing();
        let mut expired = Vec::new();
        for kv in self.sessions.iter() {
            let (_, v) = kv?;
            let rec: SessionRecord = dec("sessions", &v)?;
            if rec.expires_at_ms <= now_ms {
                expired.push(rec);
            }
        }
        for rec in &expired {
            self.revoke_session_held(&rec.user, &rec.id)?;
        }
        Ok(expired.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
