//! The presence service: one task that knows how each local user appears
//! (from their devices, as the calls service reports them, and from what
//! they chose), remembers what other nodes said of remote contacts, and
//! tells whoever may see a change.
//!
//! - A local user's presence is [`PresenceState::Offline`] with no device,
//!   [`PresenceState::InCall`] in a call, else what they chose
//!   ([`Availability`]), shown as away when every device is idle.
//! - A change is pushed to the devices of every local user who holds the
//!   user as an accepted contact, and sent **once per remote zone** that
//!   holds accepted contacts of the user, as one
//!   [`PresenceNote::Update`]; that zone's node fans it out to its own
//!   users (after checking that each holds the user as an accepted
//!   contact). Each zone has a delivery task that keeps only the latest
//!   update per user while it waits.
//! - Every `timeouts.presence_sync` (and soon after start) the node sends each
//!   remote zone it shares accepted contacts with a
//!   [`PresenceNote::Sync`]: the pairs and its own users' presence; the
//!   answer brings the other side's. A zone that cannot be reached has its
//!   users shown offline; pairs the other side no longer holds are dropped
//!   here (a removal this node missed).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use dht::Mesh;
use signalling::contacts::{
    Availability, ContactState, Pair, Presence, PresenceAnswer, PresenceNote, PresenceService, PresenceState,
    MAX_SYNC_PAIRS,
};
use signalling::{Address, NodeToClient, UserName, ZoneName};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::services::accounts::now_ms;
use crate::services::calls::{Activity, ActivitySink, Calls};
use crate::store::{PresenceSetting, Store, StoreError};

/// How soon after start the first sync goes (the mesh needs a moment).
const FIRST_SYNC: Duration = Duration::from_secs(3);
/// Commands queued before senders wait.
const QUEUE: usize = 1024;
/// Updates queued per remote zone before new ones are dropped (the next
/// sync repairs what was dropped).
const ZONE_QUEUE: usize = 1024;

/// What a sync brings back: the other side's users' presence, and the
/// pairs it holds nothing of.
pub type SyncReply = (Vec<(UserName, Presence)>, Vec<Pair>);

/// A request to the presence service.
#[derive(Debug)]
#[non_exhaustive]
pub enum Command {
    /// `user` chose `setting` (already stored by [`PresenceHub::set`]).
    Set {
        /// The user.
        user: UserName,
        /// What they chose.
        setting: PresenceSetting,
        /// Their presence now, once stored.
        reply: oneshot::Sender<Result<Presence, StoreError>>,
    },
    /// The presence of each of `of` as `viewer` may see it: `None` for
    /// one that is not an accepted contact of `viewer`.
    View {
        /// Who asks.
        viewer: UserName,
        /// Whose presence.
        of: Vec<Address>,
        /// One answer per address, in order.
        reply: oneshot::Sender<Vec<Option<Presence>>>,
    },
    /// `user`'s own presence.
    Own {
        /// The user.
        user: UserName,
        /// The answer.
        reply: oneshot::Sender<Presence>,
    },
    /// A contact between local `user` and `other` was accepted: each sees
    /// the other's presence from now on.
    Accepted {
        /// The local user.
        user: UserName,
        /// The other user (local or remote).
        other: Address,
    },
    /// A contact between local `user` and `other` is gone.
    Removed {
        /// The local user.
        user: UserName,
        /// The other user.
        other: Address,
    },
    /// The node of `from`'s zone says `from`'s presence changed.
    Remote {
        /// The remote user (the request acted for them).
        from: Address,
        /// Their presence.
        presence: Presence,
        /// How many local users were shown it.
        reply: oneshot::Sender<usize>,
    },
    /// The node of `zone` syncs the pairs it shares with this node.
    Sync {
        /// The asking zone.
        zone: ZoneName,
        /// Its pairs (`theirs` of `zone`, `ours` of this node).
        pairs: Vec<Pair>,
        /// Its users' presence.
        presence: Vec<(UserName, Presence)>,
        /// This node's answer.
        reply: oneshot::Sender<PresenceAnswer>,
    },
    /// `user`'s profile changed: their presence carries the new version.
    ProfileChanged {
        /// The user.
        user: UserName,
    },
    /// A sync this node sent came back.
    Synced {
        /// The zone asked.
        zone: ZoneName,
        /// Its users this sync named.
        asked: Vec<UserName>,
        /// When the sync was sent (ms since the epoch).
        sent_ms: u64,
        /// Its answer, or `None` if it could not be reached.
        answer: Option<SyncReply>,
    },
}

/// A cheap handle to the presence service.
#[derive(Clone, Debug)]
pub struct PresenceHub {
    tx: mpsc::Sender<Command>,
}

/// The service before it starts: its handle exists first so that the
/// calls service can be given the activity sink.
pub struct Unstarted {
    hub: PresenceHub,
    rx: mpsc::Receiver<Command>,
    activity_tx: ActivitySink,
    activity_rx: mpsc::UnboundedReceiver<(UserName, Activity)>,
}

/// A local user as presence sees them.
#[derive(Debug, Default)]
struct Local {
    activity: Activity,
    setting: PresenceSetting,
    profile_v: u64,
    shown: Presence,
}

struct Actor {
    store: Store,
    mesh: Option<Mesh>,
    calls: Calls,
    zone: ZoneName,
    tx: mpsc::Sender<Command>,
    /// Local users with devices, or whose presence was asked for.
    local: HashMap<UserName, Local>,
    /// What other nodes said of remote users held as accepted contacts.
    remote: HashMap<Address, Presence>,
    /// The delivery queue of each remote zone.
    zones: HashMap<ZoneName, mpsc::Sender<(UserName, Address, Presence)>>,
    last_v: u64,
    sync_every: Duration,
    /// When an update of each remote user last came (ms since the epoch).
    heard: HashMap<Address, u64>,
}

impl PresenceHub {
    /// The handle and the unstarted service.
    pub fn unstarted() -> Unstarted {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (activity_tx, activity_rx) = mpsc::unbounded_channel();
        Unstarted { hub: PresenceHub { tx }, rx, activity_tx, activity_rx }
    }

    /// Sends a command, waiting for room.
    pub async fn send(&self, cmd: Command) {
        if self.tx.send(cmd).await.is_err() {
            warn!("presence service is gone");
        }
    }

    /// Stores what `user` chose (durably, before the service hears of it:
    /// the service's own task never waits for the disk) and returns their
    /// presence now.
    pub async fn set(&self, store: &Store, user: UserName, setting: PresenceSetting) -> Result<Presence, StoreError> {
        store.set_presence_setting(&user, &setting)?;
        store.flush().await?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Set { user, setting, reply }).await;
        rx.await.unwrap_or_else(|_| Err(StoreError::Db(sled::Error::ReportableBug("presence service gone".into()))))
    }

    /// `user`'s own presence.
    pub async fn own(&self, user: UserName) -> Presence {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Own { user, reply }).await;
        rx.await.unwrap_or_default()
    }

    /// The presence of each of `of` that `viewer` may see.
    pub async fn view(&self, viewer: UserName, of: Vec<Address>) -> Vec<Option<Presence>> {
        let n = of.len();
        let (reply, rx) = oneshot::channel();
        self.send(Command::View { viewer, of, reply }).await;
        rx.await.unwrap_or_else(|_| vec![None; n])
    }
}

impl Unstarted {
    /// The handle.
    pub fn hub(&self) -> PresenceHub {
        self.hub.clone()
    }

    /// Where the calls service tells of devices.
    pub fn activity_sink(&self) -> ActivitySink {
        self.activity_tx.clone()
    }

    /// Starts the service; it runs until every handle is dropped.
    pub fn spawn(
        self,
        store: Store,
        mesh: Option<Mesh>,
        calls: Calls,
        zone: ZoneName,
        sync_every: Duration,
    ) -> PresenceHub {
        let actor = Actor {
            store,
            mesh,
            calls,
            zone,
            tx: self.hub.tx.clone(),
            local: HashMap::new(),
            remote: HashMap::new(),
            zones: HashMap::new(),
            last_v: 0,
            sync_every,
            heard: HashMap::new(),
        };
        drop(self.activity_tx);
        tokio::spawn(actor.run(self.rx, self.activity_rx));
        self.hub
    }
}

/// How `local` appears.
fn state_of(local: &Local) -> PresenceState {
    let a = &local.activity;
    if a.devices == 0 {
        PresenceState::Offline
    } else if a.in_call {
        PresenceState::InCall
    } else {
        match local.setting.availability {
            Availability::Busy => PresenceState::Busy,
            Availability::Away => PresenceState::Away,
            Availability::Online if a.idle => PresenceState::Away,
            Availability::Online => PresenceState::Online,
        }
    }
}

impl Actor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut activity: mpsc::UnboundedReceiver<(UserName, Activity)>,
    ) {
        let mut sync =
            tokio::time::interval_at(tokio::time::Instant::now() + FIRST_SYNC.min(self.sync_every), self.sync_every);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd).await,
                    None => break,
                },
                Some((user, a)) = activity.recv() => self.activity(user, a).await,
                _ = sync.tick() => self.sync_all(),
            }
        }
        debug!("presence service stopped");
    }

    fn next_v(&mut self) -> u64 {
        self.last_v = now_ms().max(self.last_v + 1);
        self.last_v
    }

    fn me(&self, user: &UserName) -> Address {
        Address::new(user.clone(), self.zone.clone())
    }

    /// The local entry of `user`, its setting read from the store on first
    /// use.
    fn local_mut(&mut self, user: &UserName) -> &mut Local {
        if !self.local.contains_key(user) {
            let setting = self.store.presence_setting(user).unwrap_or_else(|e| {
                warn!(error = %e, "reading a presence setting failed");
                PresenceSetting::default()
            });
            let profile_v = self.profile_v(user);
            let shown =
                Presence { state: PresenceState::Offline, status: setting.status.clone(), ..Presence::default() };
            self.local.insert(user.clone(), Local { activity: Activity::default(), setting, profile_v, shown });
        }
        self.local.entry(user.clone()).or_default()
    }

    /// Recomputes `user`'s presence; if it changed, tells whoever may see it.
    async fn recompute(&mut self, user: &UserName) {
        let v = self.next_v();
        let local = self.local_mut(user);
        let state = state_of(local);
        let same = state == local.shown.state
            && local.setting.status == local.shown.status
            && local.profile_v == local.shown.profile_v;
        if same && local.shown.v != 0 {
            return;
        }
        let since_ms =
            if state == local.shown.state && local.shown.since_ms != 0 { local.shown.since_ms } else { now_ms() };
        local.shown = Presence { state, status: local.setting.status.clone(), v, since_ms, profile_v: local.profile_v };
        // Kept (one entry per account that has connected): an offline
        // user's presence keeps its version, so a sync answer cannot pass
        // for newer than an update that came before it.
        let presence = local.shown.clone();
        self.announce(user, presence).await;
    }

    async fn activity(&mut self, user: UserName, a: Activity) {
        self.local_mut(&user).activity = a;
        self.recompute(&user).await;
    }

    /// Tells local holders and each remote zone of `user`'s presence.
    async fn announce(&mut self, user: &UserName, presence: Presence) {
        let me = self.me(user);
        let holders = self.store.accepted_holders(&me).unwrap_or_else(|e| {
            warn!(error = %e, "reading contact holders failed");
            Vec::new()
        });
        self.calls.push(holders, &NodeToClient::Presence { address: me, presence: presence.clone() }).await;
        let contacts = match self.store.contacts(user) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "reading contacts failed");
                return;
            }
        };
        let mut zones: BTreeMap<ZoneName, Address> = BTreeMap::new();
        for (addr, rec) in contacts {
            if rec.state == ContactState::Accepted && addr.zone != self.zone {
                zones.entry(addr.zone.clone()).or_insert(addr);
            }
        }
        for (zone, target) in zones {
            self.send_update(zone, user.clone(), target, presence.clone());
        }
    }

    /// Queues one update for `zone`'s node, starting its delivery task.
    fn send_update(&mut self, zone: ZoneName, user: UserName, target: Address, presence: Presence) {
        let Some(mesh) = self.mesh.clone() else { return };
        let queue = self.zones.entry(zone.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(ZONE_QUEUE);
            tokio::spawn(deliver_updates(mesh, zone.clone(), rx));
            tx
        });
        if queue.try_send((user, target, presence)).is_err() {
            debug!(%zone, "presence queue full; the next sync repairs it");
        }
    }

    async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Set { user, setting, reply } => {
                self.local_mut(&user).setting = setting;
                self.recompute(&user).await;
                let _ = reply.send(Ok(self.own(&user)));
            }
            Command::Own { user, reply } => {
                let _ = reply.send(self.own(&user));
            }
            Command::View { viewer, of, reply } => {
                let answers = of.iter().map(|a| self.view(&viewer, a)).collect();
                let _ = reply.send(answers);
            }
            Command::Accepted { user, other } => {
                let mine = self.own(&user);
                if other.zone == self.zone {
                    // Both are here: each sees the other now.
                    let theirs = self.own(&other.name);
                    self.calls
                        .push(vec![user.clone()], &NodeToClient::Presence { address: other.clone(), presence: theirs })
                        .await;
                    self.calls
                        .push(
                            vec![other.name.clone()],
                            &NodeToClient::Presence { address: self.me(&user), presence: mine },
                        )
                        .await;
                } else {
                    let zone = other.zone.clone();
                    self.send_update(zone, user, other, mine);
                }
            }
            Command::Removed { other, .. } => {
                let held = self.store.accepted_holders(&other).map(|h| !h.is_empty());
                if !held.unwrap_or(true) {
                    self.remote.remove(&other);
                    self.heard.remove(&other);
                }
            }
            Command::Remote { from, presence, reply } => {
                let shown = self.remote_presence(&from, presence, false).await;
                let _ = reply.send(shown);
            }
            Command::Sync { zone, pairs, presence, reply } => {
                let answer = self.answer_sync(&zone, pairs, presence).await;
                let _ = reply.send(answer);
            }
            Command::Synced { zone, asked, sent_ms, answer } => self.synced(zone, asked, sent_ms, answer).await,
            Command::ProfileChanged { user } => {
                let v = self.profile_v(&user);
                self.local_mut(&user).profile_v = v;
                self.recompute(&user).await;
            }
        }
    }

    /// The version of `user`'s profile.
    fn profile_v(&self, user: &UserName) -> u64 {
        self.store.profile(user).map(|p| p.v).unwrap_or_default()
    }

    /// `user`'s presence as shown now.
    fn own(&self, user: &UserName) -> Presence {
        match self.local.get(user) {
            Some(l) => l.shown.clone(),
            None => {
                let status = self.store.presence_setting(user).map(|s| s.status).unwrap_or_default();
                Presence {
                    state: PresenceState::Offline,
                    status,
                    profile_v: self.profile_v(user),
                    ..Presence::default()
                }
            }
        }
    }

    /// What `viewer` may see of `of`: only an accepted contact's presence.
    fn view(&self, viewer: &UserName, of: &Address) -> Option<Presence> {
        if !self.store.accepted(viewer, of).unwrap_or(false) {
            return None;
        }
        Some(if of.zone == self.zone { self.own(&of.name) } else { self.remote.get(of).cloned().unwrap_or_default() })
    }

    /// Takes what `from`'s node says of them, if some local user holds
    /// them as an accepted contact (and, unless `sync`, if it is newer than
    /// what is known), and shows it to each such user. Returns how many.
    async fn remote_presence(&mut self, from: &Address, presence: Presence, sync: bool) -> usize {
        let holders = match self.store.accepted_holders(from) {
            Ok(h) => h,
            Err(e) => {
                warn!(error = %e, "reading contact holders failed");
                return 0;
            }
        };
        if holders.is_empty() {
            return 0;
        }
        // An update older than what is known is dropped; a sync's answer is
        // taken unless it is the same, or older than an update that came
        // since (an offline of an unreachable zone, `v` 0, always is).
        let stale = self.remote.get(from).is_some_and(|k| {
            k == &presence || if sync { presence.v != 0 && k.v > presence.v } else { k.v >= presence.v }
        });
        if stale {
            return 0;
        }
        let n = holders.len();
        if !sync {
            self.heard.insert(from.clone(), now_ms());
        }
        self.remote.insert(from.clone(), presence.clone());
        self.calls.push(holders, &NodeToClient::Presence { address: from.clone(), presence }).await;
        n
    }

    /// Answers another node's sync: its users' presence is taken for the
    /// pairs this node also holds accepted, and this node's users'
    /// presence is given for those; pairs of which this node holds nothing
    /// are named as gone.
    async fn answer_sync(
        &mut self,
        zone: &ZoneName,
        pairs: Vec<Pair>,
        presence: Vec<(UserName, Presence)>,
    ) -> PresenceAnswer {
        let mut confirmed: HashMap<UserName, Vec<UserName>> = HashMap::new();
        let mut gone = Vec::new();
        let mut ours = BTreeMap::new();
        for pair in pairs.into_iter().take(MAX_SYNC_PAIRS) {
            let theirs = Address::new(pair.theirs.clone(), zone.clone());
            match self.store.contact(&pair.ours, &theirs) {
                Ok(Some(rec)) if rec.state == ContactState::Accepted => {
                    let p = self.own(&pair.ours);
                    ours.insert(pair.ours.clone(), p);
                    confirmed.entry(pair.theirs).or_default().push(pair.ours);
                }
                Ok(None) => gone.push(pair),
                Ok(Some(_)) => {} // Pending this side: neither shown nor gone.
                Err(e) => warn!(error = %e, "reading a contact failed"),
            }
        }
        for (user, p) in presence {
            if confirmed.contains_key(&user) {
                let from = Address::new(user, zone.clone());
                self.remote_presence(&from, p, true).await;
            }
        }
        PresenceAnswer::Synced { presence: ours.into_iter().collect(), gone }
    }

    /// Sends each remote zone this node shares accepted contacts with a
    /// sync, each from a task of its own.
    fn sync_all(&mut self) {
        let Some(mesh) = self.mesh.clone() else { return };
        let by_zone = match self.store.accepted_remote_pairs(&self.zone) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "reading contacts for a sync failed");
                return;
            }
        };
        for (zone, pairs) in by_zone {
            for chunk in pairs.chunks(MAX_SYNC_PAIRS) {
                let Some((_, target)) = chunk.first() else { continue };
                let target = target.clone();
                let mut presence = BTreeMap::new();
                let wire: Vec<Pair> = chunk
                    .iter()
                    .map(|(ours, theirs)| {
                        presence.entry(ours.clone()).or_insert_with(|| self.own(ours));
                        Pair { theirs: ours.clone(), ours: theirs.name.clone() }
                    })
                    .collect();
                let note = PresenceNote::Sync { pairs: wire, presence: presence.into_iter().collect() };
                let mut asked: Vec<UserName> = chunk.iter().map(|(_, theirs)| theirs.name.clone()).collect();
                asked.sort();
                asked.dedup();
                let sent_ms = now_ms();
                let (mesh, tx, zone) = (mesh.clone(), self.tx.clone(), zone.clone());
                tokio::spawn(async move {
                    let answer = match mesh.send::<PresenceService>(&target, None, &note).await {
                        Ok((_, PresenceAnswer::Synced { presence, gone })) => Some((presence, gone)),
                        Ok((_, other)) => {
                            warn!(%zone, ?other, "a sync got an answer that is not one");
                            None
                        }
                        Err(e) => {
                            debug!(%zone, error = %e, "presence sync failed");
                            None
                        }
                    };
                    let _ = tx.send(Command::Synced { zone, asked, sent_ms, answer }).await;
                });
            }
        }
    }

    /// Takes a sync's answer: the other side's presence; its gone pairs
    /// dropped here; or, if it could not be reached, its users offline.
    /// Only the users of the chunk that failed are shown offline, and of
    /// those only the ones not heard from since the sync went; a pair is
    /// dropped only if it was not made again since.
    async fn synced(&mut self, zone: ZoneName, asked: Vec<UserName>, sent_ms: u64, answer: Option<SyncReply>) {
        let Some((presence, gone)) = answer else {
            for name in asked {
                let from = Address::new(name, zone.clone());
                if self.heard.get(&from).is_some_and(|at| *at >= sent_ms) {
                    continue;
                }
                let known = self.remote.get(&from).filter(|p| p.state != PresenceState::Offline);
                if let Some(profile_v) = known.map(|p| p.profile_v) {
                    let offline = Presence {
                        state: PresenceState::Offline,
                        since_ms: now_ms(),
                        profile_v,
                        ..Presence::default()
                    };
                    self.remote_presence(&from, offline, true).await;
                }
            }
            return;
        };
        for (user, p) in presence {
            self.remote_presence(&Address::new(user, zone.clone()), p, true).await;
        }
        for pair in gone {
            // In the answer, `ours` is the other node's user and `theirs` ours.
            let other = Address::new(pair.ours, zone.clone());
            match self.store.contact(&pair.theirs, &other) {
                Ok(Some(rec)) if rec.state == ContactState::Accepted && rec.since_ms < sent_ms => {}
                _ => continue,
            }
            if let Err(e) = self.store.write_contacts(&[(&pair.theirs, &other, None)]) {
                warn!(error = %e, "dropping a contact gone on the other side failed");
                continue;
            }
            let _ = self.store.flush().await;
            self.calls.push(vec![pair.theirs.clone()], &NodeToClient::ContactRemoved { address: other.clone() }).await;
            self.remote.remove(&other);
        }
    }
}

/// Carries one zone's presence updates to its node, keeping only the
/// latest per user of what waits.
async fn deliver_updates(mesh: Mesh, zone: ZoneName, mut rx: mpsc::Receiver<(UserName, Address, Presence)>) {
    while let Some(first) = rx.recv().await {
        let mut latest: BTreeMap<UserName, (Address, Presence)> = BTreeMap::new();
        let mut take = |(user, target, p): (UserName, Address, Presence)| {
            let keep = latest.get(&user).is_none_or(|(_, old)| old.v <= p.v);
            if keep {
                latest.insert(user, (target, p));
            }
        };
        take(first);
        while let Ok(more) = rx.try_recv() {
            take(more);
        }
        for (user, (target, presence)) in latest {
            let note = PresenceNote::Update { presence };
            if let Err(e) = mesh.send::<PresenceService>(&target, Some(&user), &note).await {
                debug!(%zone, error = %e, "presence update not delivered; the next sync repairs it");
            }
        }
    }
}
