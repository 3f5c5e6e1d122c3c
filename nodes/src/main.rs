//! `lethe`: one binary, one subcommand per node role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lethe_nodes::mixnode::{self, RunOverrides};

#[derive(Parser, Debug)]
#[command(name = "lethe", version, about = "Lethe: a Nym-compatible mixnet")]
struct Cli {
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
    /// Listen and record every received frame to a file (a test helper; a gateway stand-in).
    Sink {
        #[arg(long, env = "LETHE_LISTEN", default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum MixnodeCommand {
    /// Write keys and a commented config.toml into DIR (refuses to overwrite).
    Init {
        #[arg(long, env = "LETHE_DIR")]
        dir: PathBuf,
    },
    /// Run the node in DIR until SIGTERM/SIGINT.
    Run {
        #[arg(long, env = "LETHE_DIR")]
        dir: PathBuf,
        #[command(flatten)]
        overrides: RunOverrides,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version => {
            println!("lethe {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Mixnode {
            command: MixnodeCommand::Init { dir },
        } => mixnode::init(&dir),
        Command::Mixnode {
            command: MixnodeCommand::Run { dir, overrides },
        } => mixnode::run(&dir, &overrides),
        Command::Sink { listen, out } => lethe_nodes::sink::run(listen, out),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lethe: {message}");
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
