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
    /// The mesh of zones.
    #[command(subcommand)]
    Mesh(MeshCmd),
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
}

#[derive(Subcommand)]
enum UserCmd {
    /// Create an account.
    Add {
        /// Local user name.
        name: String,
        #[command(flatten)]
        password: PasswordArg,
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
    let config_file = cli.config.clone().or_else(|| {
        let default = PathBuf::from("xarxa.toml");
        default.exists().then_some(default)
    });
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
        Cmd::User(UserCmd::Add { name, password }) => AdminRequest::UserAdd { name, password: password.get()? },
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
    let resp = admin_request(&config, request).await?;
    match resp {
        AdminResponse::Ok { data } => {
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
    let store = match Store::open(&config.data_dir.join("db")) {
        Ok(s) => s,
        Err(StoreError::Locked) => {
            return Err(format!(
                "the database in {} is in use by a node that does not answer on {}; \
                 is it still starting? try again, or stop it first",
                config.data_dir.display(),
                config.data_dir.join("admin.sock").display()
            ))
        }
        Err(e) => return Err(e.to_string()),
    };
    let accounts = xarxa_node::services::accounts::Accounts::new(store.clone(), config).map_err(|e| e.to_string())?;
    let resp = admin::execute(&accounts, &store, None, None, req).await;
    store.flush().await.map_err(|e| e.to_string())?;
    Ok(resp)
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
    std::fs::write(&path, config::example_toml(&config)).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::create_dir_all(&config.data_dir).map_err(|e| format!("{}: {e}", config.data_dir.display()))?;
    let key = xarxa_node::identity::load_or_create(&config.data_dir).map_err(|e| e.to_string())?;
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
