//! Contacts and presence: what a device sees of them, and what nodes tell
//! each other about them over the mesh.
//!
//! A contact is mutual and asked for: `alice@gracia` asks `bob@sants`, and
//! each side holds a [`Contact`] of the other, [`ContactState::Outgoing`]
//! on the asker's node and [`ContactState::Incoming`] on the asked one's,
//! until Bob accepts (both [`ContactState::Accepted`]), denies, or either
//! removes it. Presence is shown only between accepted contacts.
//!
//! Between nodes, the [`ContactService`] carries those steps (each acting
//! for the user who takes it, and naming the other party, a user of the
//! receiving node), and the [`PresenceService`] carries presence: one
//! [`PresenceNote::Update`] per remote *node* that holds accepted contacts
//! of the user (the receiving node fans it out to its own users), and a
//! periodic [`PresenceNote::Sync`] that re-reads every pair the two nodes
//! share, so a node that was down, or missed an update, catches up.

use serde::{Deserialize, Serialize};

use crate::address::{Address, UserName};
use crate::service::Service;

/// Longest status text, in characters.
pub const MAX_STATUS_CHARS: usize = 140;
/// Most pairs one [`PresenceNote::Sync`] names; a node with more splits
/// them over several. Bounded so that a sync and its answer (a presence,
/// with a status of up to 140 characters, per pair at most) stay well
/// inside one mesh message (64 KiB).
pub const MAX_SYNC_PAIRS: usize = 64;

/// Where a contact stands, as seen by the user who holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactState {
    /// This user asked; the other has not answered.
    Outgoing,
    /// The other asked; this user has not answered.
    Incoming,
    /// Both agreed: each sees the other's presence.
    Accepted,
}

/// What a user can set of their own presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Available (shown as away when every device is idle).
    #[default]
    Online,
    /// Away, whatever the devices say.
    Away,
    /// Do not disturb.
    Busy,
}

/// How a user appears to their contacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    /// A device is connected and someone is at it.
    Online,
    /// Connected, but idle (or set away).
    Away,
    /// Connected, do not disturb.
    Busy,
    /// In a call.
    InCall,
    /// No device connected.
    #[default]
    Offline,
}

/// A user's presence as their contacts see it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Presence {
    /// The state.
    pub state: PresenceState,
    /// The user's status text (may be empty).
    #[serde(default)]
    pub status: String,
    /// Orders updates of one user: a receiver keeps the highest it saw
    /// (a sync's answer replaces it whatever its value).
    #[serde(default)]
    pub v: u64,
    /// Since when the state holds (ms since the Unix epoch).
    #[serde(default)]
    pub since_ms: u64,
    /// The version of the user's profile: a contact whose copy is older
    /// asks for it again.
    #[serde(default)]
    pub profile_v: u64,
}

/// One contact of a user, as the API and the device see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The other user.
    pub address: Address,
    /// Where it stands.
    pub state: ContactState,
    /// When it got there (ms since the Unix epoch).
    pub since_ms: u64,
    /// The other user's presence: only for an accepted contact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Presence>,
}

/// The contacts service between nodes: each request acts for the user
/// taking the step, and names `to`, a user of the receiving node.
#[derive(Debug, Clone, Copy)]
pub struct ContactService;

impl Service for ContactService {
    const NAME: &'static str = "contact";
    const MAX_BYTES: usize = 1024;
    type Request = ContactStep;
    type Reply = ContactAnswer;
}

/// One step of a contact between users of two nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ContactStep {
    /// The acting user asks `to` to be contacts.
    Ask {
        /// The user asked, of the receiving node.
        to: UserName,
    },
    /// The acting user accepts `to`'s request.
    Accept {
        /// Who asked, of the receiving node.
        to: UserName,
    },
    /// The acting user denies `to`'s request.
    Deny {
        /// Who asked, of the receiving node.
        to: UserName,
    },
    /// The acting user removes `to` (or withdraws their request).
    Remove {
        /// The other user, of the receiving node.
        to: UserName,
    },
}

/// The receiving node's answer to a [`ContactStep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ContactAnswer {
    /// Done.
    Done,
    /// An [`ContactStep::Ask`] met a request the other way: the two are now
    /// contacts, on both nodes.
    Accepted,
    /// No such user on the receiving node.
    UnknownUser,
    /// The step does not fit what the receiving node holds (an accept of a
    /// request never made, say).
    NoSuchRequest,
    /// The user asked has too many contacts or pending requests.
    Full,
    /// The asking user, or zone, sent too many requests lately.
    RateLimited,
}

/// The presence service between nodes.
#[derive(Debug, Clone, Copy)]
pub struct PresenceService;

impl Service for PresenceService {
    const NAME: &'static str = "presence";
    type Request = PresenceNote;
    type Reply = PresenceAnswer;
}

/// A pair of users who are contacts: `theirs` of the sending node, `ours`
/// of the receiving node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pair {
    /// The user of the node that sends the request.
    pub theirs: UserName,
    /// The user of the node that receives it.
    pub ours: UserName,
}

/// What one node tells another about presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PresenceNote {
    /// The acting user's presence changed: the receiving node shows it to
    /// each of its users who holds the acting user as an accepted contact.
    Update {
        /// The new presence.
        presence: Presence,
    },
    /// Every pair the sending node holds accepted with users of the
    /// receiving node (at most [`MAX_SYNC_PAIRS`]), and the current presence
    /// of the sending node's users among them. Answered by
    /// [`PresenceAnswer::Synced`].
    Sync {
        /// The pairs.
        pairs: Vec<Pair>,
        /// The presence of each `theirs` user named in `pairs`.
        presence: Vec<(UserName, Presence)>,
    },
}

/// The answer to a [`PresenceNote`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PresenceAnswer {
    /// An update was taken; `shown_to` of the receiving node's users see it.
    Taken {
        /// How many users it was shown to.
        shown_to: usize,
    },
    /// The answer to a sync.
    Synced {
        /// The presence of each `ours` user of a pair the receiving node
        /// also holds accepted.
        presence: Vec<(UserName, Presence)>,
        /// Pairs of which the receiving node holds no contact at all: the
        /// sender drops them (a removal it missed).
        gone: Vec<Pair>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::NodeRequest;
    use crate::ZoneName;

    #[test]
    fn steps_and_notes_round_trip_in_their_envelopes() {
        let zone = ZoneName::parse("gracia").unwrap_or_else(|e| panic!("{e}"));
        let bob = UserName::parse("bob").unwrap_or_else(|e| panic!("{e}"));
        let step = ContactStep::Ask { to: bob.clone() };
        let req = NodeRequest::new::<ContactService>(zone.clone(), None, &step).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(req.decode::<ContactService>().ok(), Some(step));
        let json = serde_json::to_string(&req).unwrap_or_else(|e| panic!("{e}"));
        assert!(json.contains(r#""type":"ask""#), "{json}");
        let note = PresenceNote::Sync {
            pairs: vec![Pair { theirs: bob.clone(), ours: bob.clone() }],
            presence: vec![(bob, Presence { state: PresenceState::InCall, ..Presence::default() })],
        };
        let req = NodeRequest::new::<PresenceService>(zone, None, &note).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(req.decode::<PresenceService>().ok(), Some(note));
        assert!(req.body.get().contains(r#""in_call""#), "{}", req.body.get());
    }

    /// The largest sync and the largest answer to it fit in one mesh
    /// message (requests and replies are at most 64 KiB on the wire).
    #[test]
    fn the_largest_sync_and_its_answer_fit_one_message() {
        let name = |i: usize| UserName::parse(&format!("{i:0>32}")).unwrap_or_else(|e| panic!("{e}"));
        let status: String = "😀".repeat(MAX_STATUS_CHARS);
        let p = Presence { state: PresenceState::InCall, status, v: u64::MAX, since_ms: u64::MAX, profile_v: u64::MAX };
        let pairs: Vec<Pair> = (0..MAX_SYNC_PAIRS).map(|i| Pair { theirs: name(i), ours: name(i + 1000) }).collect();
        let presence: Vec<(UserName, Presence)> = (0..MAX_SYNC_PAIRS).map(|i| (name(i), p.clone())).collect();
        let note = PresenceNote::Sync { pairs: pairs.clone(), presence: presence.clone() };
        let zone = crate::ZoneName::parse(&"z".repeat(63)).unwrap_or_else(|e| panic!("{e}"));
        let req = NodeRequest::new::<PresenceService>(zone, None, &note).unwrap_or_else(|e| panic!("{e}"));
        let wire = serde_json::to_vec(&req).unwrap_or_else(|e| panic!("{e}"));
        assert!(wire.len() <= crate::service::DEFAULT_MAX_BODY, "a sync is {} bytes", wire.len());
        let answer = PresenceAnswer::Synced { presence, gone: pairs };
        let reply = crate::service::NodeReply::ok::<PresenceService>(&answer).unwrap_or_else(|e| panic!("{e}"));
        let wire = serde_json::to_vec(&reply).unwrap_or_else(|e| panic!("{e}"));
        assert!(wire.len() <= 64 * 1024, "its answer is {} bytes", wire.len());
    }

    #[test]
    fn a_contact_shows_presence_only_when_it_has_one() {
        let address = Address::parse("bob@sants").unwrap_or_else(|e| panic!("{e}"));
        let c = Contact { address, state: ContactState::Incoming, since_ms: 1, presence: None };
        let json = serde_json::to_string(&c).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json, r#"{"address":"bob@sants","state":"incoming","since_ms":1}"#);
    }
}
