//! `store-bench`: how long a backup of a zone's database takes, which is
//! how long the node's writers wait (the store's write gate), and how long
//! a restore and a schema migration take, for a database of a given size.
//!
//! ```sh
//! cargo run --release -p xarxa-simulations --bin store-bench -- --users 2000 --history 100 --rounds 5
//! ```
//!
//! Fills a sled store on disk (a temporary directory) through the node's
//! typed store: `users` accounts, two sessions each, `history` call
//! entries each. Then, `rounds` times: a backup to a file (timed), a verify
//! (timed), a restore into a new directory (timed); a writer creating a
//! session every millisecond meanwhile times its longest write, against
//! the same writer for two seconds before, with no backup (the baseline).
//! Prints one JSON line.

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use signalling::{Address, CallId, HistoryEntry, HistoryKind, Media, Outcome};
use xarxa_node::store::{backup, SessionRecord, Store, UserRecord};

#[derive(Parser)]
struct Args {
    /// Accounts.
    #[arg(long, default_value_t = 2000)]
    users: usize,
    /// History entries per account.
    #[arg(long, default_value_t = 100)]
    history: usize,
    /// Rounds of backup, verify and restore.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn spread(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    let median = v[v.len() / 2];
    serde_json::json!({"min": v[0], "median": median, "max": v[v.len() - 1]})
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("db"))?;
    let filled = Instant::now();
    for u in 0..args.users {
        let name = format!("user{u}");
        store.create_user(&UserRecord {
            name: name.clone(),
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
            created_at_ms: 1,
            admin: false,
        })?;
        for s in 0..2u8 {
            let mut hash = [s; 32];
            hash[..8].copy_from_slice(&(u as u64).to_be_bytes());
            let rec = SessionRecord {
                id: format!("{u}-{s}"),
                user: name.clone(),
                device: "Firefox on Linux".into(),
                created_at_ms: 1,
                last_used_at_ms: 1,
                expires_at_ms: u64::MAX,
            };
            store.create_session(&hash, &rec, 10)?;
        }
        for h in 0..args.history {
            let entry = HistoryEntry {
                id: 0,
                call: CallId(format!("{u:08x}{h:024x}")),
                kind: if h % 2 == 0 { HistoryKind::Sent } else { HistoryKind::Received },
                peer: Address::parse(&format!("peer{h}@sants"))?,
                media: Media { audio: true, video: h % 3 == 0 },
                started_at_ms: 1_764_615_600_000 + h as u64,
                duration_ms: 60_000,
                outcome: Outcome::HungUpByCaller,
            };
            store.add_history(&name, entry, args.history)?;
        }
    }
    store.flush_blocking()?;
    let fill_ms = ms(filled);
    // A writer, as the node's are (a session at a time), timing each write:
    // its longest wait first with no backup running (the baseline), then
    // while the backups run.
    let writer = |store: Store, stop: std::sync::Arc<std::sync::atomic::AtomicBool>| {
        std::thread::spawn(move || -> Result<f64> {
            let mut worst = 0f64;
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                let rec = SessionRecord {
                    id: format!("w{i}"),
                    user: "writer".into(),
                    device: String::new(),
                    created_at_ms: i,
                    last_used_at_ms: 0,
                    expires_at_ms: u64::MAX,
                };
                let mut hash = [0xee; 32];
                hash[..8].copy_from_slice(&i.to_be_bytes());
                store.create_session(&hash, &rec, 4)?;
                worst = worst.max(ms(t));
                i += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Ok(worst)
        })
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let quiet = writer(store.clone(), stop.clone());
    std::thread::sleep(std::time::Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst_quiet = quiet.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = writer(store.clone(), stop.clone());

    let (mut backups, mut verifies, mut restores) = (Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    for round in 0..args.rounds {
        let file = dir.path().join(format!("b{round}.xarxa-backup"));
        let t = Instant::now();
        let summary = store.write_backup(std::fs::File::create(&file)?, &[], 1)?;
        backups.push(ms(t));
        bytes = summary.bytes;
        let t = Instant::now();
        backup::verify(&file)?;
        verifies.push(ms(t));
        let t = Instant::now();
        backup::restore(&mut std::fs::File::open(&file)?, &dir.path().join(format!("r{round}")))?;
        restores.push(ms(t));
        std::fs::remove_file(&file)?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst_busy = busy.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let out = serde_json::json!({
        "writer_worst_wait_ms": {"no_backup": worst_quiet, "during_backups": worst_busy},
        "users": args.users,
        "sessions": args.users * 2,
        "history_entries": args.users * args.history,
        "fill_ms": fill_ms,
        "backup_bytes": bytes,
        "backup_ms": spread(backups),
        "verify_ms": spread(verifies),
        "restore_ms": spread(restores),
        "rounds": args.rounds,
    });
    println!("{out}");
    Ok(())
}
