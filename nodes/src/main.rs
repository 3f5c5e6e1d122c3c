//! `lethe`: one binary, one subcommand per node role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lethe_nodes::directory;
use lethe_nodes::gateway;
use lethe_nodes::issuer;
use lethe_nodes::logging::{self, LogFormat};
use lethe_nodes::mixnode::{self, RunOverrides};

#[derive(Parser, Debug)]
#[command(name = "lethe", version, about = "Lethe: a Nym-compatible mixnet")]
struct Cli {
    /// Log lines on stderr: `text` (RFC 3339 UTC time, level, target, message, fields) or
    /// `json` (one object per line). Which lines: `RUST_LOG` (default `info`).
    #[arg(
        long,
        global = true,
        env = "LETHE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the version.
    Version,
    /// A mix node: Sphinx processing, delays, forwarding.
    Mixnode {
        #[command(subcommand)]
        command: MixnodeCommand,
    },
    /// A gateway: final-hop delivery, client mailboxes, client WebSockets.
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// Trusted dealer: write t-of-n credential issuer key shares and the verification key.
    Keygen(issuer::KeygenArgs),
    /// A credential issuer (one share of the threshold key), over HTTP.
    Issuer {
        #[command(subcommand)]
        command: IssuerCommand,
    },
    /// Bandwidth credentials: obtain one from t of n issuers, or show one.
    Credential {
        #[command(subcommand)]
        command: CredentialCommand,
    },
    /// A whole local network (4 directory authorities, 3 layers of mixnodes, gateways, a
    /// service provider).
    Testnet {
        #[command(subcommand)]
        command: TestnetCommand,
    },
    /// A directory authority: registrations, heartbeats, and signed topologies, alone (n = 1)
    /// or voting with its peer authorities (`--peer URL=KEY`) on a consensus 2f+1 of them sign.
    #[command(visible_alias = "authority")]
    Directory {
        #[command(subcommand)]
        command: DirectoryCommand,
    },
    /// A Loopix client: create an identity, send and receive messages through the mixnet.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// A service provider: the far end of `lethe client socks5`.
    Provider {
        #[command(subcommand)]
        command: ProviderCommand,
    },
    /// Listen and record every received frame to a file (a test helper; a gateway stand-in).
    Sink {
        #[arg(long, env = "LETHE_LISTEN", default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum TestnetCommand {
    /// Start every node as a background process; print addresses and how to use them.
    Up(lethe_nodes::testnet::UpArgs),
    /// Stop every node (SIGTERM, then SIGKILL after a grace period); delete keys, databases
    /// and replay snapshots, keep the logs (--purge: delete everything).
    Down(lethe_nodes::testnet::DownArgs),
    /// Which nodes are running, each authority's view, and the document clients accept with
    /// who signed it. Exit status 0: all running; 1: some stopped; 3: no testnet running.
    Status(lethe_nodes::testnet::DirArgs),
    /// Print the running testnet's authority URLs and keys (comma-separated lists), issuers,
    /// threshold, verification key and provider address as shell variables: `eval "$(lethe
    /// testnet env)"`.
    Env(lethe_nodes::testnet::DirArgs),
    /// Cut or restore one node's link (`--netns` testnets only).
    Link(lethe_nodes::testnet::LinkArgs),
}

#[derive(Subcommand, Debug)]
enum DirectoryCommand {
    /// Write the authority's ed25519 identity and an empty `peers` file into DIR (refuses to
    /// overwrite); prints `key=HEX`.
    Init {
        #[arg(long, env = "LETHE_DIR")]
        dir: PathBuf,
    },
    /// Serve the directory API until SIGTERM/SIGINT; prints `listen=ADDR` and `key=HEX`.
    Run(directory::DirectoryRunArgs),
    /// Print the directory's key, listen address, version. Reads only; takes `run`'s flags.
    Info {
        #[command(flatten)]
        args: directory::DirectoryRunArgs,
        /// One JSON object instead of `name: value` lines.
        #[arg(long)]
        json: bool,
    },
    /// Check what `run` with these flags needs. Exit status 0: all ok; 1: some FAIL.
    CheckConfig(directory::DirectoryRunArgs),
    /// Print a hardened systemd unit (dist/systemd/ holds it with the defaults).
    SystemdUnit(lethe_nodes::ops::systemd::UnitArgs),
}

#[derive(Subcommand, Debug)]
enum ClientCommand {
    /// Write keys and client.toml into DIR; print the client's address.
    Init(lethe_nodes::client::cli::InitArgs),
    /// Send a message (or a file) to an address.
    Send(lethe_nodes::client::cli::SendArgs),
    /// Receive messages into a directory.
    Receive(lethe_nodes::client::cli::ReceiveArgs),
    /// A local SOCKS5 proxy whose connections go through the mixnet to a service provider.
    Socks5(lethe_nodes::socks::cli::Socks5Args),
}

#[derive(Subcommand, Debug)]
enum ProviderCommand {
    /// Open TCP connections for SOCKS5 clients of the mixnet (allow-listed targets only).
    Run(lethe_nodes::socks::cli::ProviderArgs),
}

#[derive(Subcommand, Debug)]
enum IssuerCommand {
    /// Run one issuer until SIGTERM/SIGINT.
    Run(issuer::IssuerRunArgs),
    /// Print the share's index, key fingerprints, listen address, version. Reads only; takes
    /// `run`'s flags.
    Info {
        #[command(flatten)]
        args: issuer::IssuerRunArgs,
        /// One JSON object instead of `name: value` lines.
        #[arg(long)]
        json: bool,
    },
    /// Check what `run` with these flags needs (key share, port). Exit status 0: all ok; 1:
    /// some FAIL.
    CheckConfig(issuer::IssuerRunArgs),
    /// Print a hardened systemd unit (dist/systemd/ holds it with the defaults).
    SystemdUnit(lethe_nodes::ops::systemd::UnitArgs),
}

#[derive(Subcommand, Debug)]
enum CredentialCommand {
    /// Ask every issuer in parallel; keep the first t valid shares; write the credential.
    Obtain(lethe_nodes::issuance::ObtainArgs),
    /// Print a credential's bandwidth and expiry.
    Show(lethe_nodes::issuance::ShowArgs),
}

#[derive(Subcommand, Debug)]
enum MixnodeCommand {
    /// Write keys and a commented config.toml into DIR (refuses to overwrite); prints the
    /// profile and the memory it implies.
    Init {
        #[arg(long, env = "LETHE_DIR")]
        dir: PathBuf,
        /// `default`: a production node (~2000 packets/s under 24 h keys, 1.8 GB replay
        /// filter); `small`: first runs and testnets (~1000 packets/s under 1 h keys, tens of
        /// MB, one core).
        #[arg(long, env = "LETHE_PROFILE", value_enum, default_value_t)]
        profile: lethe_nodes::node::runtime_config::Profile,
    },
    /// Run the node in DIR until SIGTERM/SIGINT.
    Run {
        #[arg(long, env = "LETHE_DIR")]
        dir: PathBuf,
        #[command(flatten)]
        overrides: Box<RunOverrides>,
    },
    /// Print the node's identity, Sphinx keys (rotation id, expiry), addresses, config path,
    /// version and SIMD path. Reads only; works while the node runs. Takes `run`'s flags.
    Info {
        #[arg(long, env = "LETHE_DIR")]
        dir: PathBuf,
        /// One JSON object instead of `name: value` lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        overrides: Box<RunOverrides>,
    },
    /// Check what `run` with these flags needs: config, key files, ports, state dirs, locked
    /// memory, announce address, disk space. Exit status 0: all ok; 1: some FAIL.
    CheckConfig {
        #[arg(long, env = "LETHE_DIR")]
        dir: PathBuf,
        #[command(flatten)]
        overrides: Box<RunOverrides>,
    },
    /// Print a hardened systemd unit (dist/systemd/ holds it with the defaults).
    SystemdUnit(lethe_nodes::ops::systemd::UnitArgs),
    /// Remove the node from the directory at once, signed with its identity key (`run`
    /// does this itself on SIGTERM/SIGINT).
    Deregister(DeregisterArgs),
}

/// Flags of `lethe mixnode|gateway deregister`.
#[derive(clap::Args, Debug)]
struct DeregisterArgs {
    #[arg(long, env = "LETHE_DIR")]
    dir: PathBuf,
    /// Directory authority base URL (`http://host:port`); repeat (or comma-separate) to
    /// leave every authority.
    #[arg(long, env = "LETHE_DIRECTORY", value_delimiter = ',', required = true)]
    directory: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum GatewayCommand {
    /// Write keys and a commented config.toml into DIR (refuses to overwrite); prints the
    /// profile and the memory it implies.
    Init {
        #[arg(long, env = "LETHE_DIR")]
        dir: PathBuf,
        /// `default`: a production node (~2000 packets/s under 24 h keys, 1.8 GB replay
        /// filter); `small`: first runs and testnets (~1000 packets/s under 1 h keys, tens of
        /// MB, one core).
        #[arg(long, env = "LETHE_PROFILE", value_enum, default_value_t)]
        profile: lethe_nodes::node::runtime_config::Profile,
    },
    /// Run the gateway in DIR until SIGTERM/SIGINT.
    Run {
        #[arg(long, env = "LETHE_DIR")]
        dir: PathBuf,
        #[command(flatten)]
        overrides: Box<gateway::RunOverrides>,
    },
    /// Print the gateway's identity, Sphinx keys, addresses, client URL, config path, version
    /// and SIMD path. Reads only; works while it runs. Takes `run`'s flags.
    Info {
        #[arg(long, env = "LETHE_DIR")]
        dir: PathBuf,
        /// One JSON object instead of `name: value` lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        overrides: Box<gateway::RunOverrides>,
    },
    /// Check what `run` with these flags needs: config, key files, ports, state dirs, locked
    /// memory, announce address, disk space. Exit status 0: all ok; 1: some FAIL.
    CheckConfig {
        #[arg(long, env = "LETHE_DIR")]
        dir: PathBuf,
        #[command(flatten)]
        overrides: Box<gateway::RunOverrides>,
    },
    /// Print a hardened systemd unit (dist/systemd/ holds it with the defaults).
    SystemdUnit(lethe_nodes::ops::systemd::UnitArgs),
    /// Remove the gateway from the directory at once, signed with its identity key (`run`
    /// does this itself on SIGTERM/SIGINT).
    Deregister(DeregisterArgs),
}

/// Exit status for a bad `RUST_LOG` (as clap exits for bad arguments).
const EXIT_USAGE: u8 = 2;

/// Raises the soft limit on open descriptors to the hard one: a node serves thousands of
/// connections (4,096 per engine core, gateway sessions), and the usual soft limit of 1,024
/// would refuse them long before the node's own caps do.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one live rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() -> ExitCode {
    raise_descriptor_limit();
    let cli = Cli::parse();
    if let Err(e) = logging::init(cli.log_format) {
        // No subscriber to say it with: plain stderr, and clap's exit status for bad usage.
        eprintln!("lethe: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let anyhow_text = |e: anyhow::Error| format!("{e:#}");
    let result = match cli.command {
        Command::Version => {
            println!("lethe {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Mixnode {
            command: MixnodeCommand::Init { dir, profile },
        } => mixnode::init(&dir, profile).map_err(|e| e.to_string()),
        Command::Mixnode {
            command: MixnodeCommand::Run { dir, overrides },
        } => mixnode::run(&dir, &overrides).map_err(|e| e.to_string()),
        Command::Mixnode {
            command:
                MixnodeCommand::Info {
                    dir,
                    json,
                    overrides,
                },
        } => lethe_nodes::ops::info::mixnode(&dir, &overrides, json),
        Command::Mixnode {
            command: MixnodeCommand::CheckConfig { dir, overrides },
        } => lethe_nodes::ops::check::mixnode(&dir, &overrides),
        Command::Mixnode {
            command: MixnodeCommand::SystemdUnit(args),
        } => lethe_nodes::ops::systemd::print(lethe_nodes::ops::systemd::Role::Mixnode, &args),
        Command::Mixnode {
            command: MixnodeCommand::Deregister(args),
        } => mixnode::deregister(&args.dir, &args.directory),
        Command::Gateway {
            command: GatewayCommand::Init { dir, profile },
        } => gateway::init(&dir, profile),
        Command::Gateway {
            command: GatewayCommand::Run { dir, overrides },
        } => gateway::run(&dir, &overrides),
        Command::Gateway {
            command:
                GatewayCommand::Info {
                    dir,
                    json,
                    overrides,
                },
        } => lethe_nodes::ops::info::gateway(&dir, &overrides, json),
        Command::Gateway {
            command: GatewayCommand::CheckConfig { dir, overrides },
        } => lethe_nodes::ops::check::gateway(&dir, &overrides),
        Command::Gateway {
            command: GatewayCommand::SystemdUnit(args),
        } => lethe_nodes::ops::systemd::print(lethe_nodes::ops::systemd::Role::Gateway, &args),
        Command::Gateway {
            command: GatewayCommand::Deregister(args),
        } => gateway::deregister(&args.dir, &args.directory),
        Command::Keygen(args) => issuer::keygen::run(&args).map_err(anyhow_text),
        Command::Issuer {
            command: IssuerCommand::Run(args),
        } => issuer::server::run(&args).map_err(anyhow_text),
        Command::Issuer {
            command: IssuerCommand::Info { args, json },
        } => lethe_nodes::ops::info::issuer(&args, json),
        Command::Issuer {
            command: IssuerCommand::CheckConfig(args),
        } => lethe_nodes::ops::check::issuer(&args),
        Command::Issuer {
            command: IssuerCommand::SystemdUnit(args),
        } => lethe_nodes::ops::systemd::print(lethe_nodes::ops::systemd::Role::Issuer, &args),
        Command::Credential {
            command: CredentialCommand::Obtain(args),
        } => lethe_nodes::issuance::run_obtain(&args).map_err(anyhow_text),
        Command::Credential {
            command: CredentialCommand::Show(args),
        } => lethe_nodes::issuance::run_show(&args).map_err(anyhow_text),
        Command::Testnet { command } => match command {
            TestnetCommand::Up(args) => lethe_nodes::testnet::up(&args),
            TestnetCommand::Down(args) => lethe_nodes::testnet::down(&args),
            // Its own exit statuses (see the subcommand's help): scripts tell "not running"
            // from "some nodes stopped" from an error reading the state.
            TestnetCommand::Status(args) => match lethe_nodes::testnet::status(&args) {
                Ok(code) => return ExitCode::from(code),
                Err(e) => Err(e),
            },
            TestnetCommand::Env(args) => lethe_nodes::testnet::env(&args),
            TestnetCommand::Link(args) => lethe_nodes::testnet::link(&args),
        },
        Command::Directory {
            command: DirectoryCommand::Init { dir },
        } => directory::server::init(&dir),
        Command::Directory {
            command: DirectoryCommand::Run(args),
        } => directory::server::run(&args).map_err(anyhow_text),
        Command::Directory {
            command: DirectoryCommand::Info { args, json },
        } => lethe_nodes::ops::info::directory(&args, json),
        Command::Directory {
            command: DirectoryCommand::CheckConfig(args),
        } => lethe_nodes::ops::check::directory(&args),
        Command::Directory {
            command: DirectoryCommand::SystemdUnit(args),
        } => lethe_nodes::ops::systemd::print(lethe_nodes::ops::systemd::Role::Directory, &args),
        Command::Client { command } => match command {
            ClientCommand::Init(args) => lethe_nodes::client::cli::init(&args),
            ClientCommand::Send(args) => lethe_nodes::client::cli::send(&args),
            ClientCommand::Receive(args) => lethe_nodes::client::cli::receive(&args),
            ClientCommand::Socks5(args) => lethe_nodes::socks::cli::socks5(&args),
        },
        Command::Provider {
            command: ProviderCommand::Run(args),
        } => lethe_nodes::socks::cli::provider(&args),
        Command::Sink { listen, out } => {
            lethe_nodes::sink::run(listen, out).map_err(|e| e.to_string())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn verify_cli() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
