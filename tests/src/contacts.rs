//! Contacts and presence: the HTTP API on [`Node`] and the events on
//! [`Device`].

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::json;
use signalling::contacts::{Contact, ContactState, Presence, PresenceState};
use signalling::{Address, ClientToNode, NodeToClient};

use crate::{Device, Node, Reply};

fn path_of(address: &str) -> String {
    address.replace('@', "%40")
}

impl Node {
    /// `GET /api/v1/contacts`: the caller's contacts.
    pub async fn contacts(&self, token: &str) -> Result<Vec<Contact>> {
        let r = self.get("/api/v1/contacts", Some(token)).await?.expect_status(200)?;
        serde_json::from_value(r.body["contacts"].clone())
            .with_context(|| format!("{}: not a list of contacts: {}", r.what, r.body))
    }

    /// The caller's contact of `address`, if any.
    pub async fn contact(&self, token: &str, address: &str) -> Result<Option<Contact>> {
        Ok(self.contacts(token).await?.into_iter().find(|c| c.address.to_string() == address))
    }

    /// `POST /api/v1/contacts {"address": …}` without expectations.
    pub async fn ask_contact(&self, token: &str, address: &str) -> Result<Reply> {
        self.post("/api/v1/contacts", Some(token), json!({ "address": address })).await
    }

    /// Asks `address` until the mesh knows the way (a record still
    /// propagating answers unknown user or zone for a moment); expects 201.
    pub async fn ask_contact_when_reachable(&self, token: &str, address: &str) -> Result<Reply> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.ask_contact(token, address).await?;
            let early = matches!(r.code(), Some("unknown_user" | "unknown_zone" | "unreachable"));
            if !early || Instant::now() > deadline {
                return r.expect_status(201);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// `POST /api/v1/contacts/{address}/accept` without expectations.
    pub async fn accept_contact(&self, token: &str, address: &str) -> Result<Reply> {
        self.post(&format!("/api/v1/contacts/{}/accept", path_of(address)), Some(token), json!({})).await
    }

    /// `POST /api/v1/contacts/{address}/deny` without expectations.
    pub async fn deny_contact(&self, token: &str, address: &str) -> Result<Reply> {
        self.post(&format!("/api/v1/contacts/{}/deny", path_of(address)), Some(token), json!({})).await
    }

    /// `DELETE /api/v1/contacts/{address}` without expectations.
    pub async fn remove_contact(&self, token: &str, address: &str) -> Result<Reply> {
        self.delete(&format!("/api/v1/contacts/{}", path_of(address)), Some(token)).await
    }

    /// `PUT /api/v1/presence`; expects 200 and returns the presence.
    pub async fn set_presence(&self, token: &str, availability: &str, status: &str) -> Result<Presence> {
        let body = json!({ "availability": availability, "status": status });
        let r = self.put("/api/v1/presence", Some(token), body).await?.expect_status(200)?;
        serde_json::from_value(r.body.clone()).with_context(|| format!("{}: not a presence: {}", r.what, r.body))
    }
}

impl Device {
    /// Waits for a presence event of `address` in `state`; returns it.
    pub async fn expect_presence(
        &mut self,
        address: &str,
        state: PresenceState,
        timeout: Duration,
    ) -> Result<Presence> {
        let what = format!("presence {state:?} of {address}");
        let want = Address::parse(address)?;
        match self
            .expect_event(&what, timeout, |e| {
                matches!(e, NodeToClient::Presence { address: a, presence } if *a == want && presence.state == state)
            })
            .await?
        {
            NodeToClient::Presence { presence, .. } => Ok(presence),
            other => bail!("{}: expected {what}, got {other:?}", self.label()),
        }
    }

    /// Waits for a contact event of `address` in `state`.
    pub async fn expect_contact(&mut self, address: &str, state: ContactState, timeout: Duration) -> Result<()> {
        let what = format!("contact {address} {state:?}");
        let want = Address::parse(address)?;
        self.expect_event(
            &what,
            timeout,
            |e| matches!(e, NodeToClient::Contact { contact } if contact.address == want && contact.state == state),
        )
        .await
        .map(drop)
    }

    /// Waits for a contact-removed event of `address`.
    pub async fn expect_contact_removed(&mut self, address: &str, timeout: Duration) -> Result<()> {
        let what = format!("contact {address} removed");
        let want = Address::parse(address)?;
        self.expect_event(&what, timeout, |e| matches!(e, NodeToClient::ContactRemoved { address: a } if *a == want))
            .await
            .map(drop)
    }

    /// Fails if a presence event of `address` is buffered or arrives within
    /// `dur`.
    pub async fn expect_no_presence_of(&mut self, address: &str, dur: Duration) -> Result<()> {
        let want = Address::parse(address)?;
        self.expect_no_event_matching(
            &format!("presence of {address}"),
            dur,
            |e| matches!(e, NodeToClient::Presence { address: a, .. } if *a == want),
        )
        .await
    }

    /// Tells the node whether the person at this device is idle.
    pub async fn set_idle(&mut self, idle: bool) -> Result<()> {
        let id = self.next_id();
        self.expect_ok(ClientToNode::Idle { id, idle }).await
    }
}
