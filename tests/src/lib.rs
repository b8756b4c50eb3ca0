//! Helpers shared by Hull's integration and lab tests: where the guest kernel,
//! image and virtiofsd are, and running a child process with a deadline; a
//! dev-dependency of the crates whose tests need them.

pub mod census;
pub mod containerd;
pub mod procs;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Root of the Hull checkout.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Runs `script` (relative to the checkout) with `args`; its standard output, trimmed.
pub fn script_output(script: &str, args: &[&str]) -> String {
    let out = Command::new(repo_root().join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The virtiofsd binary: cargo's, then the usual install paths.
pub fn virtiofsd() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    [
        PathBuf::from(home).join(".cargo/bin/virtiofsd"),
        "/usr/local/bin/virtiofsd".into(),
        "/usr/libexec/virtiofsd".into(),
    ]
    .into_iter()
    .find(|p| p.is_file())
    .expect("no virtiofsd: cargo install virtiofsd (make setup)")
}

/// The guest kernel (`vmlinux`): `$HULL_KERNEL`, or the cached build.
pub fn guest_kernel() -> PathBuf {
    match std::env::var_os("HULL_KERNEL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(script_output("kernel-config/build.sh", &["--path"])).join("vmlinux"),
    }
}

/// The guest image (initramfs): `$HULL_INITRD`, or the cached build.
pub fn guest_initrd() -> PathBuf {
    match std::env::var_os("HULL_INITRD") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(script_output("rootfs/build.sh", &["--path"])),
    }
}

/// What a finished (or killed) child left behind.
#[derive(Debug)]
pub struct Finished {
    /// Exit status; `None` when the deadline passed and the child was killed.
    pub status: Option<ExitStatus>,
    /// Standard output and standard error, merged in arrival order per stream.
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `cmd` to completion or until `deadline` passes, then kills it.
pub fn run_with_deadline(cmd: &mut Command, deadline: Duration) -> Finished {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let status = loop {
        match child.try_wait().expect("wait for child") {
            Some(status) => break Some(status),
            None if start.elapsed() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    Finished {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
        elapsed: start.elapsed(),
    }
}
