//! The contacts service: asking, accepting, denying and removing contacts,
//! between users of this zone or across zones.
//!
//! Each side's node holds its own user's record of the contact
//! (`store/contacts.rs`). A step taken here is written and made durable on
//! this node first, then told to the other user's node (for a local other,
//! written in the same transaction); if the other node cannot be reached
//! or refuses, this node's write is undone and the user gets a typed
//! error, except for a removal, which always holds here (withdrawing
//! permission must never depend on the other side: presence stops at
//! once, since both nodes check their own records before showing any).
//!
//! Steps from other nodes arrive through [`Contacts::from_node`], which
//! acts only for the user the request acts for (whose zone's claim the
//! sending node holds) and only on users of this zone.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dht::{Mesh, RouteError};
use signalling::contacts::{Contact, ContactAnswer, ContactService, ContactState, ContactStep};
use signalling::{Address, NodeToClient, UserName, ZoneName};
use tracing::{info, warn};

use crate::config::Limits;
use crate::pii::Pii;
use crate::services::accounts::{now_ms, Throttle};
use crate::services::calls::Calls;
use crate::services::presence::{Command as PresenceCommand, PresenceHub};
use crate::store::{ContactRecord, Store, StoreError};

/// Why a contact step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContactError {
    /// Not a `name@zone` (or `name`) address.
    #[error("{0}")]
    InvalidAddress(String),
    /// A user cannot be their own contact.
    #[error("you cannot add yourself")]
    OwnAddress,
    /// No such user (on this zone, or on the zone named).
    #[error("no such user")]
    UnknownUser,
    /// No node holds that zone.
    #[error("no such zone in the mesh")]
    UnknownZone,
    /// The other user's node could not be reached.
    #[error("the other zone could not be reached: {0}")]
    Unreachable(String),
    /// Already contacts.
    #[error("already a contact")]
    AlreadyContact,
    /// A request to this user is already waiting.
    #[error("a request is already waiting for their answer")]
    AlreadyRequested,
    /// No request from that user to answer.
    #[error("no request from that user")]
    NoSuchRequest,
    /// No contact with that user.
    #[error("no such contact")]
    NotFound,
    /// The user (or the other) holds as many contacts or requests as allowed.
    #[error("{0}")]
    Full(&'static str),
    /// Too many requests sent lately.
    #[error("too many contact requests; try again in {} s", .0.as_secs().max(1))]
    RateLimited(Duration),
    /// Another step on the same contact is under way.
    #[error("another change to this contact is under way; try again")]
    Busy,
    /// The other node refused.
    #[error("the other zone refused: {0}")]
    Refused(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The contacts service.
pub struct Contacts {
    store: Store,
    mesh: Option<Mesh>,
    zone: ZoneName,
    calls: Calls,
    presence: PresenceHub,
    max_contacts: usize,
    max_pending: usize,
    asks: Throttle,
    /// Requests from other zones, per zone and per asking user.
    zone_asks: Throttle,
    remote_asks: Throttle,
    /// Pairs with a step under way: a second step on one waits its turn
    /// by failing as [`ContactError::Busy`].
    busy: Mutex<HashSet<(UserName, Address)>>,
}

/// Holds a pair busy while a step runs (both users' records of it, when
/// both are of this zone).
struct Step<'a> {
    busy: &'a Mutex<HashSet<(UserName, Address)>>,
    keys: Vec<(UserName, Address)>,
}

impl Drop for Step<'_> {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            busy.remove(k);
        }
    }
}

fn record(state: ContactState) -> ContactRecord {
    ContactRecord { state, since_ms: now_ms() }
}

fn contact(address: &Address, rec: ContactRecord) -> NodeToClient {
    NodeToClient::Contact {
        contact: Contact { address: address.clone(), state: rec.state, since_ms: rec.since_ms, presence: None },
    }
}

fn route_error(e: RouteError) -> ContactError {
    match e {
        RouteError::UnknownUser => ContactError::UnknownUser,
        RouteError::UnknownZone => ContactError::UnknownZone,
        RouteError::Refused { reason, .. } => ContactError::Refused(reason),
        other => ContactError::Unreachable(other.to_string()),
    }
}

impl Contacts {
    /// The service over `store`, telling other nodes through `mesh`.
    pub fn new(
        store: Store,
        mesh: Option<Mesh>,
        zone: ZoneName,
        calls: Calls,
        presence: PresenceHub,
        limits: &Limits,
    ) -> Self {
        Self {
            store,
            mesh,
            zone,
            calls,
            presence,
            max_contacts: limits.max_contacts_per_user,
            max_pending: limits.max_pending_contact_requests,
            asks: Throttle::new(limits.contact_requests_per_hour, Duration::from_secs(3600)),
            zone_asks: Throttle::new(limits.contact_requests_per_hour.saturating_mul(10), Duration::from_secs(3600)),
            remote_asks: Throttle::new(limits.contact_requests_per_hour, Duration::from_secs(3600)),
            busy: Mutex::default(),
        }
    }

    fn begin(&self, user: &UserName, other: &Address) -> Result<Step<'_>, ContactError> {
        let mut keys = vec![(user.clone(), other.clone())];
        if other.zone == self.zone {
            keys.push((other.name.clone(), self.me(user)));
        }
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if keys.iter().any(|k| busy.contains(k)) {
            return Err(ContactError::Busy);
        }
        busy.extend(keys.iter().cloned());
        Ok(Step { busy: &self.busy, keys })
    }

    fn me(&self, user: &UserName) -> Address {
        Address::new(user.clone(), self.zone.clone())
    }

    /// Parses `to` (a bare name is of this zone).
    pub fn parse(&self, to: &str) -> Result<Address, ContactError> {
        Address::parse_with_default_zone(to.trim(), &self.zone).map_err(|e| ContactError::InvalidAddress(e.to_string()))
    }

    /// Every contact of `user`, with presence for the accepted ones.
    pub async fn list(&self, user: &UserName) -> Result<Vec<Contact>, ContactError> {
        let all = self.store.contacts(user)?;
        let presence = self.presence.view(user.clone(), all.iter().map(|(a, _)| a.clone()).collect()).await;
        Ok(all
            .into_iter()
            .zip(presence)
            .map(|((address, rec), presence)| Contact { address, state: rec.state, since_ms: rec.since_ms, presence })
            .collect())
    }

    fn check_room(&self, user: &UserName, incoming: bool) -> Result<(), ContactError> {
        let all = self.store.contacts(user)?;
        if all.len() >= self.max_contacts {
            return Err(ContactError::Full("that many contacts is the limit"));
        }
        if incoming && all.iter().filter(|(_, r)| r.state == ContactState::Incoming).count() >= self.max_pending {
            return Err(ContactError::Full("too many requests are waiting for an answer"));
        }
        Ok(())
    }

    /// `user` asks `to` to be contacts. If `to` had asked `user`, this
    /// accepts instead. Returns the contact as it now stands.
    pub async fn ask(&self, user: &UserName, to: &Address) -> Result<ContactState, ContactError> {
        if to == &self.me(user) {
            return Err(ContactError::OwnAddress);
        }
        let _step = self.begin(user, to)?;
        match self.store.contact(user, to)?.map(|r| r.state) {
            Some(ContactState::Accepted) => return Err(ContactError::AlreadyContact),
            Some(ContactState::Outgoing) => return Err(ContactError::AlreadyRequested),
            Some(ContactState::Incoming) => {
                self.accept_held(user, to).await?;
                return Ok(ContactState::Accepted);
            }
            None => {}
        }
        self.asks.check(user.as_str(), Instant::now()).map_err(ContactError::RateLimited)?;
        self.check_room(user, false)?;
        self.asks.fail(user.as_str(), Instant::now());
        let me = self.me(user);
        let out = record(ContactState::Outgoing);
        if to.zone == self.zone {
            if !self.store.user_exists(to.name.as_str())? {
                return Err(ContactError::UnknownUser);
            }
            self.check_room(&to.name, true)?;
            let inc = record(ContactState::Incoming);
            self.store.write_contacts(&[(user, to, Some(out)), (&to.name, &me, Some(inc))])?;
            self.store.flush().await?;
            self.calls.push(vec![user.clone()], &contact(to, out)).await;
            self.calls.push(vec![to.name.clone()], &contact(&me, inc)).await;
            return Ok(ContactState::Outgoing);
        }
        let mesh = self.mesh.as_ref().ok_or(ContactError::UnknownZone)?;
        self.store.write_contacts(&[(user, to, Some(out))])?;
        self.store.flush().await?;
        let answer = mesh.send::<ContactService>(to, Some(user), &ContactStep::Ask { to: to.name.clone() }).await;
        let failed = match answer {
            Ok((_, ContactAnswer::Done)) => None,
            Ok((_, ContactAnswer::Accepted)) => {
                let acc = record(ContactState::Accepted);
                self.store.write_contacts(&[(user, to, Some(acc))])?;
                self.store.flush().await?;
                self.calls.push(vec![user.clone()], &contact(to, acc)).await;
                self.presence.send(PresenceCommand::Accepted { user: user.clone(), other: to.clone() }).await;
                return Ok(ContactState::Accepted);
            }
            Ok((_, ContactAnswer::UnknownUser)) => Some(ContactError::UnknownUser),
            Ok((_, ContactAnswer::Full)) => Some(ContactError::Full("they have too many requests waiting")),
            Ok((_, ContactAnswer::RateLimited)) => Some(ContactError::RateLimited(Duration::from_secs(600))),
            Ok((_, other)) => Some(ContactError::Refused(format!("{other:?}"))),
            Err(e) => Some(route_error(e)),
        };
        if let Some(e) = failed {
            self.store.write_contacts(&[(user, to, None)])?;
            self.store.flush().await?;
            return Err(e);
        }
        info!(user = %Pii(&me), to = %Pii(to), "contact requested across zones");
        self.calls.push(vec![user.clone()], &contact(to, out)).await;
        Ok(ContactState::Outgoing)
    }

    /// `user` accepts `from`'s request.
    pub async fn accept(&self, user: &UserName, from: &Address) -> Result<(), ContactError> {
        let _step = self.begin(user, from)?;
        self.accept_held(user, from).await
    }

    async fn accept_held(&self, user: &UserName, from: &Address) -> Result<(), ContactError> {
        let before = self.store.contact(user, from)?;
        if before.map(|r| r.state) != Some(ContactState::Incoming) {
            return Err(ContactError::NoSuchRequest);
        }
        let me = self.me(user);
        let acc = record(ContactState::Accepted);
        if from.zone == self.zone {
            self.store.write_contacts(&[(user, from, Some(acc)), (&from.name, &me, Some(acc))])?;
            self.store.flush().await?;
            self.calls.push(vec![user.clone()], &contact(from, acc)).await;
            self.calls.push(vec![from.name.clone()], &contact(&me, acc)).await;
        } else {
            let mesh = self.mesh.as_ref().ok_or(ContactError::UnknownZone)?;
            self.store.write_contacts(&[(user, from, Some(acc))])?;
            self.store.flush().await?;
            let sent =
                mesh.send::<ContactService>(from, Some(user), &ContactStep::Accept { to: from.name.clone() }).await;
            let failed = match sent {
                Ok((_, ContactAnswer::Done | ContactAnswer::Accepted)) => None,
                Ok((_, ContactAnswer::NoSuchRequest)) => Some(ContactError::NoSuchRequest),
                Ok((_, other)) => Some(ContactError::Refused(format!("{other:?}"))),
                Err(e) => Some(route_error(e)),
            };
            if let Some(e) = failed {
                if matches!(e, ContactError::NoSuchRequest | ContactError::UnknownUser) {
                    // They withdrew it, or are gone: so is the request.
                    self.store.write_contacts(&[(user, from, None)])?;
                    self.store.flush().await?;
                    self.calls.push(vec![user.clone()], &NodeToClient::ContactRemoved { address: from.clone() }).await;
                } else if let Some(b) = before {
                    self.store.write_contacts(&[(user, from, Some(b))])?;
                    self.store.flush().await?;
                }
                return Err(e);
            }
            self.calls.push(vec![user.clone()], &contact(from, acc)).await;
        }
        self.presence.send(PresenceCommand::Accepted { user: user.clone(), other: from.clone() }).await;
        Ok(())
    }

    /// `user` denies `from`'s request.
    pub async fn deny(&self, user: &UserName, from: &Address) -> Result<(), ContactError> {
        let _step = self.begin(user, from)?;
        if self.store.contact(user, from)?.map(|r| r.state) != Some(ContactState::Incoming) {
            return Err(ContactError::NoSuchRequest);
        }
        self.drop_pair(user, from, ContactStep::Deny { to: from.name.clone() }).await;
        Ok(())
    }

    /// `user` removes `other` (an accepted contact, or a request either
    /// way). Always holds on this node; the other node is told.
    pub async fn remove(&self, user: &UserName, other: &Address) -> Result<(), ContactError> {
        let _step = self.begin(user, other)?;
        if self.store.contact(user, other)?.is_none() {
            return Err(ContactError::NotFound);
        }
        self.drop_pair(user, other, ContactStep::Remove { to: other.name.clone() }).await;
        Ok(())
    }

    /// Removes the pair here (and on a local other), tells a remote
    /// other's node, and both users' devices.
    async fn drop_pair(&self, user: &UserName, other: &Address, step: ContactStep) {
        let me = self.me(user);
        let result = if other.zone == self.zone {
            self.store.write_contacts(&[(user, other, None), (&other.name, &me, None)])
        } else {
            self.store.write_contacts(&[(user, other, None)])
        };
        if let Err(e) = result {
            warn!(error = %e, "removing a contact failed");
        }
        if let Err(e) = self.store.flush().await {
            warn!(error = %e, "flushing a removed contact failed");
        }
        self.calls.push(vec![user.clone()], &NodeToClient::ContactRemoved { address: other.clone() }).await;
        self.presence.send(PresenceCommand::Removed { user: user.clone(), other: other.clone() }).await;
        if other.zone == self.zone {
            self.calls.push(vec![other.name.clone()], &NodeToClient::ContactRemoved { address: me.clone() }).await;
            self.presence.send(PresenceCommand::Removed { user: other.name.clone(), other: me }).await;
        } else if let Some(mesh) = &self.mesh {
            if let Err(e) = mesh.send::<ContactService>(other, Some(user), &step).await {
                // Tried again for a few minutes; past that, their node
                // learns it at its next sync, which names the pair gone.
                warn!(error = %e, "telling the other zone of a removed contact failed; trying again");
                let (mesh, other, user) = (mesh.clone(), other.clone(), user.clone());
                tokio::spawn(async move {
                    for wait in [2, 10, 30, 60, 120] {
                        tokio::time::sleep(Duration::from_secs(wait)).await;
                        if mesh.send::<ContactService>(&other, Some(&user), &step).await.is_ok() {
                            return;
                        }
                    }
                });
            }
        }
    }

    /// `from`, of another zone, agreed to the request local `to` made:
    /// accepted here, durably, then `to`'s devices and presence told.
    async fn accepted_by_other(&self, to: UserName, from: &Address) -> Result<(), ContactError> {
        let acc = record(ContactState::Accepted);
        self.store.write_contacts(&[(&to, from, Some(acc))])?;
        self.store.flush().await?;
        self.calls.push(vec![to.clone()], &contact(from, acc)).await;
        self.presence.send(PresenceCommand::Accepted { user: to, other: from.clone() }).await;
        Ok(())
    }

    /// A step from another node, acting for `from` (of the sending node's
    /// zone, which the mesh checked).
    pub async fn from_node(&self, from: &Address, step: ContactStep) -> Result<ContactAnswer, ContactError> {
        if from.zone == self.zone {
            return Err(ContactError::Refused("a user of this zone does not come from another node".into()));
        }
        let to = match &step {
            ContactStep::Ask { to }
            | ContactStep::Accept { to }
            | ContactStep::Deny { to }
            | ContactStep::Remove { to } => to.clone(),
            _ => return Err(ContactError::Refused("unknown step".into())),
        };
        if !self.store.user_exists(to.as_str())? {
            return Ok(ContactAnswer::UnknownUser);
        }
        let _step = self.begin(&to, from)?;
        let held = self.store.contact(&to, from)?;
        match step {
            ContactStep::Ask { .. } => match held.map(|r| r.state) {
                Some(ContactState::Incoming) => Ok(ContactAnswer::Done),
                Some(ContactState::Accepted) => Ok(ContactAnswer::Accepted),
                Some(ContactState::Outgoing) => {
                    // Both asked: they are contacts.
                    self.accepted_by_other(to, from).await?;
                    Ok(ContactAnswer::Accepted)
                }
                None => {
                    let now = Instant::now();
                    let (zone_key, asker_key) = (from.zone.to_string(), from.to_string());
                    if self.zone_asks.check(&zone_key, now).is_err() || self.remote_asks.check(&asker_key, now).is_err()
                    {
                        return Ok(ContactAnswer::RateLimited);
                    }
                    self.zone_asks.fail(&zone_key, now);
                    self.remote_asks.fail(&asker_key, now);
                    if self.check_room(&to, true).is_err() {
                        return Ok(ContactAnswer::Full);
                    }
                    let inc = record(ContactState::Incoming);
                    self.store.write_contacts(&[(&to, from, Some(inc))])?;
                    self.store.flush().await?;
                    info!(to = %Pii(&self.me(&to)), from = %Pii(from), "contact request from another zone");
                    self.calls.push(vec![to], &contact(from, inc)).await;
                    Ok(ContactAnswer::Done)
                }
            },
            ContactStep::Accept { .. } => match held.map(|r| r.state) {
                Some(ContactState::Accepted) => Ok(ContactAnswer::Done),
                Some(ContactState::Outgoing) => {
                    self.accepted_by_other(to, from).await?;
                    Ok(ContactAnswer::Done)
                }
                _ => Ok(ContactAnswer::NoSuchRequest),
            },
            ContactStep::Deny { .. } | ContactStep::Remove { .. } => {
                let fits = match (&step, held.map(|r| r.state)) {
                    (_, None) => return Ok(ContactAnswer::Done),
                    (ContactStep::Deny { .. }, Some(s)) => s == ContactState::Outgoing,
                    _ => true,
                };
                if !fits {
                    return Ok(ContactAnswer::NoSuchRequest);
                }
                self.store.write_contacts(&[(&to, from, None)])?;
                self.store.flush().await?;
                self.calls.push(vec![to.clone()], &NodeToClient::ContactRemoved { address: from.clone() }).await;
                self.presence.send(PresenceCommand::Removed { user: to, other: from.clone() }).await;
                Ok(ContactAnswer::Done)
            }
            _ => Err(ContactError::Refused("unknown step".into())),
        }
    }
}
