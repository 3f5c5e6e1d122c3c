//! `lethe <role> systemd-unit`: the systemd service unit of a role, hardened. The files in
//! `dist/systemd/` are this command's output with the defaults (a test keeps them equal), so
//! there is one source.
//!
//! `run` takes every flag from a `LETHE_*` environment twin, so the unit's command line is
//! fixed and a node's settings go in `/etc/lethe/<role>.env` (`EnvironmentFile=`), or in
//! its config.toml.

use std::path::{Path, PathBuf};

use lethe_engine::runtime::memlock;

/// Where the units expect the binary.
pub const BINARY: &str = "/usr/local/bin/lethe";
/// The state directory of a role, under this, by default.
pub const STATE_ROOT: &str = "/var/lib/lethe";
/// The account the units run as by default.
pub const USER_DEFAULT: &str = "lethe";
/// Cores the mixnode and gateway units budget locked memory for (the engine needs
/// [`memlock::required_bytes`] per core; `check-config` says when the limit is short).
pub const MEMLOCK_CORES: u32 = 64;
/// Descriptors: 4,096 ingress connections per engine core, egress, gateway sessions.
pub const NOFILE_MAX: u32 = 1_048_576;
/// Seconds systemd waits after SIGTERM before SIGKILL. Mixnode and gateway: the default
/// `shutdown_grace_ms` (10 s, 2 s) then the replay snapshots (one filter of the default sizing
/// is about 1.75 GB, two of them in an overlap, written and fsynced): far more than they take on a disk that keeps
/// up, and a kill mid-snapshot loses nothing (atomic rename) but the newest filter state.
pub const STOP_TIMEOUT_ENGINE_S: u32 = 120;
/// Directory and issuer: their HTTP servers wait 10 s for requests in flight.
pub const STOP_TIMEOUT_HTTP_S: u32 = 30;

/// Flags of `lethe <role> systemd-unit`.
#[derive(clap::Args, Debug, Clone)]
pub struct UnitArgs {
    /// The node's directory (issuer: the directory holding `issuer.key`); default
    /// /var/lib/lethe/<role>.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The account the service runs as (create it: `useradd --system --home-dir /var/lib/lethe
    /// --shell /usr/sbin/nologin lethe`).
    #[arg(long, default_value = USER_DEFAULT)]
    pub user: String,
}

/// The roles that have a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Mixnode,
    Gateway,
    Directory,
    Issuer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Mixnode, Role::Gateway, Role::Directory, Role::Issuer];

    pub fn name(self) -> &'static str {
        match self {
            Role::Mixnode => "mixnode",
            Role::Gateway => "gateway",
            Role::Directory => "directory",
            Role::Issuer => "issuer",
        }
    }

    /// Engine roles run io_uring cores: locked memory and the io_uring system calls.
    fn engine(self) -> bool {
        matches!(self, Role::Mixnode | Role::Gateway)
    }

    fn description(self) -> &'static str {
        match self {
            Role::Mixnode => "Lethe mix node",
            Role::Gateway => "Lethe gateway",
            Role::Directory => "Lethe directory",
            Role::Issuer => "Lethe credential issuer",
        }
    }

    /// `lethe <role> run` with its state, as the unit starts it.
    fn exec_start(self, dir: &str) -> String {
        match self {
            Role::Issuer => format!("{BINARY} issuer run --key {dir}/issuer.key"),
            role => format!("{BINARY} {} run --dir {dir}", role.name()),
        }
    }

    /// The settings an operator usually sets, as `LETHE_*` variables for the env file.
    fn env_examples(self) -> &'static str {
        match self {
            Role::Mixnode => {
                "#   LETHE_DIRECTORY=http://DIRECTORY:8080\n#   LETHE_ANNOUNCE=PUBLIC_IP:1789\n"
            }
            Role::Gateway => {
                "#   LETHE_DIRECTORY=http://DIRECTORY:8080\n#   LETHE_DIRECTORY_KEY=HEX\n\
                 #   LETHE_ANNOUNCE=PUBLIC_IP:1790\n#   LETHE_VERIFICATION_KEY=/var/lib/lethe/gateway/verification.key\n"
            }
            Role::Directory => "#   LETHE_DIRECTORY_LISTEN=0.0.0.0:8080\n",
            Role::Issuer => "#   LETHE_ISSUER_LISTEN=0.0.0.0:8090\n",
        }
    }
}

/// The default directory of `role`.
pub fn default_dir(role: Role) -> PathBuf {
    Path::new(STATE_ROOT).join(role.name())
}

/// A path as a unit may hold it unquoted: absolute, and none of whitespace, quotes,
/// backslashes or the `%` of systemd specifiers.
fn unit_path(path: &Path) -> Result<String, String> {
    let text = path.to_str().ok_or("--dir: not UTF-8")?;
    let plain = text.starts_with('/')
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"'\\%$;".contains(c));
    if !plain {
        return Err(format!(
            "--dir {text}: must be an absolute path without spaces, quotes, backslashes, % $ ;"
        ));
    }
    // ProtectHome=yes hides these from the service.
    if ["/home", "/root", "/run/user"]
        .iter()
        .any(|hidden| path.starts_with(hidden))
    {
        return Err(format!(
            "--dir {text}: the unit's ProtectHome=yes hides home directories from the node; \
             put its state under /var/lib/lethe or /srv"
        ));
    }
    Ok(text.trim_end_matches('/').to_string())
}

/// The unit of `role` running on `dir` as `user`.
pub fn unit(role: Role, dir: &Path, user: &str) -> Result<String, String> {
    let dir = unit_path(dir)?;
    if user.is_empty()
        || !user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
    {
        return Err(format!("--user {user:?}: a plain account name, e.g. lethe"));
    }
    let name = role.name();
    let mut out = format!(
        "# {description}: generated by `lethe {name} systemd-unit`; dist/systemd/ holds this\n\
         # output with the defaults. Install: README, \"Running under systemd\".\n\
         [Unit]\n\
         Description={description}\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         # A node that keeps failing (a config error exits 1 at once) stops being restarted.\n\
         StartLimitIntervalSec=600\n\
         StartLimitBurst=10\n\
         \n\
         [Service]\n\
         Type=exec\n\
         User={user}\n\
         Group={user}\n\
         # Flags of `lethe {name} run` as LETHE_* variables, one per line, e.g.\n\
         {examples}\
         EnvironmentFile=-/etc/lethe/{name}.env\n\
         ExecStart={exec}\n\
         # Any failure restarts it: a config error (exit 1) and an engine core's panic (exit 70,\n\
         # after saving the replay filters) alike.\n\
         Restart=on-failure\n\
         RestartSec=5s\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec={stop}\n",
        description = role.description(),
        examples = role.env_examples(),
        exec = role.exec_start(&dir),
        stop = if role.engine() {
            STOP_TIMEOUT_ENGINE_S
        } else {
            STOP_TIMEOUT_HTTP_S
        },
    );
    if role.engine() {
        let io_memory_bytes = io_memory_default()?;
        let mib = memlock::required_bytes(MEMLOCK_CORES, io_memory_bytes).div_ceil(1 << 20);
        out.push_str(&format!(
            "# io_uring: {MEMLOCK_CORES} cores x (512 KiB + io_memory_bytes {io_memory_bytes}); \
             `check-config` says if it is short.\n\
             LimitMEMLOCK={mib}M\n"
        ));
    }
    out.push_str(&format!(
        "LimitNOFILE={NOFILE_MAX}\n\
         UMask=0077\n\
         # Hardening: the node reads its directory and writes nothing else.\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ReadWritePaths={dir}\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectKernelLogs=yes\n\
         ProtectControlGroups=yes\n\
         ProtectClock=yes\n\
         ProtectHostname=yes\n\
         RestrictNamespaces=yes\n\
         RestrictRealtime=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         MemoryDenyWriteExecute=yes\n\
         CapabilityBoundingSet=\n\
         AmbientCapabilities=\n\
         RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n\
         SystemCallArchitectures=native\n"
    ));
    if role.engine() {
        out.push_str(
            "# @system-service holds the io_uring calls only in recent systemd (@aio); named too.\n\
             SystemCallFilter=@system-service io_uring_setup io_uring_enter io_uring_register\n",
        );
    } else {
        out.push_str("SystemCallFilter=@system-service\n");
    }
    out.push_str(
        "SystemCallErrorNumber=EPERM\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
    );
    Ok(out)
}

/// `io_memory_bytes` as `init` writes it (the gateway's template has the same).
fn io_memory_default() -> Result<usize, String> {
    toml::from_str::<crate::mixnode::config::Config>(crate::mixnode::config::TEMPLATE)
        .map(|c| c.mixnode.io_memory_bytes)
        .map_err(|e| format!("mixnode template: {e}"))
}

/// The file name a role's unit is installed as.
pub fn file_name(role: Role) -> String {
    format!("lethe-{}.service", role.name())
}

/// `lethe <role> systemd-unit`: prints the unit.
pub fn print(role: Role, args: &UnitArgs) -> Result<(), String> {
    let dir = args.dir.clone().unwrap_or_else(|| default_dir(role));
    print!("{}", unit(role, &dir, &args.user)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each line a comment, a `[Section]` or `Key=value`, every key inside a section.
    fn parse_ini(text: &str) -> Vec<(String, String, String)> {
        let mut section = None;
        let mut entries = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(name.to_string());
                continue;
            }
            let (key, value) = line.split_once('=').expect("Key=value");
            assert!(!key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric()));
            entries.push((
                section.clone().expect("inside a section"),
                key.into(),
                value.into(),
            ));
        }
        entries
    }

    #[test]
    fn units_parse_and_hold_what_each_role_needs() {
        for role in Role::ALL {
            let text = unit(role, &default_dir(role), "lethe").unwrap();
            let entries = parse_ini(&text);
            let get = |key: &str| {
                entries
                    .iter()
                    .find(|(s, k, _)| s == "Service" && k == key)
                    .map(|(_, _, v)| v.as_str())
            };
            assert!(get("ExecStart").unwrap().starts_with(BINARY));
            assert_eq!(get("Restart"), Some("on-failure"));
            assert_eq!(get("ProtectSystem"), Some("strict"));
            assert_eq!(get("User"), Some("lethe"));
            let filter = get("SystemCallFilter").unwrap();
            assert_eq!(role.engine(), filter.contains("io_uring_enter"), "{role:?}");
            assert_eq!(role.engine(), get("LimitMEMLOCK").is_some(), "{role:?}");
        }
        assert!(unit(Role::Mixnode, Path::new("relative"), "lethe").is_err());
        assert!(unit(Role::Mixnode, Path::new("/var/lib/a b"), "lethe").is_err());
        assert!(unit(Role::Mixnode, Path::new("/var/lib/%h"), "lethe").is_err());
        assert!(unit(Role::Mixnode, Path::new("/home/op/mix"), "lethe").is_err());
        assert!(unit(Role::Mixnode, Path::new("/var/lib/x"), "a b").is_err());
    }

    #[test]
    fn memlock_budget_covers_the_default_io_memory_on_many_cores() {
        let text = unit(Role::Gateway, &default_dir(Role::Gateway), "lethe").unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("LimitMEMLOCK="))
            .unwrap();
        let mib: u64 = line["LimitMEMLOCK=".len()..line.len() - 1].parse().unwrap();
        let need = memlock::required_bytes(MEMLOCK_CORES, io_memory_default().unwrap());
        assert!(mib << 20 >= need);
    }
}
