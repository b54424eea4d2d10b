//! User and zone names: `name@zone`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest user name part, in bytes.
pub const MAX_NAME_LEN: usize = 32;
/// Longest zone name, in bytes (one DNS label).
pub const MAX_ZONE_LEN: usize = 63;

/// Why a name or address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The address has no `@`.
    #[error("an address is name@zone")]
    MissingAt,
    /// The user name part breaks the naming rules.
    #[error(
        "user name must be 1-{MAX_NAME_LEN} characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
    )]
    BadName,
    /// The zone part breaks the naming rules.
    #[error(
        "zone name must be 1-{MAX_ZONE_LEN} characters of a-z, 0-9 or '-', starting and ending with a letter or digit"
    )]
    BadZone,
}

/// A user's local name on a zone (`alice`). Lower-case ASCII, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserName(String);

/// A zone's name (`gracia`). Lower-case ASCII, validated; one DNS label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ZoneName(String);

/// A user's full address, `name@zone`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address {
    /// The user's name on its home zone.
    pub name: UserName,
    /// The user's home zone.
    pub zone: ZoneName,
}

impl UserName {
    /// Parses a user name, accepting upper case and folding it to lower case.
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let s = s.to_ascii_lowercase();
        let ok = !s.is_empty()
            && s.len() <= MAX_NAME_LEN
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && s.as_bytes()[0].is_ascii_alphanumeric();
        if ok {
            Ok(Self(s))
        } else {
            Err(AddressError::BadName)
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl ZoneName {
    /// Parses a zone name, accepting upper case and folding it to lower case.
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let s = s.to_ascii_lowercase();
        let b = s.as_bytes();
        let ok = !s.is_empty()
            && s.len() <= MAX_ZONE_LEN
            && b.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && b[0] != b'-'
            && b[b.len() - 1] != b'-';
        if ok {
            Ok(Self(s))
        } else {
            Err(AddressError::BadZone)
        }
    }

    /// The zone name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Address {
    /// Builds an address from its parts.
    pub fn new(name: UserName, zone: ZoneName) -> Self {
        Self { name, zone }
    }

    /// Parses `name@zone`. A bare `name` is refused: callers that want to
    /// default the zone use [`Address::parse_with_default_zone`].
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        let (name, zone) = s.trim().rsplit_once('@').ok_or(AddressError::MissingAt)?;
        Ok(Self { name: UserName::parse(name)?, zone: ZoneName::parse(zone)? })
    }

    /// Parses `name@zone`, or a bare `name` on `zone`.
    pub fn parse_with_default_zone(s: &str, zone: &ZoneName) -> Result<Self, AddressError> {
        if s.contains('@') {
            Self::parse(s)
        } else {
            Ok(Self { name: UserName::parse(s.trim())?, zone: zone.clone() })
        }
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for ZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.zone)
    }
}

impl FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

macro_rules! string_conversions {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = AddressError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    };
}
string_conversions!(UserName);
string_conversions!(ZoneName);
string_conversions!(Address);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_folds_case() {
        let a = Address::parse("Alice@Gracia").expect("valid");
        assert_eq!(a.to_string(), "alice@gracia");
        assert_eq!(Address::parse("alice"), Err(AddressError::MissingAt));
        assert_eq!(Address::parse("@gracia"), Err(AddressError::BadName));
        assert_eq!(Address::parse("al ice@gracia"), Err(AddressError::BadName));
        assert_eq!(Address::parse("alice@-gracia"), Err(AddressError::BadZone));
        assert_eq!(Address::parse("alice@gra.cia"), Err(AddressError::BadZone));
        let z = ZoneName::parse("sants").expect("valid");
        assert_eq!(Address::parse_with_default_zone("bob", &z).expect("valid").to_string(), "bob@sants");
    }

    #[test]
    fn serde_validates() {
        let a: Address = serde_json::from_str("\"bob@sants\"").expect("valid");
        assert_eq!(serde_json::to_string(&a).expect("ser"), "\"bob@sants\"");
        assert!(serde_json::from_str::<Address>("\"bob@@\"").is_err());
    }

    proptest! {
        #[test]
        fn round_trip(name in "[a-z0-9][a-z0-9._-]{0,31}", zone in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?") {
            let s = format!("{name}@{zone}");
            let a = Address::parse(&s).expect("generated valid");
            prop_assert_eq!(a.to_string(), s);
        }

        #[test]
        fn never_panics(s in ".{0,80}") {
            let _ = Address::parse(&s);
        }
    }
}
