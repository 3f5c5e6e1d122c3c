//! Records the git commit the nodes were built from (`LETHE_GIT_COMMIT`, "unknown" outside a
//! git checkout or without git): `lethe_build_info` on every role's /metrics names it, so a
//! scrape says which code is running, and loadgen's reports name it too (same workspace).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn main() {
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=LETHE_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (branch switch), the branch's ref (commit) and
    // packed-refs (refs packed by gc). Without these the commit would be that of the first
    // build forever. Only files that exist: cargo reruns the script on every build for a
    // missing one.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let git_dir = PathBuf::from(git_dir);
        let mut watched = vec![git_dir.join("HEAD"), git_dir.join("packed-refs")];
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(git_dir.join(reference));
        }
        for path in watched.iter().filter(|p| p.is_file()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
