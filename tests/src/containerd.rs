//! A test's private containerd: starting and stopping it with `tests/lab/containerd.sh`, and
//! `ctr` calls bounded in time, as the lab and host test crates drive it.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::repo_root;

/// Runs `tests/lab/containerd.sh ACTION` for the containerd whose state is `ctrd_dir`
/// (`HULL_CTRD_DIR`), with `env` added (`HULL_SHIM_DIR`, `HULL_CONFIG`, ...); its output.
pub fn containerd_sh(action: &str, ctrd_dir: &Path, env: &[(&str, &OsStr)]) -> Output {
    Command::new(repo_root().join("tests/lab/containerd.sh"))
        .arg(action)
        .env("HULL_CTRD_DIR", ctrd_dir)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run tests/lab/containerd.sh {action}: {e}"))
}

/// Stops the containerd whose state is `ctrd_dir`, if it runs; errors are ignored (this runs
/// at exit and before a fresh start).
pub fn stop_containerd(ctrd_dir: &Path) {
    let _ = Command::new(repo_root().join("tests/lab/containerd.sh"))
        .arg("stop")
        .env("HULL_CTRD_DIR", ctrd_dir)
        .status();
}

/// `timeout SECS ctr GLOBAL... ARGS...` (`GLOBAL`: the address, a namespace), with `input`
/// on its stdin (or none); its output.
pub fn ctr(timeout_secs: u32, global: &[&str], args: &[&str], input: Option<&[u8]>) -> Output {
    let mut child = Command::new("timeout")
        .arg(timeout_secs.to_string())
        .arg("ctr")
        .args(global)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ctr");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}
