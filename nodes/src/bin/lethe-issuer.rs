//! Temporary front-end for the issuer commands until they join the `lethe` binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lethe_nodes::issuer;

#[derive(Parser)]
#[command(
    name = "lethe-issuer",
    about = "Lethe credential issuer and issuance client"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate t-of-n issuer keys (trusted dealer).
    Keygen(issuer::KeygenArgs),
    /// Run one issuer.
    Run(issuer::IssuerRunArgs),
    /// Obtain a credential from t of n issuers.
    Obtain(issuer::ObtainArgs),
    /// Show a credential's bandwidth and expiry.
    Show(issuer::ShowArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Keygen(a) => issuer::keygen::run(a),
        Command::Run(a) => issuer::server::run(a),
        Command::Obtain(a) => issuer::run_obtain(a),
        Command::Show(a) => issuer::run_show(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lethe-issuer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
