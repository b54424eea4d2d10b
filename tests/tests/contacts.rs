//! Contacts and presence across two real zone nodes joined by the mesh:
//! request, accept, live presence (chosen, idle, in a call, offline),
//! removal that stops presence at once, bad input, a node killed and back
//! (durability and re-sync), a rogue node that learns nothing, and
//! profiles with avatars seen by contacts on another zone only.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::Result;
use signalling::contacts::{
    ContactAnswer, ContactService, ContactState, ContactStep, Pair, PresenceAnswer, PresenceNote, PresenceService,
    PresenceState,
};
use signalling::{Address, UserName};
use xarxa_tests::rogue::rogue_zone;
use xarxa_tests::{connect_call, Node, WAIT};

/// Settings every node here runs with: short grace and sync, fast
/// republish, a small request rate to test it.
const ENV: [(&str, &str); 5] = [
    ("XARXA_TIMEOUTS__GRACE", "1s"),
    ("XARXA_TIMEOUTS__PRESENCE_SYNC", "2s"),
    ("XARXA_MESH__REPUBLISH", "2s"),
    ("XARXA_TIMEOUTS__RING", "5s"),
    ("XARXA_LIMITS__CONTACT_REQUESTS_PER_HOUR", "8"),
];

fn start(zone: &str, boot: Option<&Node>) -> Result<Node> {
    start_listening(zone, boot, None)
}

/// `start`, the mesh on a fixed port if given (a node that restarts comes
/// back where the others dial it).
fn start_listening(zone: &str, boot: Option<&Node>, port: Option<u16>) -> Result<Node> {
    let mut env = ENV.to_vec();
    let listen = port.map(|p| format!("[\"/ip4/127.0.0.1/tcp/{p}\"]"));
    if let Some(l) = &listen {
        env.push(("XARXA_MESH__LISTEN", l));
    }
    let boots;
    if let Some(b) = boot {
        boots = format!("[{}]", b.info().mesh.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(","));
        env.push(("XARXA_MESH__BOOTSTRAP", &boots));
    }
    Node::start(zone, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_and_presence_across_two_zones() -> Result<()> {
    let a = start("gracia", None)?;
    let b = start("sants", Some(&a))?;
    let alice = a.user("alice").await?;
    let carol = a.user("carol").await?;
    let bob = b.user("bob").await?;
    let dan = b.user("dan").await?;
    let mut ad = a.device(&alice.token, "alice").await?;
    let mut cd = a.device(&carol.token, "carol").await?;
    let mut bd = b.device(&bob.token, "bob").await?;

    // Alice asks Bob, on another zone; he sees the request live.
    let r = a.ask_contact_when_reachable(&alice.token, &bob.address).await?;
    assert_eq!(r.body["state"], "outgoing", "{}", r.body);
    bd.expect_contact(&alice.address, ContactState::Incoming, WAIT).await?;
    let held = b.contact(&bob.token, &alice.address).await?.unwrap();
    assert_eq!((held.state, held.presence), (ContactState::Incoming, None), "no presence before accepting");
    let mine = a.contact(&alice.token, &bob.address).await?.unwrap();
    assert_eq!((mine.state, mine.presence), (ContactState::Outgoing, None));

    // Bad input: typed errors, nothing stored.
    a.ask_contact(&alice.token, &bob.address).await?.expect_error(409, "already_requested")?;
    a.ask_contact(&alice.token, &alice.address).await?.expect_error(400, "own_address")?;
    a.ask_contact(&alice.token, "alice").await?.expect_error(400, "own_address")?;
    a.ask_contact(&alice.token, "nobody@sants").await?.expect_error(404, "unknown_user")?;
    a.ask_contact(&alice.token, "nobody").await?.expect_error(404, "unknown_user")?;
    a.ask_contact(&alice.token, "not an address!").await?.expect_error(400, "invalid_address")?;
    a.accept_contact(&alice.token, &bob.address).await?.expect_error(404, "no_such_request")?;
    a.remove_contact(&alice.token, "nobody@sants").await?.expect_error(404, "not_found")?;
    a.post("/api/v1/contacts", Some(&alice.token), serde_json::json!({"address": 7}))
        .await?
        .expect_error(400, "bad_request")?;
    a.get("/api/v1/contacts", None).await?.expect_error(401, "invalid_token")?;
    let long = "x".repeat(141);
    let body = serde_json::json!({"availability": "busy", "status": long});
    a.put("/api/v1/presence", Some(&alice.token), body).await?.expect_error(400, "bad_request")?;
    let body = serde_json::json!({"availability": "asleep"});
    a.put("/api/v1/presence", Some(&alice.token), body).await?.expect_error(400, "bad_request")?;
    assert_eq!(a.contacts(&alice.token).await?.len(), 1, "only the one request is held");
    assert!(a.contacts(&carol.token).await?.is_empty());

    // Bob accepts: each sees the other online, live.
    b.accept_contact(&bob.token, &alice.address).await?.expect_status(204)?;
    ad.expect_contact(&bob.address, ContactState::Accepted, WAIT).await?;
    ad.expect_presence(&bob.address, PresenceState::Online, WAIT).await?;
    bd.expect_presence(&alice.address, PresenceState::Online, WAIT).await?;
    let seen = a.contact(&alice.token, &bob.address).await?.unwrap();
    assert_eq!(seen.presence.map(|p| p.state), Some(PresenceState::Online));

    // What Bob chooses, his idle device, his call: Alice sees each.
    b.set_presence(&bob.token, "busy", "at the market").await?;
    let p = ad.expect_presence(&bob.address, PresenceState::Busy, WAIT).await?;
    assert_eq!(p.status, "at the market");
    b.set_presence(&bob.token, "online", "").await?;
    ad.expect_presence(&bob.address, PresenceState::Online, WAIT).await?;
    bd.set_idle(true).await?;
    ad.expect_presence(&bob.address, PresenceState::Away, WAIT).await?;
    bd.set_idle(false).await?;
    ad.expect_presence(&bob.address, PresenceState::Online, WAIT).await?;
    let mut dd = b.device(&dan.token, "dan").await?;
    let call = connect_call(&mut bd, &mut dd, &dan.address).await?;
    ad.expect_presence(&bob.address, PresenceState::InCall, WAIT).await?;
    bd.hangup(&call).await?;
    ad.expect_presence(&bob.address, PresenceState::Online, WAIT).await?;

    // Carol, on Alice's zone but no contact of Bob's, sees none of it.
    cd.expect_no_presence_of(&bob.address, Duration::from_millis(200)).await?;
    assert!(a.contacts(&carol.token).await?.is_empty());

    // A contact on the same zone works the same way.
    a.ask_contact(&carol.token, "alice").await?.expect_status(201)?;
    ad.expect_contact(&carol.address, ContactState::Incoming, WAIT).await?;
    a.accept_contact(&alice.token, &carol.address).await?.expect_status(204)?;
    cd.expect_presence(&alice.address, PresenceState::Online, WAIT).await?;
    ad.expect_presence(&carol.address, PresenceState::Online, WAIT).await?;

    // Bob goes offline: Alice sees it once his grace is over.
    bd.close().await?;
    ad.expect_presence(&bob.address, PresenceState::Offline, WAIT).await?;
    let mut bd = b.device(&bob.token, "bob-again").await?;
    ad.expect_presence(&bob.address, PresenceState::Online, WAIT).await?;

    // Alice withdraws: both sides drop it, and no presence follows.
    a.remove_contact(&alice.token, &bob.address).await?.expect_status(204)?;
    ad.expect_contact_removed(&bob.address, WAIT).await?;
    bd.expect_contact_removed(&alice.address, WAIT).await?;
    assert!(b.contact(&bob.token, &alice.address).await?.is_none());
    b.set_presence(&bob.token, "busy", "still here").await?;
    ad.expect_no_presence_of(&bob.address, Duration::from_secs(3)).await?;
    let after = a.contact(&alice.token, &bob.address).await?;
    assert!(after.is_none(), "{after:?}");

    // Denied: the asker's request goes too.
    a.ask_contact(&alice.token, &bob.address).await?.expect_status(201)?;
    bd.expect_contact(&alice.address, ContactState::Incoming, WAIT).await?;
    b.deny_contact(&bob.token, &alice.address).await?.expect_status(204)?;
    ad.expect_contact_removed(&bob.address, WAIT).await?;
    assert!(a.contact(&alice.token, &bob.address).await?.is_none());

    // Asking both ways is agreeing: Bob asks Alice back after she asked.
    a.ask_contact(&alice.token, &bob.address).await?.expect_status(201)?;
    bd.expect_contact(&alice.address, ContactState::Incoming, WAIT).await?;
    let r = b.ask_contact(&bob.token, &alice.address).await?.expect_status(201)?;
    assert_eq!(r.body["state"], "accepted", "{}", r.body);
    ad.expect_contact(&bob.address, ContactState::Accepted, WAIT).await?;

    // A flood of requests from one user is rate limited (8 an hour here).
    let mut limited = None;
    for i in 0..12 {
        let r = a.ask_contact(&carol.token, &format!("ghost{i}@sants")).await?;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("a request past the limit is refused");
    assert!(r.retry_after.is_some(), "{r:?}");
    r.expect_error(429, "rate_limited")?;
    a.assert_alive().await?;
    b.assert_alive().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_survive_kill_9_and_presence_resyncs_when_a_node_comes_back() -> Result<()> {
    let free = || std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port());
    let a = start_listening("horta", None, Some(free()?))?;
    let mut b = start_listening("clot", Some(&a), Some(free()?))?;
    let alice = a.user("alice").await?;
    let bob = b.user("bob").await?;
    let mut ad = a.device(&alice.token, "alice").await?;
    a.ask_contact_when_reachable(&alice.token, &bob.address).await?;
    b.accept_contact(&bob.token, &alice.address).await?.expect_status(204)?;
    let bd = b.device(&bob.token, "bob").await?;
    ad.expect_presence(&bob.address, PresenceState::Online, WAIT).await?;

    // Bob's node dies: Alice's node finds it unreachable at its next sync.
    b.kill9()?;
    drop(bd);
    ad.expect_presence(&bob.address, PresenceState::Offline, Duration::from_secs(30)).await?;

    // Back: the accepted contact held on both sides, and Bob's presence
    // reaches Alice again.
    b.start_again()?;
    let bob_token = b.login(&bob.name, &bob.password).await?;
    let kept = b.contact(&bob_token, &alice.address).await?.unwrap();
    assert_eq!(kept.state, ContactState::Accepted);
    let _bd = b.device(&bob_token, "bob-back").await?;
    ad.expect_presence(&bob.address, PresenceState::Online, Duration::from_secs(30)).await?;

    // Alice's node dies and comes back: her contact is there, and Bob's
    // presence is read back by its first sync.
    let mut a = a;
    drop(ad);
    a.kill9()?;
    a.start_again()?;
    let alice_token = a.login(&alice.name, &alice.password).await?;
    let mut ad = a.device(&alice_token, "alice-back").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = a.contact(&alice_token, &bob.address).await?.unwrap();
        assert_eq!(c.state, ContactState::Accepted);
        if c.presence.as_ref().map(|p| p.state) == Some(PresenceState::Online) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "Bob's presence never came back to Alice's node: {c:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    b.set_presence(&bob_token, "away", "").await?;
    ad.expect_presence(&bob.address, PresenceState::Away, WAIT).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_learns_no_presence_and_takes_no_step_it_has_no_right_to() -> Result<()> {
    let a = start("poble", None)?;
    let alice = a.user("alice").await?;
    let carol = a.user("carol").await?;
    a.ask_contact(&carol.token, "alice").await?.expect_status(201)?;
    a.accept_contact(&alice.token, &carol.address).await?.expect_status(204)?;
    let mut ad = a.device(&alice.token, "alice").await?;
    let (rogue, _key, _dir) = rogue_zone(41, "evil", &a).await?;
    let mallory = UserName::parse("mallory")?;
    let alice_at = Address::parse(&alice.address)?;
    let carol_at = Address::parse(&carol.address)?;

    // Presence of a user no one here holds: shown to nobody.
    let note = PresenceNote::Update {
        presence: signalling::contacts::Presence { state: PresenceState::Online, ..Default::default() },
    };
    let (_, answer) = rogue.send::<PresenceService>(&alice_at, Some(&mallory), &note).await?;
    assert_eq!(answer, PresenceAnswer::Taken { shown_to: 0 });
    // Presence in the name of no user: refused.
    assert!(rogue.send::<PresenceService>(&alice_at, None, &note).await.is_err());
    // A sync naming pairs this node does not hold: no presence given back.
    let pair = Pair { theirs: mallory.clone(), ours: alice_at.name.clone() };
    let sync = PresenceNote::Sync { pairs: vec![pair.clone()], presence: vec![] };
    let (_, answer) = rogue.send::<PresenceService>(&alice_at, None, &sync).await?;
    assert_eq!(answer, PresenceAnswer::Synced { presence: vec![], gone: vec![pair] });
    // A sync naming Carol (a contact of Alice's here) as theirs: she is not
    // of the rogue's zone, so nothing is given either.
    let pair = Pair { theirs: carol_at.name.clone(), ours: alice_at.name.clone() };
    let sync = PresenceNote::Sync { pairs: vec![pair], presence: vec![] };
    let (_, answer) = rogue.send::<PresenceService>(&alice_at, None, &sync).await?;
    assert!(matches!(answer, PresenceAnswer::Synced { ref presence, .. } if presence.is_empty()), "{answer:?}");

    // Contact steps it has no right to: accepting a request never made,
    // a step for no user, a step naming no user of this zone.
    let accept = ContactStep::Accept { to: alice_at.name.clone() };
    let (_, answer) = rogue.send::<ContactService>(&alice_at, Some(&mallory), &accept).await?;
    assert_eq!(answer, ContactAnswer::NoSuchRequest);
    assert!(rogue.send::<ContactService>(&alice_at, None, &accept).await.is_err());
    let ask = ContactStep::Ask { to: UserName::parse("nobody")? };
    let (_, answer) = rogue.send::<ContactService>(&alice_at, Some(&mallory), &ask).await?;
    assert_eq!(answer, ContactAnswer::UnknownUser);
    // Removing Carol from Alice in the rogue's name: Carol is not its user,
    // so the step touches only a contact with mallory@evil (none).
    let remove = ContactStep::Remove { to: alice_at.name.clone() };
    rogue.send::<ContactService>(&alice_at, Some(&mallory), &remove).await?;
    let kept = a.contact(&alice.token, &carol.address).await?.unwrap();
    assert_eq!(kept.state, ContactState::Accepted);
    // A request it may make arrives as a request, and nothing more.
    let ask = ContactStep::Ask { to: alice_at.name.clone() };
    let (_, answer) = rogue.send::<ContactService>(&alice_at, Some(&mallory), &ask).await?;
    assert_eq!(answer, ContactAnswer::Done);
    ad.expect_contact("mallory@evil", ContactState::Incoming, WAIT).await?;
    let held = a.contact(&alice.token, "mallory@evil").await?.unwrap();
    assert_eq!((held.state, held.presence), (ContactState::Incoming, None));
    let (_, answer) = rogue.send::<PresenceService>(&alice_at, Some(&mallory), &note).await?;
    assert_eq!(answer, PresenceAnswer::Taken { shown_to: 0 }, "a pending request sees and shows no presence");
    ad.expect_no_presence_of("mallory@evil", Duration::from_millis(300)).await?;
    // Nor a profile: mallory is no accepted contact of Alice's.
    let ask = signalling::profiles::ProfileQuery::Get { user: alice_at.name.clone() };
    let (_, answer) = rogue.send::<signalling::profiles::ProfileService>(&alice_at, Some(&mallory), &ask).await?;
    assert_eq!(answer, signalling::profiles::ProfileAnswer::NotVisible);
    rogue.stop().await;
    a.assert_alive().await
}

/// A 1×1 PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

async fn put_avatar(node: &Node, token: &str, bytes: Vec<u8>) -> Result<(u16, serde_json::Value)> {
    let r = node.http()?.put(node.url("/api/v1/profile/avatar")).bearer_auth(token).body(bytes).send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_reach_contacts_on_another_zone_and_nobody_else() -> Result<()> {
    use base64::Engine;
    let a = start("sarria", None)?;
    let b = start("pedralbes", Some(&a))?;
    let alice = a.user("alice").await?;
    let carol = a.user("carol").await?;
    let bob = b.user("bob").await?;
    a.ask_contact_when_reachable(&alice.token, &bob.address).await?;
    b.accept_contact(&bob.token, &alice.address).await?.expect_status(204)?;
    let mut bd = b.device(&bob.token, "bob").await?;
    let _ad = a.device(&alice.token, "alice").await?;
    bd.expect_presence(&alice.address, PresenceState::Online, WAIT).await?;

    // Alice names herself: Bob's device hears of the new version with her
    // presence, and his node fetches it from hers.
    let body = serde_json::json!({"nickname": "Alícia", "description": "de Sarrià"});
    let mine = a.put("/api/v1/profile", Some(&alice.token), body).await?.expect_status(200)?;
    let v = mine.body["v"].as_u64().unwrap();
    let what = "alice's presence with the new profile version";
    let want = Address::parse(&alice.address)?;
    bd.expect_event(what, WAIT, |e| {
        matches!(e, signalling::NodeToClient::Presence { address, presence } if *address == want && presence.profile_v == v)
    })
    .await?;
    let path = format!("/api/v1/contacts/{}/profile?v={v}", alice.address.replace('@', "%40"));
    let seen = b.get(&path, Some(&bob.token)).await?.expect_status(200)?;
    assert_eq!((seen.body["nickname"].as_str(), seen.body["v"].as_u64()), (Some("Alícia"), Some(v)), "{}", seen.body);

    // An avatar: checked by its bytes, served only as that image.
    let png = base64::engine::general_purpose::STANDARD.decode(PNG)?;
    let (status, p) = put_avatar(&a, &alice.token, png.clone()).await?;
    assert_eq!((status, p["avatar"].as_str()), (200, Some("image/png")), "{p}");
    let (status, _) = put_avatar(&a, &alice.token, b"<html><script>alert(1)</script></html>".to_vec()).await?;
    assert_eq!(status, 400, "a page posing as an avatar is refused");
    let (status, _) = put_avatar(&a, &alice.token, b"<svg onload=alert(1)>".to_vec()).await?;
    assert_eq!(status, 400, "SVG is refused");
    let mut big = png.clone();
    big.resize(41 * 1024, 0);
    let (status, _) = put_avatar(&a, &alice.token, big).await?;
    assert_eq!(status, 413, "an oversized avatar is refused");
    let url = b.url(&format!("/api/v1/contacts/{}/avatar", alice.address.replace('@', "%40")));
    let r = b.http()?.get(&url).bearer_auth(&bob.token).send().await?;
    assert_eq!(r.status().as_u16(), 200);
    let h = r.headers().clone();
    assert_eq!(h.get("content-type").and_then(|v| v.to_str().ok()), Some("image/png"));
    assert_eq!(h.get("x-content-type-options").and_then(|v| v.to_str().ok()), Some("nosniff"));
    assert!(h.get("content-security-policy").and_then(|v| v.to_str().ok()).is_some_and(|c| c.contains("sandbox")));
    assert_eq!(r.bytes().await?.to_vec(), png, "the avatar crossed zones intact");

    // Bad input: typed errors, the profile unchanged.
    let long = serde_json::json!({"nickname": "n".repeat(65)});
    a.put("/api/v1/profile", Some(&alice.token), long).await?.expect_error(400, "bad_request")?;
    let nl = serde_json::json!({"nickname": "two\nlines"});
    a.put("/api/v1/profile", Some(&alice.token), nl).await?.expect_error(400, "bad_request")?;
    let own = a.get("/api/v1/profile", Some(&alice.token)).await?.expect_status(200)?;
    assert_eq!(own.body["nickname"], "Alícia");

    // Nobody else sees it: Carol is on Alice's zone but no contact of Bob.
    let path = format!("/api/v1/contacts/{}/profile", bob.address.replace('@', "%40"));
    a.get(&path, Some(&carol.token)).await?.expect_error(404, "not_found")?;
    let path = format!("/api/v1/contacts/{}/avatar", alice.address.replace('@', "%40"));
    a.get(&path, Some(&carol.token)).await?.expect_error(404, "not_found")?;
    a.get("/api/v1/profile", None).await?.expect_error(401, "invalid_token")?;

    // A change reaches Bob again; once removed, Bob sees nothing more.
    let body = serde_json::json!({"nickname": "Alícia G.", "description": ""});
    let v2 = a.put("/api/v1/profile", Some(&alice.token), body).await?.expect_status(200)?.body["v"].as_u64().unwrap();
    assert!(v2 > v);
    let path = format!("/api/v1/contacts/{}/profile?v={v2}", alice.address.replace('@', "%40"));
    let seen = b.get(&path, Some(&bob.token)).await?.expect_status(200)?;
    assert_eq!(seen.body["nickname"], "Alícia G.");
    a.remove_contact(&alice.token, &bob.address).await?.expect_status(204)?;
    b.get(&path, Some(&bob.token)).await?.expect_error(404, "not_found")?;
    Ok(())
}
