//! Helpers shared by Hull's integration and lab tests: where the guest kernel,
//! image and virtiofsd are, running a child process with a deadline, and the
//! reference VMM's command; a dev-dependency of the crates whose tests need them.

pub mod census;
pub mod containerd;
pub mod procs;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Root of the Hull checkout: `HULL_REPO_ROOT` when set (scripts/test.sh sets it), else the
/// one this crate was compiled in. The checkouts of one machine share a cargo target directory,
/// so the test binary that runs may have been compiled in another checkout (a CI clone since
/// removed); the variable names the checkout that runs it.
pub fn repo_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("HULL_REPO_ROOT").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where the lab tests find the programs they run (the shim, hull-vmm, hull-monitor):
/// `HULL_LAB_BIN_DIR` when set (scripts/test.sh sets it to the release build, what ships and
/// what `make install` installs), else `default` (the test's own build).
pub fn lab_bin_dir(default: &Path) -> PathBuf {
    std::env::var_os("HULL_LAB_BIN_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| default.to_path_buf(), PathBuf::from)
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

/// virtiofsd as the VMM's tests find it: `$HULL_VIRTIOFSD`, else on PATH, else cargo's bin
/// directory (`make setup`).
pub fn virtiofsd_on_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HULL_VIRTIOFSD") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let home = std::env::var_os("HOME").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([Path::new(&home).join(".cargo/bin")])
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
        .expect("virtiofsd not found (run 'make setup', or set HULL_VIRTIOFSD)")
}

/// The directory of the cached guest kernel build (`vmlinux`, `bzImage`, `release`).
pub fn guest_kernel_dir() -> PathBuf {
    PathBuf::from(script_output("kernel-config/build.sh", &["--path"]))
}

/// The guest kernel (`vmlinux`): `$HULL_KERNEL`, or the cached build.
pub fn guest_kernel() -> PathBuf {
    match std::env::var_os("HULL_KERNEL") {
        Some(p) => PathBuf::from(p),
        None => guest_kernel_dir().join("vmlinux"),
    }
}

/// The guest image (initramfs): `$HULL_INITRD`, or the cached build.
pub fn guest_initrd() -> PathBuf {
    match std::env::var_os("HULL_INITRD") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(script_output("rootfs/build.sh", &["--path"])),
    }
}

/// The shim's `writable_layer` setting the lab tests run with: `$HULL_TEST_WRITABLE_LAYER`
/// (`guest` or `host`), else `guest`, the shim's default. The test command runs the
/// containerd tests once with each.
pub fn writable_layer() -> &'static str {
    match std::env::var("HULL_TEST_WRITABLE_LAYER").as_deref() {
        Ok("host") => "host",
        Ok("guest") | Ok("") | Err(_) => "guest",
        Ok(other) => panic!("HULL_TEST_WRITABLE_LAYER={other:?}: guest or host"),
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
    let status = wait_or_kill(&mut child, start + deadline);
    Finished {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
        elapsed: start.elapsed(),
    }
}

/// Waits for `child` to exit until `deadline`, then kills it: its exit status, `None` when it
/// was killed.
pub fn wait_or_kill(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait().expect("wait for child") {
            Some(status) => return Some(status),
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// QEMU's microvm machine with KVM (the reference VMM, test-only): one vCPU, 256 MiB, no
/// default devices, no reboot, the serial console on stdio; the caller adds the devices, the
/// kernel and the image.
pub fn qemu_microvm() -> Command {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-M",
        "microvm,acpi=off,x-option-roms=off,rtc=off",
        "-enable-kvm",
        "-cpu",
        "host",
    ])
    .args([
        "-m",
        "256M",
        "-smp",
        "1",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
    ])
    .args(["-serial", "stdio"]);
    qemu
}
