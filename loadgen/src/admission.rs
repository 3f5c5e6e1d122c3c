//! Before a `--target` run without credentials: a gateway that requires bandwidth credentials
//! would refuse every packet (`NO_BANDWIDTH`), so the run would lose everything. loadgen asks
//! the gateways first (`GatewayNetwork::gateways_requiring_credentials`, the probe `lethe
//! client init` uses) and stops before sending, with the command to run instead.

use lethe_nodes::keyfile::shell_quote;

/// The flags to add when the directory is not a local `lethe testnet`'s (whose real values
/// `lethe_nodes::testnet::credential_flags_for` gives).
const FLAGS_PLACEHOLDER: &str =
    "--issuers URL,URL,... --threshold T --verification-key PATH/verification.key";

/// The refusal: which gateways require credentials, and the user's command with the flags
/// that make loadgen obtain them. `args`: loadgen's command line as invoked (argv).
pub fn credentials_required_error(
    requiring: &[(String, String)],
    directory_url: &str,
    args: &[String],
) -> String {
    let gateways: Vec<String> = requiring
        .iter()
        .map(|(name, url)| format!("{name} ({url})"))
        .collect();
    let command: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    let flags = lethe_nodes::testnet::credential_flags_for(directory_url)
        .unwrap_or_else(|| FLAGS_PLACEHOLDER.to_string());
    format!(
        "gateway(s) {} require bandwidth credentials and none were given: every packet would \
         be refused (NO_BANDWIDTH). loadgen obtains them itself from the network's credential \
         issuers (enough for each sender's share of the run, before it starts); run again \
         with:\n\n  {} \\\n      {flags}\n\n(`lethe testnet up` prints these values; `lethe \
         testnet env` gives them as shell variables.) To run anyway and measure the refusals, \
         add --without-credentials. Nothing was sent.",
        gateways.join(", "),
        command.join(" "),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_gateways_and_repeats_the_command_with_the_flags() {
        let args: Vec<String> = ["loadgen", "--target", "http://127.0.0.1:9", "--rate", "1 0"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let requiring = vec![("gw-1".to_string(), "ws://127.0.0.1:8".to_string())];
        let text = credentials_required_error(&requiring, "http://127.0.0.1:9", &args);
        assert!(text.contains("gw-1 (ws://127.0.0.1:8)"), "{text}");
        assert!(
            text.contains("loadgen --target http://127.0.0.1:9 --rate '1 0' \\"),
            "{text}"
        );
        assert!(text.contains(FLAGS_PLACEHOLDER), "{text}");
        assert!(text.contains("--without-credentials"), "{text}");
    }
}
