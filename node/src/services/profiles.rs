//! The profiles service: a user's own profile (nickname, description,
//! avatar) and the profiles of their accepted contacts, on this zone or
//! fetched from another over the mesh and cached by version.
//!
//! Only an accepted contact sees a profile, here and across zones: the
//! owning node answers a remote request only for a user of its own who
//! holds the asker (the user the request acts for) as an accepted
//! contact. A change bumps the profile's version, which rides on the
//! user's presence, so contacts' nodes ask again only after a change.
//!
//! An avatar is a PNG, JPEG or WebP image (sniffed from its bytes, never
//! from what the client says), at most [`MAX_AVATAR_BYTES`]; it is served
//! only with its sniffed type, `nosniff` and a sandboxing CSP.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use dht::{Mesh, RouteError};
use signalling::profiles::{
    sniff_image, Profile, ProfileAnswer, ProfileQuery, ProfileService, MAX_AVATAR_BYTES, MAX_DESCRIPTION_CHARS,
    MAX_NICKNAME_CHARS,
};
use signalling::{Address, UserName, ZoneName};

use crate::services::accounts::now_ms;
use crate::services::presence::{Command as PresenceCommand, PresenceHub};
use crate::store::{Avatar, Store, StoreError};

/// Remote profiles cached (each at most about 41 KiB with its avatar);
/// past that the cache starts afresh.
const MAX_CACHED: usize = 1_000;

/// Why a profile request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// A field is too long.
    #[error("{0}")]
    TooLong(String),
    /// A field holds control characters.
    #[error("{0}: no control characters")]
    ControlCharacters(&'static str),
    /// The avatar is not a PNG, JPEG or WebP image.
    #[error("an avatar must be a PNG, JPEG or WebP image")]
    BadImage,
    /// The avatar is too large.
    #[error("an avatar is at most {MAX_AVATAR_BYTES} bytes")]
    TooLarge,
    /// No such profile for this user to see (not an accepted contact, no
    /// such user, no avatar).
    #[error("not found")]
    NotVisible,
    /// The other zone's node could not be asked.
    #[error("the other zone could not be reached: {0}")]
    Unreachable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The profiles service.
pub struct Profiles {
    store: Store,
    mesh: Option<Mesh>,
    zone: ZoneName,
    presence: PresenceHub,
    cache: Mutex<HashMap<Address, Cached>>,
}

#[derive(Clone, Default)]
struct Cached {
    profile: Profile,
    avatar: Option<(u64, Avatar)>,
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<String, ProfileError> {
    let value = value.trim();
    if value.chars().count() > max {
        return Err(ProfileError::TooLong(format!("{field}: at most {max} characters")));
    }
    if value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ProfileError::ControlCharacters(field));
    }
    Ok(value.to_string())
}

impl Profiles {
    /// The service over `store`, asking other nodes through `mesh`.
    pub fn new(store: Store, mesh: Option<Mesh>, zone: ZoneName, presence: PresenceHub) -> Self {
        Self { store, mesh, zone, presence, cache: Mutex::default() }
    }

    /// `user`'s own profile.
    pub fn own(&self, user: &UserName) -> Result<Profile, ProfileError> {
        Ok(self.store.profile(user)?)
    }

    /// Sets `user`'s nickname and description.
    pub async fn update(&self, user: &UserName, nickname: &str, description: &str) -> Result<Profile, ProfileError> {
        let nickname = check_text("nickname", nickname, MAX_NICKNAME_CHARS)?;
        if nickname.contains('\n') {
            return Err(ProfileError::ControlCharacters("nickname"));
        }
        let description = check_text("description", description, MAX_DESCRIPTION_CHARS)?;
        let p = self.store.update_profile(user, now_ms(), |p| {
            p.nickname = nickname;
            p.description = description;
        })?;
        self.changed(user).await?;
        Ok(p)
    }

    /// Sets `user`'s avatar from `bytes` (sniffed), or removes it.
    pub async fn set_avatar(&self, user: &UserName, bytes: Option<&[u8]>) -> Result<Profile, ProfileError> {
        let avatar = match bytes {
            Some(b) if b.len() > MAX_AVATAR_BYTES => return Err(ProfileError::TooLarge),
            Some(b) => {
                let mime = sniff_image(b).ok_or(ProfileError::BadImage)?;
                Some(Avatar { mime: mime.to_string(), data: b.to_vec() })
            }
            None => None,
        };
        let p = self.store.set_avatar(user, now_ms(), avatar)?;
        self.changed(user).await?;
        Ok(p)
    }

    async fn changed(&self, user: &UserName) -> Result<(), ProfileError> {
        self.store.flush().await?;
        self.presence.send(PresenceCommand::ProfileChanged { user: user.clone() }).await;
        Ok(())
    }

    /// `user`'s own avatar.
    pub fn own_avatar(&self, user: &UserName) -> Result<Avatar, ProfileError> {
        self.store.avatar(user)?.ok_or(ProfileError::NotVisible)
    }

    fn visible(&self, viewer: &UserName, of: &Address) -> Result<(), ProfileError> {
        if self.store.accepted(viewer, of)? {
            Ok(())
        } else {
            Err(ProfileError::NotVisible)
        }
    }

    fn cached(&self, of: &Address) -> Option<Cached> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(of).cloned()
    }

    fn keep(&self, of: &Address, entry: Cached) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED && !cache.contains_key(of) {
            cache.clear();
        }
        cache.insert(of.clone(), entry);
    }

    async fn ask(&self, viewer: &UserName, of: &Address, query: ProfileQuery) -> Result<ProfileAnswer, ProfileError> {
        let mesh = self.mesh.as_ref().ok_or(ProfileError::NotVisible)?;
        match mesh.send::<ProfileService>(of, Some(viewer), &query).await {
            Ok((_, answer)) => Ok(answer),
            Err(RouteError::UnknownUser | RouteError::UnknownZone) => Err(ProfileError::NotVisible),
            Err(e) => Err(ProfileError::Unreachable(e.to_string())),
        }
    }

    /// The profile of `of` as `viewer` (who must hold `of` as an accepted
    /// contact) may see it; a remote one from the cache unless older than
    /// `at_least` (the version the viewer last saw in `of`'s presence).
    pub async fn of(&self, viewer: &UserName, of: &Address, at_least: u64) -> Result<Profile, ProfileError> {
        self.visible(viewer, of)?;
        if of.zone == self.zone {
            return Ok(self.store.profile(&of.name)?);
        }
        if let Some(c) = self.cached(of).filter(|c| c.profile.v >= at_least && c.profile.v > 0) {
            return Ok(c.profile);
        }
        match self.ask(viewer, of, ProfileQuery::Get { user: of.name.clone() }).await? {
            ProfileAnswer::Profile { mut profile } => {
                // What another node sends is held to the limits of this one.
                profile.nickname =
                    profile.nickname.chars().filter(|c| !c.is_control()).take(MAX_NICKNAME_CHARS).collect();
                profile.description = profile.description.chars().take(MAX_DESCRIPTION_CHARS).collect();
                if profile.avatar.as_deref().is_some_and(|m| !["image/png", "image/jpeg", "image/webp"].contains(&m)) {
                    profile.avatar = None;
                }
                let avatar = self.cached(of).and_then(|c| c.avatar);
                self.keep(of, Cached { profile: profile.clone(), avatar });
                Ok(profile)
            }
            _ => Err(ProfileError::NotVisible),
        }
    }

    /// The avatar of `of` as `viewer` may see it.
    pub async fn avatar_of(&self, viewer: &UserName, of: &Address) -> Result<Avatar, ProfileError> {
        self.visible(viewer, of)?;
        if of.zone == self.zone {
            return self.store.avatar(&of.name)?.ok_or(ProfileError::NotVisible);
        }
        let cached = self.cached(of).unwrap_or_default();
        if let Some((v, a)) = &cached.avatar {
            if *v >= cached.profile.v {
                return Ok(a.clone());
            }
        }
        match self.ask(viewer, of, ProfileQuery::Avatar { user: of.name.clone() }).await? {
            ProfileAnswer::Avatar { mime, data, v } => {
                let data =
                    base64::engine::general_purpose::STANDARD.decode(data).map_err(|_| ProfileError::BadImage)?;
                // What another node sends is checked as if uploaded here.
                if data.len() > MAX_AVATAR_BYTES || sniff_image(&data) != Some(mime.as_str()) {
                    return Err(ProfileError::BadImage);
                }
                let avatar = Avatar { mime, data };
                let mut entry = self.cached(of).unwrap_or_default();
                entry.avatar = Some((v, avatar.clone()));
                self.keep(of, entry);
                Ok(avatar)
            }
            _ => Err(ProfileError::NotVisible),
        }
    }

    /// A question from another node, acting for `asker`.
    pub fn from_node(&self, asker: &Address, query: &ProfileQuery) -> Result<ProfileAnswer, ProfileError> {
        let user = match query {
            ProfileQuery::Get { user } | ProfileQuery::Avatar { user } => user,
            _ => return Ok(ProfileAnswer::NotVisible),
        };
        if asker.zone == self.zone || self.visible(user, asker).is_err() {
            return Ok(ProfileAnswer::NotVisible);
        }
        Ok(match query {
            ProfileQuery::Get { .. } => ProfileAnswer::Profile { profile: self.store.profile(user)? },
            _ => match self.store.avatar(user)? {
                Some(a) => ProfileAnswer::Avatar {
                    mime: a.mime,
                    data: base64::engine::general_purpose::STANDARD.encode(a.data),
                    v: self.store.profile(user)?.v,
                },
                None => ProfileAnswer::NotVisible,
            },
        })
    }
}
