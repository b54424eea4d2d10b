//! The node's configuration: one serde struct with a default per field,
//! read from a TOML file, then `XARXA_*` environment variables, then CLI
//! flags; validated at start. `xarxa init` writes [`example_toml`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use signalling::ZoneName;

/// Who may create accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Registration {
    /// Anyone who can reach the node.
    Open,
    /// Anyone with an invite code from `xarxa invite create`.
    Invite,
    /// Only the admin, with `xarxa user add`.
    AdminOnly,
}

/// The whole configuration of a zone node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This zone's name (one DNS label: a-z, 0-9, '-'). Users are name@zone.
    pub zone: String,
    /// Where the node keeps its key, certificate and database.
    pub data_dir: PathBuf,
    /// Who may create accounts: "open", "invite" or "admin-only".
    pub registration: Registration,
    /// HTTPS listener.
    pub http: Http,
    /// TLS certificate.
    pub tls: Tls,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Limits on sizes and rates.
    pub limits: Limits,
    /// The mesh of zone nodes: `dht`'s own configuration, embedded.
    pub mesh: dht::MeshConfig,
    /// The node's own STUN/TURN server.
    pub turn: TurnSettings,
    /// The Prometheus endpoint.
    pub metrics: MetricsSettings,
}

/// `/metrics`, in the Prometheus text format: on by default, for loopback
/// clients only unless a token is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// Serve `/metrics`.
    pub enabled: bool,
    /// A bearer token scrapers must send (`Authorization: Bearer …`), from
    /// any address; unset: only clients on this machine (loopback) may scrape.
    pub token: Option<String>,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self { enabled: true, token: None }
    }
}

/// The node's own STUN/TURN server (UDP), on by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnSettings {
    /// Serve STUN and TURN.
    pub enabled: bool,
    /// UDP address and port for STUN and TURN.
    pub listen: SocketAddr,
    /// Host name or IP put in the ICE server URLs; unset: the host the
    /// browser used to reach the node's web page.
    pub public_host: Option<String>,
    /// Relayed address to advertise (e.g. the public IP of a NAT in front);
    /// unset: the listen address, or the local address clients reach.
    pub relay_ip: Option<IpAddr>,
    /// Lowest relay port.
    pub relay_port_min: u16,
    /// Highest relay port.
    pub relay_port_max: u16,
    /// Realm of the credentials; unset: the zone name.
    pub realm: Option<String>,
    /// How long the credentials handed to a logged-in user last.
    #[serde(with = "humantime_serde")]
    pub credential_ttl: Duration,
    /// HMAC secret credentials are derived from; unset: generated into
    /// data_dir/turn.secret. Never given to clients.
    pub secret: Option<String>,
    /// Private ranges peers may be in (CIDR), e.g. "10.0.0.0/8" for guifi.net.
    pub allowed_peer_ranges: Vec<String>,
    /// Relay to loopback peers (except the node's own ports). For tests and
    /// benchmarks on one machine only.
    pub allow_loopback_peers: bool,
    /// Live allocations one user may hold.
    pub max_allocations_per_user: u32,
    /// Live allocations the node holds in all.
    pub max_allocations: usize,
    /// Bandwidth of one allocation, both directions together, in kbit/s.
    pub max_kbps_per_allocation: u32,
}

impl Default for TurnSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 3478)),
            public_host: None,
            relay_ip: None,
            relay_port_min: 49152,
            relay_port_max: 65535,
            realm: None,
            credential_ttl: Duration::from_secs(24 * 3600),
            secret: None,
            allowed_peer_ranges: Vec::new(),
            allow_loopback_peers: false,
            max_allocations_per_user: 10,
            max_allocations: 1000,
            max_kbps_per_allocation: 10_000,
        }
    }
}

impl TurnSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, why: String| Err(ConfigError::Invalid { field, why });
        if self.relay_port_min == 0 || self.relay_port_min > self.relay_port_max {
            return invalid("turn.relay_port_min", "must be positive and at most relay_port_max".into());
        }
        for r in &self.allowed_peer_ranges {
            if let Err(e) = r.parse::<ipnet::IpNet>() {
                return invalid("turn.allowed_peer_ranges", format!("{r}: {e} (expected CIDR, e.g. 10.0.0.0/8)"));
            }
        }
        if self.max_allocations_per_user == 0 || self.max_allocations == 0 || self.max_kbps_per_allocation < 64 {
            return invalid("turn", "allocations must be positive and max_kbps_per_allocation at least 64".into());
        }
        if self.credential_ttl < Duration::from_secs(60) {
            return invalid("turn.credential_ttl", "must be at least 1 minute".into());
        }
        if self.secret.as_ref().is_some_and(|s| s.len() < 16) {
            return invalid("turn.secret", "must be at least 16 characters (or unset, to generate one)".into());
        }
        if self.realm.as_ref().is_some_and(|r| r.is_empty() || r.len() > 127 || r.contains(['"', '\\'])) {
            return invalid("turn.realm", "must be 1 to 127 characters without quotes".into());
        }
        let host_ok = |h: &str| {
            !h.is_empty() && h.len() <= 253 && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
        };
        if self.public_host.as_deref().is_some_and(|h| !host_ok(h)) {
            return invalid("turn.public_host", "must be a host name or an IP address".into());
        }
        Ok(())
    }
}

/// HTTPS listener settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    /// Address and port for HTTPS and WebSocket (all interfaces by default,
    /// so that people in the zone can reach it).
    pub listen: SocketAddr,
}

/// TLS settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain; empty: a self-signed one is generated in the data directory.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
}

/// Timeouts, as human-readable durations ("30s", "10m", "30days").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    /// How long a call rings before it ends unanswered.
    #[serde(with = "humantime_serde")]
    pub ring: Duration,
    /// How long a device in a call may be disconnected before its call ends.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// How long a new WebSocket has to send its hello.
    #[serde(with = "humantime_serde")]
    pub hello: Duration,
    /// How long a login session lasts.
    #[serde(with = "humantime_serde")]
    pub session: Duration,
    /// A WebSocket silent for this long is considered dead.
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// On SIGTERM, how long running calls may go on before the node ends
    /// them and exits.
    #[serde(with = "humantime_serde")]
    pub shutdown: Duration,
    /// How often presence is re-read from every zone this node shares
    /// contacts with (a zone not reached shows its users offline).
    #[serde(with = "humantime_serde")]
    pub presence_sync: Duration,
}

/// Limits on sizes and rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Largest SDP in a signal, in bytes.
    pub max_sdp_bytes: usize,
    /// Largest in-call chat line or ICE candidate, in bytes.
    pub max_chat_bytes: usize,
    /// Largest HTTP request body, in bytes.
    pub max_body_bytes: usize,
    /// WebSocket messages per second per device (bursts of twice that pass).
    pub ws_messages_per_second: u32,
    /// Devices one user may have connected at once.
    pub max_devices_per_user: usize,
    /// WebSockets the node holds at once.
    pub max_connections: usize,
    /// Failed logins per account within `login_window` before it is throttled.
    pub login_failures_per_account: u32,
    /// Failed logins per source address within `login_window`.
    pub login_failures_per_address: u32,
    /// The window for failed-login counting.
    #[serde(with = "humantime_serde")]
    pub login_window: Duration,
    /// Registrations per source address within `login_window`.
    pub registrations_per_address: u32,
    /// Sessions one user may hold; the oldest is revoked past that.
    pub max_sessions_per_user: usize,
    /// Call history entries kept per user; the oldest go first.
    pub max_history_per_user: usize,
    /// Contacts one user may hold (accepted and pending).
    pub max_contacts_per_user: usize,
    /// Contact requests waiting for one user's answer; past that, new ones
    /// are refused.
    pub max_pending_contact_requests: usize,
    /// Contact requests one user may send per hour.
    pub contact_requests_per_hour: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            zone: "xarxa".into(),
            data_dir: PathBuf::from("xarxa-data"),
            registration: Registration::Open,
            http: Http::default(),
            tls: Tls::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            mesh: dht::MeshConfig::default(),
            turn: TurnSettings::default(),
            metrics: MetricsSettings::default(),
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([0, 0, 0, 0], 8443)) }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            ring: Duration::from_secs(30),
            grace: Duration::from_secs(10),
            hello: Duration::from_secs(10),
            session: Duration::from_secs(30 * 24 * 3600),
            idle: Duration::from_secs(90),
            shutdown: Duration::from_secs(20),
            presence_sync: Duration::from_secs(60),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 64 * 1024,
            max_sdp_bytes: 16 * 1024,
            max_chat_bytes: 4 * 1024,
            max_body_bytes: 64 * 1024,
            ws_messages_per_second: 50,
            max_devices_per_user: 10,
            max_connections: 16_384,
            login_failures_per_account: 5,
            login_failures_per_address: 20,
            login_window: Duration::from_secs(300),
            registrations_per_address: 20,
            max_sessions_per_user: 50,
            max_history_per_user: 1_000,
            max_contacts_per_user: 2_000,
            max_pending_contact_requests: 200,
            contact_requests_per_hour: 60,
        }
    }
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file or environment could not be read or parsed.
    #[error("configuration: {0}")]
    Load(Box<figment::Error>),
    /// A value is out of range.
    #[error("configuration: {field}: {why}")]
    Invalid {
        /// The offending key.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// A value of the `[mesh]` section is out of range.
    #[error("configuration: {0}")]
    Mesh(#[from] dht::MeshError),
}

/// Overrides from the command line (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--data`.
    pub data_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--zone`.
    pub zone: Option<String>,
}

impl Config {
    /// Loads defaults, then `file` (if given), then `XARXA_*` variables
    /// (`XARXA_TIMEOUTS__RING=5s` sets `timeouts.ring`), then `overrides`,
    /// and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            fig = fig.merge(Toml::file_exact(f));
        }
        fig = fig.merge(Env::prefixed("XARXA_").split("__").ignore(&["log"]));
        let mut config: Config = fig.extract().map_err(|e| ConfigError::Load(Box::new(e)))?;
        if let Some(d) = &overrides.data_dir {
            config.data_dir = d.clone();
        }
        if let Some(l) = overrides.listen {
            config.http.listen = l;
        }
        if let Some(z) = &overrides.zone {
            config.zone = z.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// The zone name, parsed.
    pub fn zone_name(&self) -> Result<ZoneName, ConfigError> {
        ZoneName::parse(&self.zone).map_err(|e| ConfigError::Invalid { field: "zone", why: e.to_string() })
    }

    /// Checks ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.zone_name()?;
        let invalid = |field, why: &str| Err(ConfigError::Invalid { field, why: why.into() });
        // Text with control characters (a newline in a path, say) has no
        // sensible meaning here, and would make `example_toml` write a
        // multi-line string whose lines it then reads as keys (found by
        // the `config` fuzz target).
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let texts = [
            ("data_dir", Some(path(&self.data_dir))),
            ("tls.cert", self.tls.cert.as_deref().map(path)),
            ("tls.key", self.tls.key.as_deref().map(path)),
            ("turn.realm", self.turn.realm.clone()),
            ("turn.secret", self.turn.secret.clone()),
            ("metrics.token", self.metrics.token.clone()),
        ];
        for (field, text) in texts {
            if text.is_some_and(|t| t.chars().any(char::is_control)) {
                return Err(ConfigError::Invalid { field, why: "must not contain control characters".into() });
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return invalid("tls", "set both cert and key, or neither");
        }
        let l = &self.limits;
        if l.max_frame_bytes < 1024 || l.max_frame_bytes > 16 * 1024 * 1024 {
            return invalid("limits.max_frame_bytes", "must be 1 KiB to 16 MiB");
        }
        if l.max_sdp_bytes == 0 || l.max_sdp_bytes > l.max_frame_bytes {
            return invalid("limits.max_sdp_bytes", "must be positive and at most max_frame_bytes");
        }
        if l.max_chat_bytes == 0 || l.max_chat_bytes > l.max_frame_bytes {
            return invalid("limits.max_chat_bytes", "must be positive and at most max_frame_bytes");
        }
        if l.ws_messages_per_second == 0 || l.max_devices_per_user == 0 || l.max_connections == 0 {
            return invalid("limits", "rates and counts must be positive");
        }
        if l.max_sessions_per_user == 0 || l.max_history_per_user == 0 || l.max_body_bytes < 1024 {
            return invalid("limits", "sessions and history must be positive, bodies at least 1 KiB");
        }
        if l.max_contacts_per_user == 0 || l.max_pending_contact_requests == 0 || l.contact_requests_per_hour == 0 {
            return invalid("limits", "contact limits must be positive");
        }
        self.mesh.validate()?;
        self.turn.validate()?;
        if self.metrics.token.as_ref().is_some_and(|t| t.len() < 16 || t.len() > 256 || !t.is_ascii()) {
            return Err(ConfigError::Invalid {
                field: "metrics.token",
                why: "must be 16 to 256 ASCII characters (or unset: loopback scrapers only)".into(),
            });
        }
        let t = &self.timeouts;
        if t.ring.is_zero() || t.hello.is_zero() || t.session.is_zero() || t.idle < Duration::from_secs(5) {
            return invalid("timeouts", "ring, hello and session must be positive, idle at least 5s");
        }
        if self.timeouts.presence_sync < Duration::from_secs(1) {
            return Err(ConfigError::Invalid { field: "timeouts.presence_sync", why: "at least 1s".into() });
        }
        for (field, value, max) in self.durations() {
            if value > max {
                return Err(ConfigError::Invalid { field, why: format!("{value:?} is longer than {max:?}") });
            }
        }
        Ok(())
    }

    /// Every duration of the file with its upper bound. The bounds are far
    /// past any sensible value; they exist so that a deadline computed from
    /// a setting (`Instant::now() + ring`) can never overflow.
    pub fn durations(&self) -> [(&'static str, Duration, Duration); 9] {
        const HOUR: Duration = Duration::from_secs(3600);
        let (t, l) = (&self.timeouts, &self.limits);
        [
            ("timeouts.ring", t.ring, HOUR),
            ("timeouts.grace", t.grace, HOUR),
            ("timeouts.hello", t.hello, HOUR),
            ("timeouts.session", t.session, 366 * 24 * HOUR),
            ("timeouts.idle", t.idle, HOUR),
            ("timeouts.shutdown", t.shutdown, Duration::from_secs(600)),
            ("timeouts.presence_sync", t.presence_sync, HOUR),
            ("limits.login_window", l.login_window, 24 * HOUR),
            ("turn.credential_ttl", self.turn.credential_ttl, 30 * 24 * HOUR),
        ]
    }
}

/// Documentation of each key, in file order, used to comment the example.
const DOCS: &[(&str, &str)] = &[
    ("zone", "This zone's name (one DNS label: a-z, 0-9, '-'). Users are name@zone."),
    ("data_dir", "Where the node keeps its key, certificate and database."),
    (
        "registration",
        "Who may create accounts: \"open\", \"invite\" (codes from `xarxa invite create`) or \"admin-only\".",
    ),
    ("http.listen", "Address and port for HTTPS and WebSocket. 0.0.0.0 serves every interface."),
    ("tls.cert", "PEM certificate chain. Leave unset to use a self-signed one generated in data_dir/tls."),
    ("tls.key", "PEM private key for tls.cert."),
    ("timeouts.ring", "How long a call rings before it ends unanswered."),
    ("timeouts.grace", "How long a device in a call may be disconnected before its call ends."),
    ("timeouts.hello", "How long a new WebSocket has to authenticate."),
    ("timeouts.session", "How long a login session lasts."),
    ("timeouts.idle", "A WebSocket silent for this long is considered dead."),
    (
        "timeouts.shutdown",
        "On SIGTERM, how long running calls may go on before the node ends them and exits (at most 10m).",
    ),
    (
        "timeouts.presence_sync",
        "How often presence is re-read from every zone sharing contacts with this one (at least 1s).",
    ),
    ("limits.max_frame_bytes", "Largest WebSocket frame accepted, in bytes."),
    ("limits.max_sdp_bytes", "Largest SDP in a signal, in bytes."),
    ("limits.max_chat_bytes", "Largest in-call chat line or ICE candidate, in bytes."),
    ("limits.max_body_bytes", "Largest HTTP request body, in bytes."),
    ("limits.ws_messages_per_second", "WebSocket messages per second per device (bursts of twice that pass)."),
    ("limits.max_devices_per_user", "Devices one user may have connected at once."),
    ("limits.max_connections", "WebSockets the node holds at once."),
    ("limits.login_failures_per_account", "Failed logins per account within login_window before it is throttled."),
    ("limits.login_failures_per_address", "Failed logins per source address within login_window."),
    ("limits.login_window", "The window for counting failed logins and registrations."),
    ("limits.registrations_per_address", "Registrations per source address within login_window."),
    ("limits.max_sessions_per_user", "Sessions one user may hold; the oldest is revoked past that."),
    ("limits.max_history_per_user", "Call history entries kept per user; the oldest go first."),
    ("limits.max_contacts_per_user", "Contacts one user may hold, accepted and pending."),
    (
        "limits.max_pending_contact_requests",
        "Contact requests waiting for one user's answer; past that, new ones are refused.",
    ),
    ("limits.contact_requests_per_hour", "Contact requests one user may send per hour."),
    ("mesh.enabled", "Join the mesh of zones (false: a lone zone whose users only call each other)."),
    ("mesh.listen", "libp2p listen multiaddresses for the mesh (TCP and QUIC)."),
    (
        "mesh.bootstrap",
        "Known nodes to join through: multiaddresses ending in /p2p/<peer id> (see `xarxa mesh status`).",
    ),
    ("mesh.relays", "Relays to listen through when other nodes cannot dial this one (behind NAT)."),
    ("mesh.external", "Extra addresses to advertise, e.g. this node's guifi.net address."),
    ("mesh.mdns", "Find other zones on the local network with mDNS."),
    ("mesh.relay_server", "Relay connections for nodes that cannot reach each other directly."),
    ("mesh.claim_ttl", "Lifetime of this zone's claim; renewed every `republish`. An unrenewed claim frees the name."),
    ("mesh.user_ttl", "Lifetime of user records in the mesh."),
    ("mesh.republish", "How often this node renews its records."),
    ("mesh.cache_ttl", "How long a resolved user stays cached."),
    ("mesh.request_timeout", "How long one signalling message to another node may take."),
    ("mesh.retries", "Extra tries of a failed delivery to another node."),
    ("mesh.max_connections", "Mesh connections held at once."),
    ("mesh.idle_timeout", "How long a mesh connection no protocol uses stays open."),
    ("mesh.bootstrap_interval", "How often the node refreshes its view of the mesh (Kademlia's routing table)."),
    (
        "mesh.peer_requests_per_second",
        "Requests per second one other node may make of this node's services (bursts of twice that pass).",
    ),
    ("mesh.max_zones_per_key", "Zone names one node key may hold; more first claims by that key are refused."),
    (
        "mesh.new_zones_per_peer_per_hour",
        "Zone names never seen in the mesh that one peer may bring in per hour (twice that at once).",
    ),
    ("mesh.new_zones_per_address_per_hour", "The same per source IP address, for peers that change keys."),
    ("mesh.max_peers_per_prefix", "Peers from one /24 (IPv6: /48) one bucket of the routing table may hold."),
    ("metrics.enabled", "Serve /metrics in the Prometheus text format."),
    (
        "metrics.token",
        "Bearer token a scraper must send, from any address. Unset: only scrapers on this machine (loopback).",
    ),
    ("turn.enabled", "Serve STUN and TURN, so browsers can always reach each other (relayed if need be)."),
    ("turn.listen", "UDP address and port for STUN and TURN (3478 is the standard port)."),
    ("turn.public_host", "Host name or IP in the ICE server URLs. Unset: the host browsers use to reach this node."),
    (
        "turn.relay_ip",
        "Relayed address to advertise, e.g. the public IP of a NAT in front. Unset: the address clients reach.",
    ),
    (
        "turn.relay_port_min",
        "Lowest UDP port of relayed addresses (open relay_port_min..=relay_port_max in firewalls).",
    ),
    ("turn.relay_port_max", "Highest UDP port of relayed addresses."),
    ("turn.realm", "Realm of the TURN credentials. Unset: the zone name."),
    ("turn.credential_ttl", "How long the TURN credentials a logged-in user gets (GET /api/v1/ice) stay valid."),
    ("turn.secret", "HMAC secret TURN credentials are derived from. Unset: generated into data_dir/turn.secret."),
    (
        "turn.allowed_peer_ranges",
        "Private ranges (CIDR) peers may be in, e.g. [\"10.0.0.0/8\"] for guifi.net. Loopback and link-local never.",
    ),
    ("turn.allow_loopback_peers", "Relay to loopback peers. Only for tests and benchmarks on one machine."),
    ("turn.max_allocations_per_user", "Live TURN allocations one user may hold."),
    ("turn.max_allocations", "Live TURN allocations the node holds in all."),
    ("turn.max_kbps_per_allocation", "Bandwidth of one TURN allocation, both directions together, in kbit/s."),
];

/// A complete, commented config file holding `config`'s values.
pub fn example_toml(config: &Config) -> String {
    let body = toml::to_string(config).unwrap_or_default();
    let mut out = String::from("# Xarxa zone node configuration. Every key is optional; shown are the defaults.\n");
    out.push_str("# Environment variables override it: XARXA_ZONE=gracia, XARXA_TIMEOUTS__RING=45s.\n\n");
    let mut section = String::new();
    let mut seen_sections = vec![String::new()];
    let mut documented: Vec<&str> = Vec::new();
    for line in body.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            // Keys that serialise to nothing (unset options) are shown
            // commented out at the end of their own table, so that
            // uncommenting one puts it where it belongs.
            out.push_str(&unset_keys(&section, &documented));
            section = name.to_owned();
            seen_sections.push(section.clone());
            out.push('\n');
        } else if let Some((key, _)) = line.split_once(" = ") {
            let full = if section.is_empty() { key.trim().to_owned() } else { format!("{section}.{}", key.trim()) };
            if let Some((k, doc)) = DOCS.iter().find(|(k, _)| *k == full) {
                documented.push(k);
                out.push_str(&format!("# {doc}\n"));
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&unset_keys(&section, &documented));
    // Tables with nothing set at all.
    let mut absent: Vec<&str> = DOCS
        .iter()
        .filter_map(|(k, _)| k.rsplit_once('.').map(|(t, _)| t))
        .filter(|t| !seen_sections.iter().any(|s| s == t))
        .collect();
    absent.dedup();
    for table in absent {
        out.push_str(&format!("\n# [{table}]"));
        out.push_str(&unset_keys(table, &documented));
    }
    out
}

/// The documented keys of `table` ("" for the top level) not in
/// `documented`, commented out, as `key = ""` relative to the table.
fn unset_keys(table: &str, documented: &[&str]) -> String {
    let mut out = String::new();
    for (k, doc) in DOCS.iter().filter(|(k, _)| !documented.contains(k)) {
        let (t, key) = k.rsplit_once('.').unwrap_or(("", k));
        if t == table {
            out.push_str(&format!("\n# {doc}\n# {key} = \"\"\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_round_trips_and_documents_every_key() {
        let c = Config::default();
        let text = example_toml(&c);
        let back: Config = toml::from_str(&text).expect("example parses");
        assert_eq!(back, c);
        for (k, _) in DOCS {
            let leaf = k.rsplit('.').next().unwrap_or(k);
            assert!(text.contains(leaf), "{k} missing from example");
        }
        let value: toml::Value = toml::from_str(&toml::to_string(&c).expect("ser")).expect("de");
        let mut keys = Vec::new();
        if let toml::Value::Table(t) = value {
            for (k, v) in t {
                match v {
                    toml::Value::Table(inner) => keys.extend(inner.keys().map(|i| format!("{k}.{i}"))),
                    _ => keys.push(k),
                }
            }
        }
        for k in keys {
            assert!(DOCS.iter().any(|(d, _)| *d == k), "{k} has no doc");
        }
    }

    #[test]
    fn an_unset_key_uncommented_lands_in_its_own_table() {
        let text = example_toml(&Config::default());
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest) if rest.ends_with(" = \"\"") || (rest.starts_with('[') && rest.ends_with(']')) => rest,
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let value: toml::Value = toml::from_str(&uncommented).expect("the uncommented example parses");
        let set: toml::Value = toml::Value::try_from(Config::default()).expect("ser");
        for (k, _) in DOCS {
            let path: Vec<&str> = k.split('.').collect();
            let find = |v: &toml::Value| path.iter().try_fold(v.clone(), |v, p| v.get(p).cloned());
            if find(&set).is_none() {
                assert_eq!(find(&value), Some(toml::Value::String(String::new())), "{k} uncommented is not at {k}");
            }
        }
    }

    #[test]
    fn validation_rejects_nonsense() {
        let c = Config { zone: "Not A Zone!".into(), ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "zone", .. })));
        // The config target's find: a path with lines in it, one of them
        // looking like a section, came back from the example changed.
        let c = Config { data_dir: "x\n[tls]\ncert = \"y\"\n".into(), ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "data_dir", .. })));
        let mut c = Config::default();
        c.turn.secret = Some("0123456789abcdef\n".into());
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "turn.secret", .. })));
        let mut c = Config::default();
        c.limits.max_sdp_bytes = c.limits.max_frame_bytes + 1;
        assert!(c.validate().is_err());
        let mut c = Config::default();
        c.tls.cert = Some("x.pem".into());
        assert!(c.validate().is_err());
        // Found by fuzzing: a huge timeout overflowed `Instant` arithmetic.
        let mut c = Config::default();
        c.timeouts.hello = Duration::from_secs(u64::MAX / 2);
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "timeouts.hello", .. })));
        let mut c = Config::default();
        c.mesh.request_timeout = Duration::from_secs(u64::MAX / 2);
        assert!(c.validate().is_err());
        for (field, _, max) in Config::default().durations() {
            assert!(std::time::Instant::now().checked_add(max * 100).is_some(), "{field}");
        }
    }
}
