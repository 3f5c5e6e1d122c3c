//! `lethe <role> info`: what a node is, from its files, read only: identity, Sphinx keys
//! (rotation id, expiry), addresses, config path, version and commit, the SIMD paths this host
//! would run, and whether the node runs. `--json` for machines (one object); otherwise one
//! `name: value` line per field.

use std::path::Path;

use serde_json::Value;

use super::{
    gateway_live_keys, live_key_json, mixnode_live_keys, running_pid, GIT_COMMIT, VERSION,
};
use crate::credential_files::read_issuer_key;
use crate::directory::server::{DirectoryRunArgs, IDENTITY_FILE};
use crate::directory::store::DB_FILE;
use crate::gateway::config::Config as GatewayConfig;
use crate::gateway::registration;
use crate::issuer::IssuerRunArgs;
use crate::keyfile;
use crate::mixnode::config::Config as MixnodeConfig;
use crate::node::rotation::now_ms;
use crate::node::{resolve, CONFIG_FILE};

/// Fields in the order they are printed.
type Fields = Vec<(&'static str, Value)>;

/// The fields every role shows first.
fn common(role: &str) -> Fields {
    vec![
        ("role", role.into()),
        ("version", VERSION.into()),
        ("commit", GIT_COMMIT.into()),
    ]
}

/// The fields every role shows last: what this host's CPU would run.
fn simd(fields: &mut Fields) {
    fields.push((
        "simd_x25519",
        lethe_crypto::sphinx::batch::dh_path_name().into(),
    ));
    fields.push(("simd_symmetric", lethe_crypto::simd::path_name().into()));
}

/// The order of a Sphinx key's fields on its `sphinx_key:` line.
const OBJECT_ORDER: [&str; 9] = [
    "slot",
    "rotation_id",
    "public_key",
    "rotates_at",
    "rotates_in_s",
    "expires_at",
    "expires_in_s",
    "file",
    "note",
];

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        // Known keys first, in reading order (a JSON map sorts them), then any others.
        Value::Object(map) => {
            let rank = |k: &str| {
                OBJECT_ORDER
                    .iter()
                    .position(|o| *o == k)
                    .unwrap_or(usize::MAX)
            };
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by_key(|(k, _)| rank(k));
            entries
                .iter()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect::<Vec<_>>()
                .join(" ")
        }
        other => other.to_string(),
    }
}

fn print(fields: Fields, json: bool) -> Result<(), String> {
    if json {
        let object: serde_json::Map<String, Value> = fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let text = serde_json::to_string_pretty(&Value::Object(object))
            .map_err(|e| format!("json: {e}"))?;
        println!("{text}");
        return Ok(());
    }
    for (name, value) in &fields {
        match value {
            // One line per element (Sphinx keys), each named like the field.
            Value::Array(items) => {
                for item in items {
                    println!("{name}: {}", text(item));
                }
            }
            other => println!("{name}: {}", text(other)),
        }
    }
    Ok(())
}

fn public_hex(path: &Path) -> Value {
    keyfile::read_public(path)
        .map(|k| Value::from(keyfile::hex(&k)))
        .unwrap_or_else(|e| Value::from(format!("unreadable: {e}")))
}

fn pid_value(pid: Option<u32>) -> Value {
    pid.map_or(Value::Null, Value::from)
}

/// `lethe mixnode info`: with `run`'s flags, the values `run` would use.
pub fn mixnode(
    dir: &Path,
    overrides: &crate::mixnode::RunOverrides,
    json: bool,
) -> Result<(), String> {
    let mut config = MixnodeConfig::load(dir)?;
    overrides.apply(&mut config);
    let now = now_ms();
    let keys = mixnode_live_keys(dir, &config.keys, now)?;
    let announce = &overrides.announce;
    let mut fields = common("mixnode");
    fields.extend([
        ("dir", dir.display().to_string().into()),
        ("config", dir.join(CONFIG_FILE).display().to_string().into()),
        ("running_pid", pid_value(running_pid(dir))),
        (
            "identity",
            public_hex(&resolve(dir, &config.keys.identity).with_extension("pub")),
        ),
        (
            "sphinx_key",
            Value::Array(keys.iter().map(|k| live_key_json(k, now)).collect()),
        ),
        (
            "rotation_interval_s",
            config.keys.rotation_interval_s.into(),
        ),
        ("rotation_overlap_s", config.keys.rotation_overlap_s.into()),
        (
            "listen_address",
            config.mixnode.listen_address.to_string().into(),
        ),
        (
            "metrics_address",
            config.mixnode.metrics_address.to_string().into(),
        ),
        (
            "announce_address",
            announce
                .announce
                .map_or(Value::Null, |a| a.to_string().into()),
        ),
        ("directory", urls_json(&announce.directory)),
        (
            "replay_data_dir",
            resolve(dir, &config.replay.data_dir)
                .display()
                .to_string()
                .into(),
        ),
    ]);
    simd(&mut fields);
    print(fields, json)
}

/// `lethe gateway info`: with `run`'s flags, the values `run` would use; the client URL is the
/// one the gateway registers (its descriptor's).
pub fn gateway(
    dir: &Path,
    overrides: &crate::gateway::RunOverrides,
    json: bool,
) -> Result<(), String> {
    let mut config = GatewayConfig::load(dir)?;
    overrides.apply(&mut config);
    let now = now_ms();
    let g = &config.gateway;
    let identity_path = resolve(dir, &config.keys.identity).with_extension("pub");
    let keys = gateway_live_keys(dir, &config.keys);
    let mix_address = g
        .announce_address
        .unwrap_or_else(|| registration::dialable(g.listen_address));
    let descriptor = registration::descriptor(&registration::DescriptorParts {
        identity: keyfile::read_public(&identity_path).unwrap_or_default(),
        sphinx_key: [0; 32],
        rotation_id: config.keys.primary_rotation_id,
        mix_address,
        client_address: g.client_address,
        metrics_address: g.metrics_address,
        client_url: g.announce_client_url.clone(),
    });
    let path = |p: &Path| Value::from(resolve(dir, p).display().to_string());
    let mut fields = common("gateway");
    fields.extend([
        ("dir", dir.display().to_string().into()),
        ("config", dir.join(CONFIG_FILE).display().to_string().into()),
        ("running_pid", pid_value(running_pid(dir))),
        ("identity", public_hex(&identity_path)),
        (
            "sphinx_key",
            Value::Array(keys.iter().map(|k| live_key_json(k, now)).collect()),
        ),
        ("listen_address", g.listen_address.to_string().into()),
        ("client_address", g.client_address.to_string().into()),
        ("metrics_address", g.metrics_address.to_string().into()),
        ("announce_address", mix_address.to_string().into()),
        (
            "client_url",
            descriptor.client_url.map_or(Value::Null, Value::from),
        ),
        ("directory", urls_json(&overrides.authority.directory)),
        ("database", path(&g.database)),
        (
            "verification_key",
            g.verification_key.as_deref().map_or(Value::Null, path),
        ),
        ("replay_data_dir", path(&config.replay.data_dir)),
    ]);
    simd(&mut fields);
    print(fields, json)
}

/// `lethe directory info`.
pub fn directory(args: &DirectoryRunArgs, json: bool) -> Result<(), String> {
    let dir = &args.dir;
    let identity = dir.join(IDENTITY_FILE).with_extension("pub");
    if !identity.exists() {
        return Err(format!(
            "{} does not exist: create it with `lethe directory init --dir {}`",
            identity.display(),
            keyfile::shell_quote(&dir.to_string_lossy())
        ));
    }
    let mut fields = common("directory");
    fields.extend([
        ("dir", dir.display().to_string().into()),
        ("running_pid", pid_value(running_pid(dir))),
        ("identity", public_hex(&identity)),
        ("listen_address", args.listen.to_string().into()),
        ("epoch_s", args.epoch_s.into()),
        ("heartbeat_timeout_s", args.heartbeat_timeout_s.into()),
        ("database", dir.join(DB_FILE).display().to_string().into()),
    ]);
    simd(&mut fields);
    print(fields, json)
}

/// `lethe issuer info`: the share's index and the SHA-256 of its verification key share and of
/// the master key (the latter equals `sha256sum verification.key` of the same `keygen`).
pub fn issuer(args: &IssuerRunArgs, json: bool) -> Result<(), String> {
    use sha2::Digest;
    let params = lethe_crypto::coconut::bandwidth::bandwidth_parameters()
        .map_err(|e| format!("coconut parameters: {e}"))?;
    let key = read_issuer_key(&args.key, &params).map_err(|e| format!("{e:#}"))?;
    let sha256 = |bytes: &[u8]| keyfile::hex(&sha2::Sha256::digest(bytes));
    let mut fields = common("issuer");
    fields.extend([
        ("key", args.key.display().to_string().into()),
        ("index", key.index.into()),
        (
            "verification_key_share_sha256",
            sha256(&key.vk_share.to_bytes()).into(),
        ),
        (
            "master_verification_key_sha256",
            sha256(&key.master.to_bytes()).into(),
        ),
        ("listen_address", args.listen.to_string().into()),
        ("bandwidth_bytes", args.bandwidth.into()),
        ("validity_days", args.validity_days.into()),
    ]);
    simd(&mut fields);
    print(fields, json)
}

/// The authority URLs a node announces to: the one URL as a string (n = 1, as before), an
/// array for several, null for none.
fn urls_json(urls: &[String]) -> Value {
    match urls {
        [] => Value::Null,
        [one] => Value::from(one.clone()),
        many => Value::Array(many.iter().cloned().map(Value::from).collect()),
    }
}
