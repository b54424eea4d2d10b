//! The `users` tree: accounts by name.

use serde::{Deserialize, Serialize};

use super::{dec, enc, user_prefix, Store, StoreError};

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The local name.
    pub name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Creation time, ms since the epoch.
    pub created_at_ms: u64,
    /// May manage the zone from the web: make and list invite codes
    /// (`xarxa user add --admin`; `xarxa setup`'s first account).
    #[serde(default)]
    pub admin: bool,
}

impl Store {
    /// Creates an account; `false` if the name is taken.
    pub fn create_user(&self, rec: &UserRecord) -> Result<bool, StoreError> {
        let _w = self.writing();
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
        let _w = self.writing();
        let Some(mut rec) = self.user(name)? else { return Ok(false) };
        rec.password_hash = hash.to_string();
        self.users.insert(name.as_bytes(), enc(&rec))?;
        Ok(true)
    }

    /// Deletes the account of `address` (a user of this zone) with its
    /// sessions, history, notices, contacts, profile (and every local user's
    /// contact of it). Returns the revoked session ids, or `None` if there
    /// was no such user.
    pub fn remove_user(&self, address: &signalling::Address) -> Result<Option<Vec<String>>, StoreError> {
        let name = address.name.as_str();
        let _w = self.writing();
        if self.users.remove(name.as_bytes())?.is_none() {
            return Ok(None);
        }
        let revoked = self.revoke_sessions_held(name, None)?;
        for tree in [&self.history, &self.notices] {
            for k in tree.scan_prefix(user_prefix(name)).keys() {
                tree.remove(k?)?;
            }
        }
        self.remove_contacts_of_held(name, address)?;
        self.remove_profile_held(name)?;
        Ok(Some(revoked))
    }
}
