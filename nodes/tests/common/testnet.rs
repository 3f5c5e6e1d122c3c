//! A whole network under test: `lethe testnet up` (directory, mixnodes, gateways, issuers and
//! a provider unless told otherwise), its state file, `lethe testnet down` when dropped, and
//! `lethe client init` against it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::LETHE;

/// `lethe ARGS`, run to completion (stdin closed).
pub fn lethe(args: &[&str]) -> Output {
    Command::new(LETHE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub struct Testnet {
    pub dir: PathBuf,
    pub state: serde_json::Value,
}

impl Testnet {
    /// `lethe testnet up --dir DIR EXTRA` in a fresh `dir` (4 authorities, 5-s epochs unless
    /// EXTRA says otherwise); must succeed.
    pub fn up(dir: &Path, extra: &[&str]) -> Testnet {
        Testnet::up_env(dir, extra, &[])
    }

    /// [`Testnet::up`] with `env` set for the testnet and every node it starts (for settings
    /// only an environment variable reaches, e.g. `LETHE_ROTATION_INTERVAL_S`).
    pub fn up_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Testnet {
        let _ = std::fs::remove_dir_all(dir);
        let mut args = vec!["testnet", "up", "--dir", dir.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = Command::new(LETHE)
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "testnet up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(dir.join("testnet.json")).unwrap();
        Testnet {
            dir: dir.to_path_buf(),
            state: serde_json::from_str(&text).unwrap(),
        }
    }

    /// The authorities' URLs and keys, each a comma-separated list (as `--directory` and
    /// `--directory-key` take them).
    pub fn directory(&self) -> (String, String) {
        (
            self.state["directory_url"].as_str().unwrap().to_string(),
            self.state["directory_key"].as_str().unwrap().to_string(),
        )
    }

    /// `client init` flags that obtain a bandwidth credential from the testnet's issuers.
    pub fn credential_args(&self) -> Vec<String> {
        let issuers: Vec<&str> = self.state["issuers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_str().unwrap())
            .collect();
        vec![
            "--issuers".into(),
            issuers.join(","),
            "--threshold".into(),
            self.state["threshold"].to_string(),
            "--verification-key".into(),
            self.state["verification_key"].as_str().unwrap().to_string(),
        ]
    }

    pub fn node(&self, name: &str) -> &serde_json::Value {
        self.state["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap()
    }

    /// A value a node printed at start (`listen`, `metrics`, `identity`, ...).
    pub fn info(&self, name: &str, key: &str) -> String {
        self.node(name)["info"][key].as_str().unwrap().to_string()
    }

    /// `client init` on `gateway` with a bandwidth credential from the testnet's issuers.
    pub fn init_client_on(&self, dir: &Path, gateway: &str) -> String {
        let credential = self.credential_args();
        let mut extra = vec!["--gateway", gateway];
        extra.extend(credential.iter().map(String::as_str));
        self.init_client(dir, &extra)
    }

    /// `lethe client init --dir DIR` against this testnet's directory, with `extra` flags
    /// (a gateway, credential flags); must succeed. Returns the client's address.
    pub fn init_client(&self, dir: &Path, extra: &[&str]) -> String {
        let (url, key) = self.directory();
        let mut args = vec![
            "client",
            "init",
            "--dir",
            dir.to_str().unwrap(),
            "--directory",
            &url,
            "--directory-key",
            &key,
        ];
        args.extend_from_slice(extra);
        let out = lethe(&args);
        assert!(
            out.status.success(),
            "client init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(dir.join("address"))
            .unwrap()
            .trim()
            .to_string()
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        let _ = lethe(&["testnet", "down", "--dir", self.dir.to_str().unwrap()]);
    }
}
