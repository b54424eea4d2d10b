//! The `invites` tree: invite codes and the registrations they still allow.

use serde::{Deserialize, Serialize};

use super::{dec, enc, Store, StoreError};

/// An invite code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    /// Registrations it still allows.
    pub uses_left: u32,
    /// Created, ms since the epoch.
    pub created_at_ms: u64,
}

impl Store {
    /// Stores an invite code.
    pub fn create_invite(&self, code: &str, rec: &InviteRecord) -> Result<(), StoreError> {
        let _w = self.writing();
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
        let _w = self.writing();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invites_are_used_up() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = Store::open(dir.path()).expect("open");
        s.create_invite("abc", &InviteRecord { uses_left: 2, created_at_ms: 0 }).expect("create");
        assert!(s.take_invite("abc").expect("1"));
        assert!(s.take_invite("abc").expect("2"));
        assert!(!s.take_invite("abc").expect("3"));
        assert!(!s.take_invite("nope").expect("4"));
    }
}
