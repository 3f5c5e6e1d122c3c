//! The `lethe` binary's logs: `tracing` events written to stderr, one line each.
//!
//! stdout is kept for what a command was asked to print (`key=value` lines that `testnet up`
//! and scripts read, received messages, status); everything a running node says about itself
//! goes through `tracing` to stderr, so a log shipper can take stderr whole.
//!
//! - Text (default): `2026-12-07T08:00:00.123456Z  INFO lethe_nodes::gateway: gateway up
//!   mixnet=127.0.0.1:1789 ...` (RFC 3339 UTC timestamp, level, target = the module, message,
//!   then the structured fields). ANSI colours only when stderr is a terminal.
//! - JSON (`--log-format json`): one object per line, `timestamp`, `level`, `target`,
//!   `message` and each field at the top level (flattened: shippers index them directly).
//!
//! The filter is `info` unless `RUST_LOG` says otherwise (`tracing_subscriber::EnvFilter`
//! syntax: `warn`, `lethe_nodes::gateway=debug`, `info,lethe_nodes::client=debug`). A
//! `RUST_LOG` that does not parse is refused at start: a typo must not silently log nothing.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::filter::EnvFilter;

/// The environment variable holding the filter directives.
pub const FILTER_ENV: &str = "RUST_LOG";
/// The filter when `RUST_LOG` is unset or empty.
pub const FILTER_DEFAULT: &str = "info";

/// How each log line is written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable: timestamp, level, target, message, fields.
    #[default]
    Text,
    /// One JSON object per line: timestamp, level, target, message, fields.
    Json,
}

impl LogFormat {
    /// The flag's value (`--log-format`, `LETHE_LOG_FORMAT`).
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The format [`init`] installed: `testnet up` hands it on to the nodes it starts.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The format of this process's logs (text before [`init`]).
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

/// The filter for `directives` (the value of `RUST_LOG`, if set); [`FILTER_DEFAULT`] when
/// unset or blank. An error names the variable and what did not parse.
pub fn filter(directives: Option<&str>) -> Result<EnvFilter, String> {
    filter_or(directives, FILTER_DEFAULT)
}

/// [`filter`] with another default than [`FILTER_DEFAULT`].
fn filter_or(directives: Option<&str>, default: &str) -> Result<EnvFilter, String> {
    let text = match directives.map(str::trim) {
        None | Some("") => default,
        Some(text) => text,
    };
    EnvFilter::builder().parse(text).map_err(|e| {
        format!(
            "invalid {FILTER_ENV}={text:?}: {e} (expected e.g. `info`, `warn`, \
             `lethe_nodes::gateway=debug` or `info,lethe_nodes::client=debug`)"
        )
    })
}

/// Installs the process's subscriber: called once, first thing in `main`, for every
/// subcommand. Fails only on a `RUST_LOG` that does not parse.
pub fn init(format: LogFormat) -> Result<(), String> {
    init_with_default(format, FILTER_DEFAULT)
}

/// [`init`] for a program whose own output is not logs (loadgen): the library's events at
/// `default` (e.g. `warn`) unless `RUST_LOG` says otherwise.
pub fn init_with_default(format: LogFormat, default: &str) -> Result<(), String> {
    let directives = std::env::var(FILTER_ENV).ok();
    let filter = filter_or(directives.as_deref(), default)?;
    let filter_text = filter.to_string();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(true);
    let _ = FORMAT.set(format);
    // `try_init` fails only if a subscriber is already set (a second call): the first stays.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    tracing::debug!(
        filter = %filter_text,
        format = format.as_str(),
        x25519 = lethe_crypto::x25519::simd_path().name(),
        "logging configured"
    );
    // lethe-crypto has no logger: it keeps why it ignored LETHE_SIMD, said here like the rest.
    if let Some(reason) = lethe_crypto::x25519::simd_override_rejected() {
        tracing::warn!("{reason}");
    }
    Ok(())
}

/// A signal's name for a log field (`SIGTERM`), not its number.
pub fn signal_name(signal: i32) -> &'static str {
    signal_hook::low_level::signal_name(signal).unwrap_or("unknown signal")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name() {
        assert_eq!(signal_name(signal_hook::consts::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(signal_hook::consts::SIGINT), "SIGINT");
    }

    #[test]
    fn unset_or_blank_is_info() {
        for value in [None, Some(""), Some("  ")] {
            let f = filter(value).unwrap();
            assert_eq!(f.to_string(), FILTER_DEFAULT, "{value:?}");
        }
    }

    #[test]
    fn module_directives_parse() {
        for value in [
            "warn",
            "debug",
            "lethe_nodes::gateway=debug",
            "info,lethe=trace",
        ] {
            assert!(filter(Some(value)).is_ok(), "{value}");
        }
    }

    #[test]
    fn nonsense_is_an_error_naming_the_variable() {
        let e = filter(Some("lethe_nodes=loud")).unwrap_err();
        assert!(e.contains("invalid RUST_LOG"), "{e}");
        assert!(e.contains("lethe_nodes=loud"), "{e}");
    }
}
