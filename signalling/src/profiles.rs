//! Profiles: how a user shows themself to their contacts (a nickname, a
//! description, an avatar), and how a node asks another for one of its
//! users' profiles over the mesh.
//!
//! A profile carries a version `v` that grows with every change; the
//! user's presence carries the version too ([`crate::contacts::Presence`]'s
//! `profile_v`), so a contact's node learns of a change with the next
//! presence update and asks for the profile again only then.

use serde::{Deserialize, Serialize};

use crate::address::UserName;
use crate::service::Service;

/// Longest nickname, in characters.
pub const MAX_NICKNAME_CHARS: usize = 64;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Largest avatar, in bytes: it travels base64-encoded in one mesh reply.
pub const MAX_AVATAR_BYTES: usize = 40 * 1024;

/// A user's profile.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Profile {
    /// What the user calls themself (may be empty: show the address).
    #[serde(default)]
    pub nickname: String,
    /// A few words about them.
    #[serde(default)]
    pub description: String,
    /// The avatar's media type (`image/png`, `image/jpeg`, `image/webp`),
    /// if they have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    /// Grows with every change.
    #[serde(default)]
    pub v: u64,
}

/// The image types an avatar may be, by their first bytes; anything else
/// (SVG, HTML, a script named `.png`) is refused.
pub fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// The profiles service between nodes: a request acts for the user who
/// asks; the receiving node answers only for a user of its own who holds
/// the asker as an accepted contact.
#[derive(Debug, Clone, Copy)]
pub struct ProfileService;

impl Service for ProfileService {
    const NAME: &'static str = "profile";
    const MAX_BYTES: usize = 1024;
    type Request = ProfileQuery;
    type Reply = ProfileAnswer;
}

/// What one node asks another of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProfileQuery {
    /// The profile of `user` (of the receiving node).
    Get {
        /// Whose.
        user: UserName,
    },
    /// The avatar of `user`.
    Avatar {
        /// Whose.
        user: UserName,
    },
}

/// The answer to a [`ProfileQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProfileAnswer {
    /// The profile.
    Profile {
        /// It.
        profile: Profile,
    },
    /// The avatar.
    Avatar {
        /// Its media type (sniffed when it was set).
        mime: String,
        /// Its bytes, base64 (standard alphabet).
        data: String,
        /// The profile version it belongs to.
        v: u64,
    },
    /// Not for the asker: no such user, no avatar, or not an accepted
    /// contact of the asker.
    NotVisible,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_raster_images_pass_the_sniff() {
        assert_eq!(sniff_image(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Some("image/png"));
        assert_eq!(sniff_image(&[0xff, 0xd8, 0xff, 0xe0, 0, 0x10]), Some("image/jpeg"));
        assert_eq!(sniff_image(b"RIFF\x10\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff_image(b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>"), None);
        assert_eq!(sniff_image(b"<html><script>alert(1)</script>"), None);
        assert_eq!(sniff_image(b"GIF89a"), None);
        assert_eq!(sniff_image(b""), None);
    }
}
