//! `xarxa`: run and administer a zone node.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use xarxa_node::api::admin::{self, AdminRequest, AdminResponse};
use xarxa_node::config::{self, Config, Overrides};
use xarxa_node::server::Server;
use xarxa_node::store::{Store, StoreError};

/// Xarxa: real-time communication for community networks.
#[derive(Parser)]
#[command(name = "xarxa", version, about)]
struct Cli {
    /// Config file (TOML). Default: ./xarxa.toml if it exists.
    #[arg(long, global = true, env = "XARXA_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (key, certificate, database).
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the zone node.
    Run {
        /// HTTPS listen address, e.g. 0.0.0.0:8443.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Zone name.
        #[arg(long)]
        zone: Option<String>,
    },
    /// Set the node up: its zone name (checked free in the mesh), bootstrap
    /// peers, who may register and the first account; writes the config
    /// file and prints how people reach the node. Asks for what the flags
    /// do not give when run in a terminal.
    Setup(SetupArgs),
    /// Write a commented config file and prepare the data directory.
    Init {
        /// Zone name to write into the config.
        #[arg(long)]
        zone: Option<String>,
        /// Overwrite an existing config file.
        #[arg(long)]
        force: bool,
    },
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCmd),
    /// Manage invite codes.
    #[command(subcommand)]
    Invite(InviteCmd),
    /// Show the node's status.
    Status,
    /// Check what a node needs (certificate, ports, STUN, the zone claim,
    /// clocks against mesh peers, whether peers can reach it) and say what
    /// to fix. Exits non-zero if something is broken.
    Doctor,
    /// The mesh of zones.
    #[command(subcommand)]
    Mesh(MeshCmd),
    /// Write a backup of the database, node key, certificate and TURN
    /// secret to FILE: consistent, from a running node or a stopped one.
    Backup {
        /// The backup file to write (refused if it exists).
        file: PathBuf,
    },
    /// Restore a backup into the data directory (the node must be stopped).
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Move an existing database aside instead of refusing.
        #[arg(long)]
        force: bool,
        /// Keep this data directory's own node key (made by `xarxa init`)
        /// instead of the backup's: for moving the zone to a new key with
        /// `xarxa mesh hand-over` / `take-over`.
        #[arg(long)]
        without_node_key: bool,
    },
}

#[derive(Args)]
struct SetupArgs {
    /// The zone name (one DNS label: a-z, 0-9, '-').
    #[arg(long)]
    zone: Option<String>,
    /// A mesh address of another zone, ending in /p2p/<peer id> (repeat for
    /// more). None: find zones on the local network by mDNS.
    #[arg(long = "bootstrap", value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// Who may create accounts: open, invite or admin-only.
    #[arg(long)]
    registration: Option<String>,
    /// The first account to create: the volunteer's own, an administrator
    /// of the zone (may make invite codes from the web).
    #[arg(long)]
    account: Option<String>,
    /// Read the first account's password from the first line of standard
    /// input.
    #[arg(long)]
    password_stdin: bool,
    /// Ask nothing: what the flags do not give stays as configured.
    #[arg(long)]
    yes: bool,
    /// How long to wait for other zones to answer.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    wait: std::time::Duration,
}

#[derive(Subcommand)]
enum MeshCmd {
    /// Peers, routing table, stored records, rejected records, deliveries.
    Status,
    /// Ask the node holding ZONE whether it answers: round trip and clock
    /// offset.
    Ping {
        /// The zone, e.g. `sants`.
        zone: String,
    },
    /// Hand this node's zone over to another node key (the node must be
    /// stopped; it will not start under the zone again).
    HandOver {
        /// The new node's key, as `xarxa init` or `xarxa status` prints it.
        #[arg(long)]
        to: String,
        /// Where to write the signed hand-over, for the new node.
        #[arg(long)]
        out: PathBuf,
    },
    /// Take a zone over by a hand-over its old node signed for this key.
    TakeOver {
        /// The hand-over file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create an account.
    Add {
        /// Local user name.
        name: String,
        #[command(flatten)]
        password: PasswordArg,
        /// An administrator of the zone: may make invite codes from the web.
        #[arg(long)]
        admin: bool,
    },
    /// List accounts.
    List,
    /// Delete an account with its sessions, history and notices.
    Remove {
        /// Local user name.
        name: String,
    },
    /// Set an account's password (ends all its sessions).
    Passwd {
        /// Local user name.
        name: String,
        #[command(flatten)]
        password: PasswordArg,
    },
}

#[derive(Args)]
struct PasswordArg {
    /// The password (visible in the process list; prefer --password-stdin).
    #[arg(long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

#[derive(Subcommand)]
enum InviteCmd {
    /// Make an invite code.
    Create {
        /// How many registrations it allows.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// List invite codes.
    List,
}

impl PasswordArg {
    fn get(self) -> Result<String, String> {
        if let Some(p) = self.password {
            return Ok(p);
        }
        if !self.password_stdin {
            return Err("give --password or --password-stdin".into());
        }
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("reading password: {e}"))?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("XARXA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xarxa: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(real_main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xarxa: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn real_main(cli: Cli) -> Result<(), String> {
    // What this process creates (database files, backups' temporaries, a
    // certificate) is not for other users, whoever runs it.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o027));
    let config_file = cli
        .config
        .clone()
        .or_else(|| ["xarxa.toml", INSTALLED_CONFIG].into_iter().map(PathBuf::from).find(|p| p.exists()));
    let mut overrides = Overrides { data_dir: cli.data.clone(), ..Overrides::default() };
    let request = match cli.command {
        Cmd::Run { listen, zone } => {
            overrides.listen = listen;
            overrides.zone = zone;
            let config = Config::load(config_file.as_deref(), &overrides).map_err(|e| e.to_string())?;
            let server = Server::bind(config).await.map_err(|e| e.to_string())?;
            eprintln!("xarxa: serving https://{}/", server.local_addr());
            return server.run(shutdown_signal()).await.map_err(|e| e.to_string());
        }
        Cmd::Init { zone, force } => return init(config_file, overrides, zone, force),
        Cmd::Setup(args) => return setup(config_file, overrides, args).await,
        Cmd::Doctor => {
            let config = Config::load(config_file.as_deref(), &overrides).map_err(|e| e.to_string())?;
            return doctor(&config).await;
        }
        Cmd::Backup { file } => {
            let config = Config::load(config_file.as_deref(), &overrides).map_err(|e| e.to_string())?;
            return backup(&config, &file).await;
        }
        Cmd::Restore { file, force, without_node_key } => {
            let config = Config::load(config_file.as_deref(), &overrides).map_err(|e| e.to_string())?;
            return restore(&config, &file, force, without_node_key).await;
        }
        Cmd::Mesh(MeshCmd::HandOver { to, out }) => {
            let config = Config::load(config_file.as_deref(), &overrides).map_err(|e| e.to_string())?;
            if admin::request(&config.data_dir, &AdminRequest::Status).await.is_some() {
                return Err("the node is running: stop it first (once it hands its zone over it must not \
                            claim it again)"
                    .into());
            }
            let zone = config.zone_name().map_err(|e| e.to_string())?;
            let h = xarxa_node::handover::hand_over(&config.data_dir, &zone, &to, &out).map_err(|e| e.to_string())?;
            give_back(&config.data_dir)?;
            println!("wrote {}: zone {} from {} to {}", out.display(), zone, h.handover.from, h.handover.to);
            println!("on the new node: xarxa mesh take-over {}", out.display());
            return Ok(());
        }
        Cmd::Mesh(MeshCmd::TakeOver { file }) => {
            let config = Config::load(config_file.as_deref(), &overrides).map_err(|e| e.to_string())?;
            let zone = config.zone_name().map_err(|e| e.to_string())?;
            let h = xarxa_node::handover::take_over(&config.data_dir, &zone, &file).map_err(|e| e.to_string())?;
            give_back(&config.data_dir)?;
            println!("zone {} will be claimed by this node's key {} (from {})", zone, h.handover.to, h.handover.from);
            println!("restart the node if it runs");
            return Ok(());
        }
        Cmd::User(UserCmd::Add { name, password, admin }) => {
            AdminRequest::UserAdd { name, password: password.get()?, admin }
        }
        Cmd::User(UserCmd::List) => AdminRequest::UserList,
        Cmd::User(UserCmd::Remove { name }) => AdminRequest::UserRemove { name },
        Cmd::User(UserCmd::Passwd { name, password }) => AdminRequest::UserPasswd { name, password: password.get()? },
        Cmd::Invite(InviteCmd::Create { uses }) => AdminRequest::InviteCreate { uses },
        Cmd::Invite(InviteCmd::List) => AdminRequest::InviteList,
        Cmd::Status => AdminRequest::Status,
        Cmd::Mesh(MeshCmd::Status) => AdminRequest::MeshStatus,
        Cmd::Mesh(MeshCmd::Ping { zone }) => AdminRequest::MeshPing { zone },
    };
    let config = Config::load(config_file.as_deref(), &overrides).map_err(|e| e.to_string())?;
    let status = matches!(request, AdminRequest::Status);
    let resp = admin_request(&config, request).await?;
    match resp {
        AdminResponse::Ok { mut data } => {
            // The node key, which `xarxa mesh hand-over --to` asks for.
            if status && config.data_dir.join("node.key").exists() {
                if let Ok(key) = xarxa_node::identity::load_or_create(&config.data_dir) {
                    data["node_key"] = serde_json::json!(hex_key(key.verifying_key().as_bytes()));
                }
            }
            println!("{}", serde_json::to_string_pretty(&data).unwrap_or_default());
            Ok(())
        }
        AdminResponse::Error { message } => Err(message),
    }
}

/// Sends the request to the running node, or runs it on the database
/// directly when no node runs.
async fn admin_request(config: &Config, req: AdminRequest) -> Result<AdminResponse, String> {
    if let Some(resp) = admin::request(&config.data_dir, &req).await {
        return Ok(resp);
    }
    let result = async {
        let store = open_offline(config)?;
        let accounts =
            xarxa_node::services::accounts::Accounts::new(store.clone(), config).map_err(|e| e.to_string())?;
        let resp = admin::execute(&accounts, &store, None, None, req).await;
        store.flush().await.map_err(|e| e.to_string())?;
        Ok(resp)
    }
    .await;
    give_back(&config.data_dir)?;
    result
}

/// Reads one line after printing `question [current]: `; the current
/// value when the answer is empty.
fn ask(question: &str, current: &str) -> Result<String, String> {
    use std::io::Write as _;
    if current.is_empty() {
        print!("{question}: ");
    } else {
        print!("{question} [{current}]: ");
    }
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("reading the answer: {e}"))?;
    let line = line.trim();
    Ok(if line.is_empty() { current.to_owned() } else { line.to_owned() })
}

/// `xarxa doctor`.
async fn doctor(config: &Config) -> Result<(), String> {
    use xarxa_node::doctor::{Check, Level};
    let answer = admin::request(&config.data_dir, &AdminRequest::Doctor).await;
    let running = answer.is_some();
    let mut checks = xarxa_node::doctor::local(config, running).await;
    match answer {
        Some(AdminResponse::Ok { data }) => {
            checks.extend(serde_json::from_value::<Vec<Check>>(data["checks"].clone()).unwrap_or_default());
        }
        Some(AdminResponse::Error { message }) => {
            checks.push(Check { name: "node".into(), level: Level::Fail, detail: message, fix: None })
        }
        None => checks.push(Check {
            name: "node".into(),
            level: Level::Fail,
            detail: format!("no node answers on {}", config.data_dir.join("admin.sock").display()),
            fix: Some("start it: systemctl start xarxa (installed), or xarxa run".into()),
        }),
    }
    for c in &checks {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("{tag} {:<15} {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("     {:<15} fix: {fix}", "");
        }
    }
    let failed = checks.iter().filter(|c| c.level == Level::Fail).count();
    if failed > 0 {
        return Err(format!("{failed} checks failed"));
    }
    Ok(())
}

/// `xarxa setup`: its steps, then (whatever they came to) the files made
/// in the data directory given back to its owner.
async fn setup(file: Option<PathBuf>, overrides: Overrides, args: SetupArgs) -> Result<(), String> {
    let path = file.clone().unwrap_or_else(|| PathBuf::from("xarxa.toml"));
    let data_dir = Config::load(path.exists().then_some(path.as_path()), &overrides).ok().map(|c| c.data_dir);
    let result = setup_steps(file, overrides, args).await;
    if let Some(d) = data_dir {
        give_back(&d)?;
    }
    result
}

async fn setup_steps(file: Option<PathBuf>, overrides: Overrides, args: SetupArgs) -> Result<(), String> {
    use xarxa_node::setup::{self, ZoneCheck};
    let path = file.unwrap_or_else(|| PathBuf::from("xarxa.toml"));
    let existing = path.exists().then_some(path.as_path());
    let mut config = Config::load(existing, &overrides).map_err(|e| e.to_string())?;
    if admin::request(&config.data_dir, &AdminRequest::Status).await.is_some() {
        return Err("the node is running: stop it first (setup rewrites its configuration and claims its zone)".into());
    }
    let interactive = !args.yes && std::io::IsTerminal::is_terminal(&std::io::stdin()) && !args.password_stdin;
    config.zone = match args.zone {
        Some(z) => z,
        None if interactive => ask("Zone name (a-z, 0-9, '-')", &config.zone)?,
        None => config.zone,
    };
    let zone = config.zone_name().map_err(|e| e.to_string())?;
    let mut boots = args.bootstrap;
    if boots.is_empty() && interactive {
        let current: Vec<String> = config.mesh.bootstrap.iter().map(ToString::to_string).collect();
        let answer =
            ask("Mesh addresses of other zones (space-separated; empty: find them by mDNS)", &current.join(" "))?;
        boots = answer.split_whitespace().map(str::to_owned).collect();
    }
    if !boots.is_empty() {
        config.mesh.bootstrap =
            boots.iter().map(|b| b.parse().map_err(|e| format!("bootstrap {b:?}: {e}"))).collect::<Result<_, _>>()?;
    }
    let registration = match args.registration {
        Some(r) => Some(r),
        None if interactive => {
            let current = serde_json::to_value(config.registration).ok().and_then(|v| v.as_str().map(str::to_owned));
            Some(ask("Who may register (open, invite, admin-only)", &current.unwrap_or_default())?)
        }
        None => None,
    };
    if let Some(r) = registration {
        config.registration = serde_json::from_value(serde_json::json!(r))
            .map_err(|_| format!("registration {r:?}: give open, invite or admin-only"))?;
    }
    config.validate().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
    let key = xarxa_node::identity::load_or_create(&config.data_dir).map_err(|e| e.to_string())?;

    if config.mesh.enabled {
        println!("asking the mesh whether zone {zone} is free…");
        match setup::zone_check(&config, key.clone(), &zone, args.wait).await? {
            ZoneCheck::Taken { by, first_claimed_at_ms } => {
                return Err(format!(
                    "zone {zone} is held by another node ({by}, first claimed {} s ago): choose another name",
                    xarxa_node::services::accounts::now_ms().saturating_sub(first_claimed_at_ms) / 1000
                ));
            }
            ZoneCheck::Ours => println!("zone {zone}: already held by this node's key"),
            ZoneCheck::Free { peers } => println!("zone {zone}: free ({peers} zones answered)"),
            ZoneCheck::Alone => println!(
                "zone {zone}: no other zone answered within {:?}; this node starts a mesh of its own \
                 (others join it through the addresses below)",
                args.wait
            ),
        }
    }
    write_config(&path, &config)?;
    println!("wrote {}", path.display());

    let account = match args.account {
        Some(a) => Some(a),
        None if interactive => {
            Some(ask("Your own account's name, an administrator (empty: none)", "")?).filter(|a| !a.is_empty())
        }
        None => None,
    };
    if let Some(name) = account {
        let password = if args.password_stdin {
            PasswordArg { password: None, password_stdin: true }.get()?
        } else {
            let p = rpassword::prompt_password(format!("Password for {name}@{zone}: ")).map_err(|e| e.to_string())?;
            if rpassword::prompt_password("Again: ").map_err(|e| e.to_string())? != p {
                return Err("the passwords differ".into());
            }
            p
        };
        let store = open_offline(&config)?;
        let accounts =
            xarxa_node::services::accounts::Accounts::new(store.clone(), &config).map_err(|e| e.to_string())?;
        let created = accounts.create(&name, &password, true).await.map_err(|e| e.to_string())?;
        store.flush().await.map_err(|e| e.to_string())?;
        println!("account {created} created (an administrator of the zone)");
    }
    let configured = config.tls.cert.as_deref().zip(config.tls.key.as_deref());
    let (cert, _) =
        xarxa_node::tls::ensure_cert(&config.data_dir, configured, &config.zone).map_err(|e| e.to_string())?;
    give_back(&config.data_dir)?;
    let reach = setup::reach(&config, &key, &cert)?;
    println!("people reach the node at:");
    for url in &reach.urls {
        println!("  {url}");
    }
    println!("its certificate's SHA-256 fingerprint (check it when the browser asks):");
    println!("  {}", reach.fingerprint);
    if config.mesh.enabled {
        println!("other zones join the mesh through:");
        for m in &reach.mesh {
            println!("  {m}");
        }
    }
    if path == Path::new(INSTALLED_CONFIG) && Path::new("/run/systemd/system").exists() {
        let started = std::process::Command::new("systemctl").args(["start", "xarxa.service"]).status();
        match started {
            Ok(s) if s.success() => println!("started xarxa.service"),
            _ => println!("start it: systemctl start xarxa.service"),
        }
    } else {
        println!("start it: xarxa run{}", config_flag(&path));
    }
    Ok(())
}

/// Writes the commented config file in place of `path`, keeping the old
/// file's owner and mode (0640 for a new one): it may hold secrets.
fn write_config(path: &Path, config: &Config) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let old = std::fs::metadata(path).ok();
    let tmp = tempfile::Builder::new()
        .prefix(".xarxa-config-")
        .tempfile_in(dir)
        .map_err(|e| format!("temporary file in {}: {e}", dir.display()))?;
    std::fs::write(tmp.path(), config::example_toml(config)).map_err(|e| format!("{}: {e}", tmp.path().display()))?;
    let mode = old.as_ref().map_or(0o640, |m| m.mode() & 0o7777);
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode)).map_err(|e| e.to_string())?;
    if let Some(m) = &old {
        std::os::unix::fs::chown(tmp.path(), Some(m.uid()), Some(m.gid()))
            .map_err(|e| format!("keeping {}'s owner: {e}", path.display()))?;
    }
    tmp.persist(path).map_err(|e| format!("{}: {}", path.display(), e.error))?;
    Ok(())
}

/// The config file the Debian package installs, read when no `--config`
/// is given and there is no `./xarxa.toml`.
const INSTALLED_CONFIG: &str = "/etc/xarxa/config.toml";

/// `xarxa backup FILE`: from the running node over its admin socket
/// (writers wait only while the database is copied), or from the database
/// directly when no node runs. The file is verified before it is put in
/// place, readable only by its owner.
async fn backup(config: &Config, file: &Path) -> Result<(), String> {
    use xarxa_node::store::backup;
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if file.exists() {
        return Err(format!("{} exists; give another name", file.display()));
    }
    let tmp = tempfile::Builder::new()
        .prefix(".xarxa-backup-")
        .tempfile_in(dir)
        .map_err(|e| format!("temporary file in {}: {e}", dir.display()))?;
    let mut out = tokio::fs::File::from_std(tmp.reopen().map_err(|e| e.to_string())?);
    let summary = match admin::backup(&config.data_dir, &mut out).await {
        Some(answer) => {
            tokio::io::AsyncWriteExt::flush(&mut out).await.map_err(|e| e.to_string())?;
            answer?
        }
        None => {
            let store = open_offline(config)?;
            let files = backup::data_files(&config.data_dir).map_err(|e| e.to_string())?;
            let now = xarxa_node::services::accounts::now_ms();
            let summary = store.write_backup(tmp.as_file(), &files, now).map_err(|e| e.to_string())?;
            drop(store);
            give_back(&config.data_dir)?;
            serde_json::to_value(summary).unwrap_or_default()
        }
    };
    tmp.as_file().sync_all().map_err(|e| e.to_string())?;
    backup::verify(tmp.path()).map_err(|e| format!("the backup did not verify: {e}"))?;
    tmp.persist_noclobber(file).map_err(|e| format!("{}: {}", file.display(), e.error))?;
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({"backup": file, "summary": summary})).unwrap_or_default()
    );
    Ok(())
}

/// `xarxa restore FILE`: into the configured data directory, with no node
/// running on it.
async fn restore(config: &Config, file: &Path, force: bool, without_node_key: bool) -> Result<(), String> {
    use xarxa_node::store::backup;
    if admin::request(&config.data_dir, &AdminRequest::Status).await.is_some() {
        return Err(format!("a node is running on {}: stop it first", config.data_dir.display()));
    }
    let mut f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let restored =
        backup::restore_data_dir(&mut f, &config.data_dir, force, without_node_key).map_err(|e| e.to_string())?;
    give_back(&config.data_dir)?;
    println!("{}", serde_json::to_string_pretty(&restored).unwrap_or_default());
    Ok(())
}

fn open_offline(config: &Config) -> Result<Store, String> {
    match Store::open(&config.data_dir.join("db")) {
        Ok(s) => Ok(s),
        Err(StoreError::Locked) => Err(format!(
            "the database in {} is in use by a node that does not answer on {}; \
             is it still starting? try again, or stop it first",
            config.data_dir.display(),
            config.data_dir.join("admin.sock").display()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Run as root on a data directory that belongs to another user (the
/// service's), gives everything in it back to that user, so the files an
/// offline command made do not lock the service out. The walk goes by
/// directory descriptors (`openat` with `O_NOFOLLOW`, `fchownat` without
/// following links): a link the service's user swaps in mid-walk is never
/// followed out of the data directory.
fn give_back(data_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let Ok(meta) = std::fs::symlink_metadata(data_dir) else { return Ok(()) };
    if meta.uid() == 0 || !meta.is_dir() {
        return Ok(());
    }
    let owner = (nix::unistd::Uid::from_raw(meta.uid()), nix::unistd::Gid::from_raw(meta.gid()));
    let dir = nix::dir::Dir::open(data_dir, dir_flags(), nix::sys::stat::Mode::empty())
        .map_err(|e| format!("{}: {e}", data_dir.display()))?;
    give_back_in(dir, owner, 0).map_err(|e| format!("giving {} back: {e}", data_dir.display()))
}

fn dir_flags() -> nix::fcntl::OFlag {
    use nix::fcntl::OFlag;
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

fn give_back_in(
    mut dir: nix::dir::Dir,
    (uid, gid): (nix::unistd::Uid, nix::unistd::Gid),
    depth: usize,
) -> nix::Result<()> {
    use nix::fcntl::AtFlags;
    use nix::sys::stat::{fstatat, SFlag};
    use std::os::fd::AsRawFd;
    // The data directory is two levels deep (db/, tls/); far past that is
    // not ours.
    if depth > 8 {
        return Ok(());
    }
    let fd = dir.as_raw_fd();
    let names: Vec<std::ffi::CString> = dir
        .iter()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        .collect();
    for name in names {
        let Ok(st) = fstatat(Some(fd), name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else { continue };
        if st.st_uid != uid.as_raw() || st.st_gid != gid.as_raw() {
            nix::unistd::fchownat(Some(fd), name.as_c_str(), Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)?;
        }
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            // Swapped for a link since (O_NOFOLLOW refuses it) or gone: skipped.
            if let Ok(sub) =
                nix::dir::Dir::openat(Some(fd), name.as_c_str(), dir_flags(), nix::sys::stat::Mode::empty())
            {
                give_back_in(sub, (uid, gid), depth + 1)?;
            }
        }
    }
    Ok(())
}

fn init(file: Option<PathBuf>, overrides: Overrides, zone: Option<String>, force: bool) -> Result<(), String> {
    let path = file.unwrap_or_else(|| PathBuf::from("xarxa.toml"));
    if path.exists() && !force {
        return Err(format!("{} exists; use --force to overwrite", path.display()));
    }
    let mut config = Config::default();
    if let Some(z) = zone {
        config.zone = z;
    }
    if let Some(d) = overrides.data_dir {
        config.data_dir = d;
    }
    config.validate().map_err(|e| e.to_string())?;
    write_config(&path, &config)?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
    let key = xarxa_node::identity::load_or_create(&config.data_dir).map_err(|e| e.to_string())?;
    give_back(&config.data_dir)?;
    println!("wrote {}", path.display());
    println!("zone {} · node key {}", config.zone, hex_key(key.verifying_key().as_bytes()));
    println!("start it with: xarxa run{}", config_flag(&path));
    Ok(())
}

fn hex_key(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn config_flag(path: &Path) -> String {
    if path == Path::new("xarxa.toml") {
        String::new()
    } else {
        format!(" --config {}", path.display())
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
