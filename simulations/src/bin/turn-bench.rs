//! `turn-bench`: TURN relay throughput and added latency on loopback, for
//! the zone node's own TURN server and coturn side by side, in one run,
//! driven by the same client (issue 5, point 7).
//!
//! It starts both servers itself (`xarxa run` with TURN on a free port and
//! loopback peers allowed for the run; `turnserver` with its own config in a
//! temporary directory, `allow-loopback-peers`), gives both the same REST
//! secret, and starts an in-process UDP echo peer on 127.0.0.1. Each client
//! is one UDP socket with one allocation and one channel bound to the peer,
//! so each round trip crosses the relay twice (client → peer, peer →
//! client). Per server and round (the servers alternate):
//!
//! 1. **latency**: every client sends `--rate` packets/s (audio-like) for
//!    `--latency-seconds`, through the relay and, as a baseline, straight to
//!    the peer; the added latency is relayed RTT − direct RTT (p50, p99);
//! 2. **throughput**: every client keeps `--window` packets in flight for
//!    `--seconds`; throughput is completed round trips per second (and the
//!    relayed payload, both directions, in Mbit/s), with the server's CPU
//!    time per relayed packet from /proc.
//!
//! `--uclient` also runs coturn's own `turnutils_uclient` against both with
//! the same parameters, as a cross-check. Build it optimised:
//! `cargo build --release -p xarxa-node -p xarxa-simulations --bin xarxa --bin turn-bench`.

use std::io::Read as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use clap::Parser;
use serde::Serialize;
use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::integrity::MessageIntegrity;
use stun::message::{
    Getter, Message, MessageType, Setter, BINDING_REQUEST, CLASS_REQUEST, METHOD_ALLOCATE, METHOD_CHANNEL_BIND,
    METHOD_REFRESH,
};
use stun::textattrs::TextAttribute;
use turn::proto::channum::ChannelNumber;
use turn::proto::lifetime::Lifetime;
use turn::proto::peeraddr::PeerAddress;
use turn::proto::reqtrans::RequestedTransport;
use turn::proto::PROTO_UDP;

/// TURN relay throughput and added latency: xarxa and coturn, side by side.
#[derive(Parser, Debug)]
#[command(name = "turn-bench", version, about)]
struct Cli {
    /// The xarxa binary.
    #[arg(long, default_value = "target/release/xarxa")]
    xarxa: PathBuf,
    /// coturn's server binary (Debian package `coturn`).
    #[arg(long, default_value = "turnserver")]
    coturn: PathBuf,
    /// Clients (allocations) at once.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Payload bytes per packet.
    #[arg(long, default_value_t = 1000)]
    size: usize,
    /// Packets each client keeps in flight in the throughput phase.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Seconds of the throughput phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Packets per second per client in the latency phase.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 10)]
    latency_seconds: u64,
    /// Rounds; the servers alternate within each.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Also drive both with turnutils_uclient (coturn's test client).
    #[arg(long)]
    uclient: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const SECRET: &str = "turn-bench-secret-0123456789";
const CHANNEL: u16 = 0x4000;

/// A table row: its label and how to read its figure.
type Row = (&'static str, fn(&Figures) -> f64);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("turn-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A TURN server process, killed on drop.
struct Server {
    name: &'static str,
    child: Child,
    turn: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `addr` answers a STUN Binding request.
fn wait_stun(addr: SocketAddr, child: &mut Child) -> Result<()> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = [0u8; 512];
    for _ in 0..150 {
        if let Some(status) = child.try_wait()? {
            bail!("the server exited: {status}");
        }
        let mut m = Message::new();
        m.build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)]).map_err(|e| anyhow!("{e}"))?;
        sock.send_to(&m.raw, addr)?;
        if sock.recv_from(&mut buf).is_ok() {
            return Ok(());
        }
    }
    bail!("{addr} did not answer STUN")
}

fn start_xarxa(bin: &Path) -> Result<Server> {
    let dir = tempfile::Builder::new().prefix("turn-bench-xarxa-").tempdir()?;
    let port = free_udp_port()?;
    let data = dir.path().join("data");
    let log = std::fs::File::create(dir.path().join("node.log"))?;
    let mut child = Command::new(bin)
        .args(["run", "--listen", "127.0.0.1:0", "--zone", "bench", "--data"])
        .arg(&data)
        .env("XARXA_MESH__ENABLED", "false")
        .env("XARXA_TURN__LISTEN", format!("127.0.0.1:{port}"))
        .env("XARXA_TURN__SECRET", SECRET)
        .env("XARXA_TURN__ALLOW_LOOPBACK_PEERS", "true")
        .env("XARXA_TURN__MAX_ALLOCATIONS_PER_USER", "100000")
        .env("XARXA_TURN__MAX_KBPS_PER_ALLOCATION", "100000000")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let turn = SocketAddr::from(([127, 0, 0, 1], port));
    wait_stun(turn, &mut child).with_context(|| format!("xarxa, log in {}", dir.path().display()))?;
    Ok(Server { name: "xarxa", child, turn, _dir: dir })
}

fn start_coturn(bin: &Path) -> Result<Server> {
    let dir = tempfile::Builder::new().prefix("turn-bench-coturn-").tempdir()?;
    let port = free_udp_port()?;
    let d = dir.path().display();
    let conf = format!(
        "listening-ip=127.0.0.1\nlistening-port={port}\nrelay-ip=127.0.0.1\nmin-port=40000\nmax-port=44999\n\
         use-auth-secret\nstatic-auth-secret={SECRET}\nrealm=bench\nno-tls\nno-dtls\nno-tcp\nno-tcp-relay\n\
         allow-loopback-peers\nno-cli\nno-multicast-peers\nfingerprint\npidfile={d}/turnserver.pid\n\
         userdb={d}/turndb\nlog-file={d}/coturn.log\nsimple-log\nno-stdout-log\n"
    );
    let conf_path = dir.path().join("turnserver.conf");
    std::fs::write(&conf_path, conf)?;
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {} (apt-get install coturn)", bin.display()))?;
    let turn = SocketAddr::from(([127, 0, 0, 1], port));
    wait_stun(turn, &mut child).with_context(|| format!("coturn, log in {d}"))?;
    Ok(Server { name: "coturn", child, turn, _dir: dir })
}

/// User + system CPU time of process `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let mut stat = String::new();
    std::fs::File::open(format!("/proc/{pid}/stat"))?.read_to_string(&mut stat)?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).context("/proc/pid/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 =
        fields.get(11).context("utime")?.parse::<u64>()? + fields.get(12).context("stime")?.parse::<u64>()?;
    // USER_HZ is 100 on Linux.
    Ok(ticks as f64 / 100.0)
}

/// A UDP echo peer on 127.0.0.1 (two threads on one socket).
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Echo {
    fn start() -> Result<Self> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for _ in 0..2 {
            let sock = sock.try_clone()?;
            let stop = stop.clone();
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(&buf[..n], from);
                    }
                }
            }));
        }
        Ok(Self { addr, stop, threads })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn error_code(m: &Message) -> Option<u16> {
    let mut e = ErrorCodeAttribute::default();
    e.get_from(m).ok().map(|()| e.code.0)
}

/// One client: a UDP socket with an allocation and a channel to the peer.
struct Client {
    sock: UdpSocket,
    server: SocketAddr,
    auth: Auth,
}

struct Auth {
    username: String,
    password: String,
    realm: String,
    nonce: String,
}

fn roundtrip(sock: &UdpSocket, server: SocketAddr, m: &Message) -> Result<Message> {
    let mut buf = [0u8; 2048];
    for _ in 0..5 {
        sock.send_to(&m.raw, server)?;
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline {
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                let mut r = Message::new();
                if r.unmarshal_binary(&buf[..n]).is_ok() && r.transaction_id == m.transaction_id {
                    return Ok(r);
                }
            }
        }
    }
    bail!("no answer from {server}")
}

fn request(
    sock: &UdpSocket,
    server: SocketAddr,
    auth: &mut Auth,
    method: stun::message::Method,
    attrs: &dyn Fn() -> Vec<Box<dyn Setter>>,
) -> Result<()> {
    for _ in 0..3 {
        let mut setters: Vec<Box<dyn Setter>> =
            vec![Box::new(TransactionId::new()), Box::new(MessageType::new(method, CLASS_REQUEST))];
        setters.extend(attrs());
        if !auth.nonce.is_empty() {
            setters.push(Box::new(TextAttribute::new(ATTR_USERNAME, auth.username.clone())));
            setters.push(Box::new(TextAttribute::new(ATTR_REALM, auth.realm.clone())));
            setters.push(Box::new(TextAttribute::new(ATTR_NONCE, auth.nonce.clone())));
            setters.push(Box::new(MessageIntegrity::new_long_term_integrity(
                auth.username.clone(),
                auth.realm.clone(),
                auth.password.clone(),
            )));
        }
        let mut m = Message::new();
        m.build(&setters).map_err(|e| anyhow!("{e}"))?;
        let r = roundtrip(sock, server, &m)?;
        match error_code(&r) {
            None => return Ok(()),
            Some(401 | 438) => {
                auth.realm = TextAttribute::get_from_as(&r, ATTR_REALM).map_err(|e| anyhow!("{e}"))?.text;
                auth.nonce = TextAttribute::get_from_as(&r, ATTR_NONCE).map_err(|e| anyhow!("{e}"))?.text;
            }
            Some(code) => bail!("{method} refused with {code}"),
        }
    }
    bail!("{method}: still unauthorised")
}

impl Client {
    fn setup(server: SocketAddr, peer: SocketAddr, id: usize) -> Result<Self> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let expiry = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
        let username = format!("{expiry}:bench{id}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, SECRET.as_bytes());
        let password =
            base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, username.as_bytes()).as_ref());
        let mut auth = Auth { username, password, realm: String::new(), nonce: String::new() };
        request(&sock, server, &mut auth, METHOD_ALLOCATE, &|| {
            vec![Box::new(RequestedTransport { protocol: PROTO_UDP })]
        })?;
        request(&sock, server, &mut auth, METHOD_CHANNEL_BIND, &|| {
            vec![Box::new(ChannelNumber(CHANNEL)), Box::new(PeerAddress { ip: peer.ip(), port: peer.port() })]
        })?;
        Ok(Self { sock, server, auth })
    }

    /// Frees the allocation (Refresh with lifetime 0), so that a later
    /// socket on the same port does not meet it (437).
    fn release(mut self) -> Result<()> {
        let _ = self.sock.set_read_timeout(Some(Duration::from_millis(100)));
        let lifetime: &dyn Fn() -> Vec<Box<dyn Setter>> = &|| vec![Box::new(Lifetime(Duration::ZERO))];
        request(&self.sock, self.server, &mut self.auth, METHOD_REFRESH, lifetime)
    }
}

/// How packets travel in a phase.
#[derive(Clone, Copy)]
enum Path2 {
    /// ChannelData through the TURN server.
    Relay,
    /// Straight to the echo peer (the baseline).
    Direct(SocketAddr),
}

/// Writes a packet with sequence number and send time into `buf`; returns its length.
fn packet(buf: &mut [u8], path: Path2, size: usize, seq: u64, sent_ns: u64) -> usize {
    let off = match path {
        Path2::Relay => {
            buf[..2].copy_from_slice(&CHANNEL.to_be_bytes());
            buf[2..4].copy_from_slice(&u16::try_from(size).unwrap_or(u16::MAX).to_be_bytes());
            4
        }
        Path2::Direct(_) => 0,
    };
    buf[off..off + 8].copy_from_slice(&seq.to_be_bytes());
    buf[off + 8..off + 16].copy_from_slice(&sent_ns.to_be_bytes());
    off + size
}

/// The send time in a received packet.
fn sent_ns(pkt: &[u8], path: Path2) -> Option<u64> {
    let off = match path {
        Path2::Relay => {
            if pkt.len() < 4 || u16::from_be_bytes([pkt[0], pkt[1]]) != CHANNEL {
                return None;
            }
            4
        }
        Path2::Direct(_) => 0,
    };
    let b = pkt.get(off + 8..off + 16)?;
    Some(u64::from_be_bytes(b.try_into().ok()?))
}

fn send(c: &Client, path: Path2, buf: &[u8]) {
    let to = match path {
        Path2::Relay => c.server,
        Path2::Direct(peer) => peer,
    };
    let _ = c.sock.send_to(buf, to);
}

/// Paced sending at `rate` for `dur`; returns (sent, round-trip times in ns).
fn paced(c: &Client, path: Path2, size: usize, rate: u32, dur: Duration, base: Instant) -> (u64, Vec<u64>) {
    let mut out = vec![0u8; size + 64];
    let mut inb = vec![0u8; size + 64];
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let start = Instant::now();
    let end = start + dur;
    let mut next = start;
    let mut seq = 0u64;
    let mut rtts = Vec::new();
    loop {
        let now = Instant::now();
        if now >= end + Duration::from_millis(200) {
            break;
        }
        if now >= next && now < end {
            let len = packet(&mut out, path, size, seq, base.elapsed().as_nanos() as u64);
            send(c, path, &out[..len]);
            seq += 1;
            next += interval;
        }
        let wait = next.saturating_duration_since(Instant::now()).max(Duration::from_micros(200));
        let _ = c.sock.set_read_timeout(Some(wait));
        if let Ok((n, _)) = c.sock.recv_from(&mut inb) {
            if let Some(t) = sent_ns(&inb[..n], path) {
                rtts.push((base.elapsed().as_nanos() as u64).saturating_sub(t));
            }
        }
    }
    (seq, rtts)
}

/// Closed loop with `window` packets in flight for `dur`; returns (round trips, lost).
fn flood(c: &Client, size: usize, window: usize, dur: Duration, base: Instant) -> (u64, u64) {
    let mut out = vec![0u8; size + 64];
    let mut inb = vec![0u8; size + 64];
    let _ = c.sock.set_read_timeout(Some(Duration::from_millis(50)));
    let end = Instant::now() + dur;
    let (mut done, mut lost, mut in_flight, mut seq) = (0u64, 0u64, 0usize, 0u64);
    while Instant::now() < end {
        while in_flight < window {
            let len = packet(&mut out, Path2::Relay, size, seq, base.elapsed().as_nanos() as u64);
            send(c, Path2::Relay, &out[..len]);
            seq += 1;
            in_flight += 1;
        }
        match c.sock.recv_from(&mut inb) {
            Ok((n, _)) if sent_ns(&inb[..n], Path2::Relay).is_some() => {
                done += 1;
                in_flight = in_flight.saturating_sub(1);
            }
            Ok(_) => {}
            Err(_) => {
                lost += in_flight as u64;
                in_flight = 0;
            }
        }
    }
    // Let the stragglers drain before the next phase.
    let _ = c.sock.set_read_timeout(Some(Duration::from_millis(100)));
    while c.sock.recv_from(&mut inb).is_ok() {}
    (done, lost)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// One server's figures for one round.
#[derive(Debug, Clone, Serialize)]
struct Figures {
    server: String,
    round: usize,
    /// Completed round trips per second (each crosses the relay twice).
    round_trips_per_s: f64,
    /// Relayed payload, both directions, Mbit/s.
    relayed_mbit_per_s: f64,
    /// Round trips lost in the throughput phase (%).
    flood_loss_pct: f64,
    /// Server CPU (user + system) over the throughput phase, in cores.
    server_cpu_cores: f64,
    /// Server CPU per relayed packet, µs.
    server_cpu_us_per_packet: f64,
    direct_rtt_p50_us: f64,
    direct_rtt_p99_us: f64,
    relay_rtt_p50_us: f64,
    relay_rtt_p99_us: f64,
    /// relay − direct, p50, µs (two relay crossings).
    added_rtt_p50_us: f64,
    /// Packets lost in the paced phase (%).
    paced_loss_pct: f64,
}

fn measure(cli: &Cli, server: &Server, echo: &Echo, round: usize) -> Result<Figures> {
    let clients: Vec<Client> =
        (0..cli.clients).map(|i| Client::setup(server.turn, echo.addr, round * 1000 + i)).collect::<Result<_>>()?;
    let base = Instant::now();
    let lat = Duration::from_secs(cli.latency_seconds);
    let run_paced = |path: Path2| -> (u64, Vec<u64>) {
        thread::scope(|s| {
            let hs: Vec<_> =
                clients.iter().map(|c| s.spawn(move || paced(c, path, cli.size, cli.rate, lat, base))).collect();
            let mut sent = 0;
            let mut all = Vec::new();
            for h in hs {
                if let Ok((n, r)) = h.join() {
                    sent += n;
                    all.extend(r);
                }
            }
            all.sort_unstable();
            (sent, all)
        })
    };
    let (_, direct) = run_paced(Path2::Direct(echo.addr));
    let (sent, relay) = run_paced(Path2::Relay);
    let cpu0 = cpu_seconds(server.child.id())?;
    let t0 = Instant::now();
    let dur = Duration::from_secs(cli.seconds);
    let (done, lost) = thread::scope(|s| {
        let hs: Vec<_> = clients.iter().map(|c| s.spawn(move || flood(c, cli.size, cli.window, dur, base))).collect();
        hs.into_iter().filter_map(|h| h.join().ok()).fold((0, 0), |(d, l), (a, b)| (d + a, l + b))
    });
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.child.id())? - cpu0;
    for c in clients {
        c.release().context("releasing an allocation")?;
    }
    let rtps = done as f64 / elapsed;
    let (d50, d99, r50, r99) =
        (percentile(&direct, 0.5), percentile(&direct, 0.99), percentile(&relay, 0.5), percentile(&relay, 0.99));
    Ok(Figures {
        server: server.name.to_owned(),
        round,
        round_trips_per_s: rtps,
        relayed_mbit_per_s: rtps * 2.0 * cli.size as f64 * 8.0 / 1e6,
        flood_loss_pct: 100.0 * lost as f64 / (done + lost).max(1) as f64,
        server_cpu_cores: cpu / elapsed,
        server_cpu_us_per_packet: 1e6 * cpu / (2.0 * done.max(1) as f64),
        direct_rtt_p50_us: d50,
        direct_rtt_p99_us: d99,
        relay_rtt_p50_us: r50,
        relay_rtt_p99_us: r99,
        added_rtt_p50_us: r50 - d50,
        paced_loss_pct: 100.0 * (sent.saturating_sub(relay.len() as u64)) as f64 / sent.max(1) as f64,
    })
}

/// What turnutils_uclient reported.
#[derive(Debug, Clone, Serialize)]
struct Uclient {
    server: String,
    sent: u64,
    received: u64,
    seconds: f64,
    received_per_s: f64,
    avg_rtt_ms: f64,
}

fn uclient(server: &Server, echo: &Echo, cli: &Cli) -> Result<Uclient> {
    let out = Command::new("turnutils_uclient")
        .args(["-u", "bench", "-W", SECRET, "-e", "127.0.0.1", "-c", "-z", "0", "-X"])
        .args(["-r", &echo.addr.port().to_string(), "-p", &server.turn.port().to_string()])
        .args(["-n", "20000", "-m", &cli.clients.to_string(), "-l", &cli.size.to_string()])
        .arg("127.0.0.1")
        .output()
        .context("running turnutils_uclient")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let num_after = |key: &str| -> Option<f64> {
        let line = text.lines().rev().find(|l| l.contains(key))?;
        let rest = &line[line.find(key)? + key.len()..];
        rest.trim_start_matches([' ', '=']).split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?.parse().ok()
    };
    let sent = num_after("tot_send_msgs").context("uclient: no tot_send_msgs")? as u64;
    let received = num_after("tot_recv_msgs").context("uclient: no tot_recv_msgs")? as u64;
    let seconds = num_after("Total transmit time is").unwrap_or(f64::NAN);
    Ok(Uclient {
        server: server.name.to_owned(),
        sent,
        received,
        seconds,
        received_per_s: received as f64 / seconds.max(1.0),
        avg_rtt_ms: num_after("Average round trip delay").unwrap_or(f64::NAN),
    })
}

fn median(v: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[derive(Serialize)]
struct Report {
    clients: usize,
    size: usize,
    window: usize,
    seconds: u64,
    rate: u32,
    latency_seconds: u64,
    cores: usize,
    rounds: Vec<Figures>,
    uclient: Vec<Uclient>,
    throughput_ratio: f64,
    added_rtt_p50_ratio: f64,
}

fn run(cli: &Cli) -> Result<()> {
    let echo = Echo::start()?;
    let servers = [start_xarxa(&cli.xarxa)?, start_coturn(&cli.coturn)?];
    let cores = thread::available_parallelism().map_or(1, usize::from);
    println!(
        "turn-bench: {} clients, {} B payload, window {}, {} s flood; {} pkt/s per client for {} s; {cores} cores",
        cli.clients, cli.size, cli.window, cli.seconds, cli.rate, cli.latency_seconds
    );
    let mut rounds = Vec::new();
    for round in 0..cli.rounds {
        let order: Vec<&Server> =
            if round % 2 == 0 { servers.iter().collect() } else { servers.iter().rev().collect() };
        for s in order {
            let f = measure(cli, s, &echo, round)?;
            println!(
                "round {round} {:7} {:9.0} rt/s {:7.1} Mbit/s loss {:5.2}% cpu {:4.2} cores {:5.2} µs/pkt | \
                 rtt p50 direct {:6.1} relay {:6.1} added {:6.1} µs, p99 direct {:7.1} relay {:7.1} µs",
                f.server,
                f.round_trips_per_s,
                f.relayed_mbit_per_s,
                f.flood_loss_pct,
                f.server_cpu_cores,
                f.server_cpu_us_per_packet,
                f.direct_rtt_p50_us,
                f.relay_rtt_p50_us,
                f.added_rtt_p50_us,
                f.direct_rtt_p99_us,
                f.relay_rtt_p99_us
            );
            rounds.push(f);
        }
    }
    // Medians over the rounds: the machine may be busy with other work.
    let of = |name: &str, pick: fn(&Figures) -> f64| median(rounds.iter().filter(|f| f.server == name).map(pick));
    // Ratios within each round (the two servers ran back to back), then their median.
    let ratio = |pick: fn(&Figures) -> f64| {
        median((0..cli.rounds).filter_map(|r| {
            let x = rounds.iter().find(|f| f.round == r && f.server == "xarxa")?;
            let c = rounds.iter().find(|f| f.round == r && f.server == "coturn")?;
            Some(pick(x) / pick(c))
        }))
    };
    let throughput_ratio = ratio(|f| f.round_trips_per_s);
    let added_rtt_p50_ratio = ratio(|f| f.added_rtt_p50_us);
    println!(
        "\nmedians of {} rounds:\n\n| | xarxa | coturn | xarxa / coturn (median of per-round ratios) |",
        cli.rounds
    );
    println!("|---|---|---|---|");
    let rows: [Row; 9] = [
        ("throughput, round trips/s", |f| f.round_trips_per_s),
        ("relayed payload, Mbit/s", |f| f.relayed_mbit_per_s),
        ("server CPU, µs per relayed packet", |f| f.server_cpu_us_per_packet),
        ("server CPU, cores", |f| f.server_cpu_cores),
        ("RTT p50 direct (no relay), µs", |f| f.direct_rtt_p50_us),
        ("RTT p50 through the relay, µs", |f| f.relay_rtt_p50_us),
        ("added RTT p50 (two relay crossings), µs", |f| f.added_rtt_p50_us),
        ("RTT p99 through the relay, µs", |f| f.relay_rtt_p99_us),
        ("paced loss, %", |f| f.paced_loss_pct),
    ];
    for (what, pick) in rows {
        println!("| {what} | {:.1} | {:.1} | {:.2} |", of("xarxa", pick), of("coturn", pick), ratio(pick));
    }
    let mut ucl = Vec::new();
    if cli.uclient {
        for s in &servers {
            let u = uclient(s, &echo, cli)?;
            println!(
                "turnutils_uclient {:7}: sent {} received {} in {} s ({:.0}/s), average RTT {} ms",
                u.server, u.sent, u.received, u.seconds, u.received_per_s, u.avg_rtt_ms
            );
            ucl.push(u);
        }
    }
    println!(
        "\nthroughput xarxa/coturn = {throughput_ratio:.2}; added RTT p50 xarxa/coturn = {added_rtt_p50_ratio:.2}"
    );
    if let Some(path) = &cli.json {
        let report = Report {
            clients: cli.clients,
            size: cli.size,
            window: cli.window,
            seconds: cli.seconds,
            rate: cli.rate,
            latency_seconds: cli.latency_seconds,
            cores,
            rounds,
            uclient: ucl,
            throughput_ratio,
            added_rtt_p50_ratio,
        };
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}
