//! Lab tests: boot the Hull guest kernel and initramfs with the `hull-vmm` binary. They need a
//! KVM that boots a standard kernel, so they are ignored unless run with `--ignored` (the lab
//! runner does that inside the nested lab VM).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const READY: &str = "HULL_AGENT_READY";
// Generous: the lab is 30-100x slower than hardware, and SMP guests on its single emulated CPU
// are slower still.
const BOOT_TIMEOUT: Duration = Duration::from_secs(400);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn from_script(script: &str) -> PathBuf {
    let out = Command::new(repo().join(script))
        .arg("--path")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} --path: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

fn kernel() -> PathBuf {
    std::env::var_os("HULL_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| from_script("kernel-config/build.sh").join("vmlinux"))
}

fn initrd() -> PathBuf {
    std::env::var_os("HULL_INITRD")
        .map(PathBuf::from)
        .unwrap_or_else(|| from_script("rootfs/build.sh"))
}

/// Output and exit status of one VMM run, killed after `timeout`.
pub struct Run {
    /// Serial console plus the VMM's stderr.
    pub output: String,
    /// Exit status, None when killed.
    pub code: Option<i32>,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

fn run_vmm(args: &[String], timeout: Duration) -> Run {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    let output = out.join().unwrap() + &err.join().unwrap();
    Run {
        output,
        code,
        elapsed,
    }
}

fn boot_to_ready(vcpus: u8) {
    let args: Vec<String> = vec![
        "--kernel".into(),
        kernel().display().to_string(),
        "--initrd".into(),
        initrd().display().to_string(),
        "--vcpus".into(),
        vcpus.to_string(),
        "--memory".into(),
        "256".into(),
        // Not quiet: the kernel's SMP summary shows that every vCPU came up.
        "--cmdline".into(),
        "console=ttyS0 reboot=t panic=-1".into(),
    ];
    let run = run_vmm(&args, BOOT_TIMEOUT);
    println!(
        "--- {vcpus} vCPU(s), {:?}, exit {:?}\n{}",
        run.elapsed, run.code, run.output
    );
    assert!(
        run.output.contains(READY),
        "no {READY} marker in the console output"
    );
    assert_eq!(
        run.code,
        Some(0),
        "the VMM must exit 0 when the guest reboots"
    );
    if vcpus > 1 {
        let want = format!("smp: Brought up 1 node, {vcpus} CPUs");
        assert!(
            run.output.contains(&want),
            "not every vCPU came up (no '{want}')"
        );
    }
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn boots_to_ready_with_one_vcpu() {
    boot_to_ready(1);
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn boots_to_ready_with_two_vcpus() {
    boot_to_ready(2);
}
