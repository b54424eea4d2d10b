//! The `profiles` tree (user → [`Profile`]) and `avatars` (user → the
//! avatar's media type and bytes).

use serde::{Deserialize, Serialize};
use signalling::profiles::Profile;
use signalling::UserName;

use super::{dec, enc, Store, StoreError};

/// An avatar as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Avatar {
    /// Its media type, sniffed when it was set.
    pub mime: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

impl Store {
    /// `user`'s profile (the empty one, version 0, if never set).
    pub fn profile(&self, user: &UserName) -> Result<Profile, StoreError> {
        Ok(self.profiles.get(user.as_str())?.map(|v| dec("profiles", &v)).transpose()?.unwrap_or_default())
    }

    /// Changes `user`'s profile with `change`; its version becomes larger
    /// than before (and at least `now_ms`). Returns the new profile.
    pub fn update_profile(
        &self,
        user: &UserName,
        now_ms: u64,
        change: impl FnOnce(&mut Profile),
    ) -> Result<Profile, StoreError> {
        let _one = self.profile_lock.lock();
        self.update_profile_held(user, now_ms, change)
    }

    /// [`Store::update_profile`] for a caller holding `profile_lock`.
    fn update_profile_held(
        &self,
        user: &UserName,
        now_ms: u64,
        change: impl FnOnce(&mut Profile),
    ) -> Result<Profile, StoreError> {
        let _w = self.writing();
        let mut p = self.profile(user)?;
        change(&mut p);
        p.v = now_ms.max(p.v + 1);
        self.profiles.insert(user.as_str(), enc(&p))?;
        Ok(p)
    }

    /// Sets (or with `None`, removes) `user`'s avatar and the profile's
    /// note of it, in one go for readers: the avatar first, so a profile
    /// never names an avatar that is not there.
    pub fn set_avatar(&self, user: &UserName, now_ms: u64, avatar: Option<Avatar>) -> Result<Profile, StoreError> {
        let mime = avatar.as_ref().map(|a| a.mime.clone());
        // One change of a profile at a time: a nickname saved on one device
        // while a picture goes up on another loses neither.
        let _one = self.profile_lock.lock();
        {
            let _w = self.writing();
            match &avatar {
                Some(a) => self.avatars.insert(user.as_str(), enc(a))?,
                None => self.avatars.remove(user.as_str())?,
            };
        }
        self.update_profile_held(user, now_ms, |p| p.avatar = mime)
    }

    /// `user`'s avatar, if any.
    pub fn avatar(&self, user: &UserName) -> Result<Option<Avatar>, StoreError> {
        self.avatars.get(user.as_str())?.map(|v| dec("avatars", &v)).transpose()
    }

    /// Removes `user`'s profile and avatar (an account that goes).
    pub(super) fn remove_profile_held(&self, user: &str) -> Result<(), StoreError> {
        self.profiles.remove(user.as_bytes())?;
        self.avatars.remove(user.as_bytes())?;
        Ok(())
    }
}
