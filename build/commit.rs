//! Build script shared by Hull's binary crates: sets `HULL_COMMIT` to the git
//! commit being built (or "unknown" outside a git checkout), for `--version`.
//!
//! Cargo reruns it only when the checked-out commit moves: it watches the
//! `HEAD` file and the branch ref `HEAD` names (plus `packed-refs`), and only
//! paths that exist, since a missing watched path would rerun every build.
//! `HULL_COMMIT` in the environment (a build from a tarball) wins over git.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// A `git rev-parse --git-path` answer, absolute (it may be relative to this directory).
fn git_path(name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(git(&["rev-parse", "--git-path", name])?);
    let path = if path.is_absolute() {
        path
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    path.exists().then_some(path)
}

fn watch(path: &Path) {
    println!("cargo:rerun-if-changed={}", path.display());
}

fn main() {
    // A release built from a tarball may name its commit in the environment.
    println!("cargo:rerun-if-env-changed=HULL_COMMIT");
    let given = std::env::var("HULL_COMMIT").ok().filter(|c| !c.is_empty());
    let commit = given
        .clone()
        .or_else(|| git(&["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=HULL_COMMIT={commit}");
    if given.is_some() || commit == "unknown" {
        // Nothing to watch: the variable above decides.
        return;
    }
    let mut paths: Vec<PathBuf> = ["HEAD", "packed-refs"]
        .iter()
        .filter_map(|name| git_path(name))
        .collect();
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        paths.extend(git_path(&branch));
    }
    for path in &paths {
        watch(path);
    }
}
