//! The `contacts` tree (user \0 address → [`ContactRecord`]), its index
//! `contact_holders` (address \0 user → the state, to find which local users
//! hold someone), written together; and `presence` (user →
//! [`PresenceSetting`], what the user chose).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use signalling::contacts::{Availability, ContactState};
use signalling::{Address, UserName, ZoneName};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::{dec, enc, tx_err, user_prefix, user_str_key, Store, StoreError};

/// One contact as stored, under its holder and the other user's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRecord {
    /// Where it stands.
    pub state: ContactState,
    /// Since when (ms since the epoch).
    pub since_ms: u64,
}

/// What a user chose of their presence.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PresenceSetting {
    /// Online, away or busy.
    pub availability: Availability,
    /// The status text.
    pub status: String,
}

/// One change to a contact: set it (`Some`) or remove it (`None`).
pub type ContactChange<'a> = (&'a UserName, &'a Address, Option<ContactRecord>);

/// The part of a key after its prefix, parsed as a name or an address.
fn key_tail<T, E>(tree: &'static str, tail: &[u8], parse: impl Fn(&str) -> Result<T, E>) -> Result<T, StoreError> {
    std::str::from_utf8(tail).ok().and_then(|s| parse(s).ok()).ok_or(StoreError::Corrupt { tree, why: "key".into() })
}

fn holder_key(address: &Address, user: &str) -> Vec<u8> {
    let mut k = address.to_string().into_bytes();
    k.push(0);
    k.extend_from_slice(user.as_bytes());
    k
}

impl Store {
    /// The contact `user` holds of `address`, if any.
    pub fn contact(&self, user: &UserName, address: &Address) -> Result<Option<ContactRecord>, StoreError> {
        let key = user_str_key(user.as_str(), &address.to_string());
        self.contacts.get(key)?.map(|v| dec("contacts", &v)).transpose()
    }

    /// Whether `user` holds `address` as an accepted contact: what every
    /// service checks before showing one user anything of another.
    pub fn accepted(&self, user: &UserName, address: &Address) -> Result<bool, StoreError> {
        Ok(self.contact(user, address)?.is_some_and(|r| r.state == ContactState::Accepted))
    }

    /// The local users who hold `address` as an accepted contact.
    pub fn accepted_holders(&self, address: &Address) -> Result<Vec<UserName>, StoreError> {
        Ok(self.holders(address)?.into_iter().filter(|(_, s)| *s == ContactState::Accepted).map(|(u, _)| u).collect())
    }

    /// Every contact of `user`, by address.
    pub fn contacts(&self, user: &UserName) -> Result<Vec<(Address, ContactRecord)>, StoreError> {
        let prefix = user_prefix(user.as_str());
        let mut out = Vec::new();
        for kv in self.contacts.scan_prefix(&prefix) {
            let (k, v) = kv?;
            out.push((key_tail("contacts", &k[prefix.len()..], Address::parse)?, dec("contacts", &v)?));
        }
        Ok(out)
    }

    /// The local users who hold `address` as a contact, with its state.
    pub fn holders(&self, address: &Address) -> Result<Vec<(UserName, ContactState)>, StoreError> {
        let mut prefix = address.to_string().into_bytes();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.contact_holders.scan_prefix(&prefix) {
            let (k, v) = kv?;
            out.push((key_tail("contact_holders", &k[prefix.len()..], UserName::parse)?, dec("contact_holders", &v)?));
        }
        Ok(out)
    }

    /// Every accepted contact a local user holds of a user of another zone
    /// than `home`, by that zone: (the local user, the other's address).
    pub fn accepted_remote_pairs(
        &self,
        home: &ZoneName,
    ) -> Result<BTreeMap<ZoneName, Vec<(UserName, Address)>>, StoreError> {
        let mut out: BTreeMap<ZoneName, Vec<(UserName, Address)>> = BTreeMap::new();
        for kv in self.contact_holders.iter() {
            let (k, v) = kv?;
            if dec::<ContactState>("contact_holders", &v)? != ContactState::Accepted {
                continue;
            }
            let sep = k.iter().position(|b| *b == 0).unwrap_or(k.len());
            let addr = key_tail("contact_holders", &k[..sep], Address::parse)?;
            let user = key_tail("contact_holders", k.get(sep + 1..).unwrap_or_default(), UserName::parse)?;
            if &addr.zone != home {
                out.entry(addr.zone.clone()).or_default().push((user, addr));
            }
        }
        Ok(out)
    }

    /// Applies `changes` in one transaction: all or none.
    pub fn write_contacts(&self, changes: &[ContactChange<'_>]) -> Result<(), StoreError> {
        let _w = self.writing();
        let _t = self.transacting();
        (&self.contacts, &self.contact_holders)
            .transaction(|(contacts, holders)| {
                for (user, address, rec) in changes {
                    let key = user_str_key(user.as_str(), &address.to_string());
                    let hkey = holder_key(address, user.as_str());
                    match rec {
                        Some(r) => {
                            contacts.insert(key, enc(r))?;
                            holders.insert(hkey, enc(&r.state))?;
                        }
                        None => {
                            contacts.remove(key)?;
                            holders.remove(hkey)?;
                        }
                    }
                }
                Ok::<_, ConflictableTransactionError<StoreError>>(())
            })
            .map_err(tx_err)
    }

    /// Removes every contact `user` holds, and every local user's contact
    /// of `address` (`user`'s own address), and what `user` chose of their
    /// presence: an account that goes.
    pub(super) fn remove_contacts_of_held(&self, user: &str, address: &Address) -> Result<(), StoreError> {
        let prefix = user_prefix(user);
        for kv in self.contacts.scan_prefix(&prefix) {
            let (k, _) = kv?;
            if let Some(other) = std::str::from_utf8(&k[prefix.len()..]).ok().and_then(|s| Address::parse(s).ok()) {
                self.contact_holders.remove(holder_key(&other, user))?;
            }
            self.contacts.remove(k)?;
        }
        let mut hprefix = address.to_string().into_bytes();
        hprefix.push(0);
        for k in self.contact_holders.scan_prefix(&hprefix).keys() {
            let k = k?;
            if let Ok(holder) = std::str::from_utf8(&k[hprefix.len()..]) {
                self.contacts.remove(user_str_key(holder, &address.to_string()))?;
            }
            self.contact_holders.remove(k)?;
        }
        self.presence.remove(user.as_bytes())?;
        Ok(())
    }

    /// What `user` chose of their presence (the default if nothing).
    pub fn presence_setting(&self, user: &UserName) -> Result<PresenceSetting, StoreError> {
        Ok(self.presence.get(user.as_str())?.map(|v| dec("presence", &v)).transpose()?.unwrap_or_default())
    }

    /// Stores what `user` chose of their presence.
    pub fn set_presence_setting(&self, user: &UserName, setting: &PresenceSetting) -> Result<(), StoreError> {
        let _w = self.writing();
        self.presence.insert(user.as_str(), enc(setting))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> UserName {
        UserName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Transactions and flushes from many tasks at once all finish: sled
    /// stalls for good when a transaction starts during a flush, unless
    /// the store keeps them apart (`Store::transacting`).
    #[test]
    fn transactions_and_flushes_at_once_never_stall() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let writer = store.clone();
        // A stalled sled blocks the runtime's own threads (and its timers),
        // so the bound is kept from outside: this thread's channel.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            rt.block_on(async {
                let mut tasks = tokio::task::JoinSet::new();
                for i in 0..64 {
                    let store = writer.clone();
                    tasks.spawn(async move {
                        let (user, other) = (name(&format!("u{i}")), addr(&format!("v{i}@sants")));
                        for round in 0..20 {
                            let rec = ContactRecord { state: ContactState::Accepted, since_ms: round };
                            store.write_contacts(&[(&user, &other, Some(rec))]).unwrap_or_else(|e| panic!("{e}"));
                            store.flush().await.unwrap_or_else(|e| panic!("{e}"));
                        }
                    });
                }
                while tasks.join_next().await.is_some() {}
            });
            let _ = done_tx.send(());
        });
        let done = done_rx.recv_timeout(std::time::Duration::from_secs(60));
        assert!(done.is_ok(), "writes and flushes stalled");
        assert_eq!(store.holders(&addr("v7@sants")).unwrap_or_else(|e| panic!("{e}")).len(), 1);
    }

    #[test]
    fn contacts_and_their_holders_move_together() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = Store::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let (alice, bob) = (name("alice"), name("bob"));
        let remote = addr("carol@sants");
        let rec = |state| Some(ContactRecord { state, since_ms: 5 });
        store
            .write_contacts(&[
                (&alice, &remote, rec(ContactState::Accepted)),
                (&bob, &remote, rec(ContactState::Outgoing)),
            ])
            .unwrap_or_else(|e| panic!("{e}"));
        let mut holders = store.holders(&remote).unwrap_or_else(|e| panic!("{e}"));
        holders.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(holders, vec![(alice.clone(), ContactState::Accepted), (bob.clone(), ContactState::Outgoing)]);
        assert_eq!(store.contacts(&alice).unwrap_or_else(|e| panic!("{e}")).len(), 1);
        store.write_contacts(&[(&alice, &remote, None)]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.holders(&remote).unwrap_or_else(|e| panic!("{e}")).len(), 1);
        assert_eq!(store.contact(&alice, &remote).unwrap_or_else(|e| panic!("{e}")), None);
        // An account that goes takes its contacts and others' of it along.
        let bob_at = addr("bob@here");
        store.write_contacts(&[(&alice, &bob_at, rec(ContactState::Accepted))]).unwrap_or_else(|e| panic!("{e}"));
        store.remove_contacts_of_held("bob", &bob_at).unwrap_or_else(|e| panic!("{e}"));
        assert!(store.holders(&remote).unwrap_or_else(|e| panic!("{e}")).is_empty());
        assert!(store.contacts(&alice).unwrap_or_else(|e| panic!("{e}")).is_empty());
    }
}
