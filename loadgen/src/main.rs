//! `loadgen`: drives a Lethe network with an open-loop packet schedule.
//!
//! Not built yet: the embedded network it drives does not exist. It says so rather than pretend.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "loadgen {}: not available yet (needs the network of issue 'Directory, gateways, Loopix clients').",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
