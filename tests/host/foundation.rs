//! Host-tier checks of the foundation scripts: each failure a user can hit
//! (PVM host, missing kernel build, a hung lab) gives one clear line, not a hang.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use hull_tests::{repo_root, run_with_deadline};

fn script(path: &str) -> Command {
    Command::new(repo_root().join(path))
}

#[test]
fn kvm_check_names_the_case_in_one_line() {
    let run = run_with_deadline(&mut script("scripts/kvm-check.sh"), Duration::from_secs(10));
    let status = run.status.expect("kvm-check finished");
    let out = run.stdout.trim();
    assert_eq!(out.lines().count(), 1, "one line: {out:?}");
    assert!(out.starts_with("kvm: "), "{out}");
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    if pvm {
        assert_eq!(status.code(), Some(3), "a PVM host needs the lab");
        assert!(out.contains("PVM"), "{out}");
    } else if !std::path::Path::new("/dev/kvm").exists() {
        assert_eq!(status.code(), Some(3));
        assert!(out.contains("no /dev/kvm"), "{out}");
    }
}

#[test]
fn missing_kernel_build_is_one_clear_line() {
    let empty = std::env::temp_dir().join(format!("hull-empty-cache-{}", std::process::id()));
    let run = run_with_deadline(
        script("kernel-config/build.sh")
            .arg("--path")
            .env("HULL_CACHE", &empty),
        Duration::from_secs(10),
    );
    assert_eq!(run.status.and_then(|s| s.code()), Some(1));
    let err = run.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("not built") && err.contains("make kernel"),
        "{err}"
    );
    assert!(!empty.exists(), "--path creates nothing");
}

#[test]
fn missing_image_is_one_clear_line() {
    let run = run_with_deadline(
        script("rootfs/build.sh").args(["--path", "--init", "/nonexistent/hull-agent"]),
        Duration::from_secs(10),
    );
    assert_eq!(run.status.and_then(|s| s.code()), Some(1));
    let err = run.stderr.trim();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("missing /nonexistent/hull-agent"), "{err}");
}

/// The lab tests below count lab processes, so they must not overlap.
static ONE_LAB_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lab_processes() -> HashSet<u32> {
    let out = Command::new("pgrep")
        .args(["-f", "/tmp/hull-lab\\."])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A command that hangs inside the lab ends at the deadline with exit 124 and
/// one line saying so, and the lab's QEMU and virtiofsd processes are gone.
#[test]
fn hung_lab_times_out_cleanly() {
    if std::env::var_os("HULL_LAB").is_some() {
        panic!("this test starts a lab; it runs on the host, not inside one");
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = lab_processes();
    let run = run_with_deadline(
        script("tests/lab/lab.sh").args(["--timeout", "12", "--", "sleep", "600"]),
        Duration::from_secs(120),
    );
    let status = run
        .status
        .expect("lab.sh itself must not hang past its deadline");
    assert_eq!(status.code(), Some(124), "stderr: {}", run.stderr);
    let err: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("lab: timed out"))
        .collect();
    assert_eq!(err.len(), 1, "one timeout line: {}", run.stderr);
    let leaked: Vec<u32> = lab_processes().difference(&before).copied().collect();
    assert!(leaked.is_empty(), "lab processes left behind: {leaked:?}");
}

/// Interrupting the lab (Ctrl-C, or a CI runner's SIGTERM) stops its QEMU and
/// virtiofsd at once, even though QEMU runs under `timeout` in its own group.
#[test]
fn interrupted_lab_leaves_nothing_behind() {
    if std::env::var_os("HULL_LAB").is_some() {
        panic!("this test starts a lab; it runs on the host, not inside one");
    }
    let _one = ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = lab_processes();
    let mut child = script("tests/lab/lab.sh")
        .args(["--timeout", "300", "--", "sleep", "600"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start lab.sh");
    std::thread::sleep(Duration::from_secs(8));
    let pid = i32::try_from(child.id()).expect("pid fits i32");
    // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for lab.sh") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "lab.sh ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(130));
    let leaked: Vec<u32> = lab_processes().difference(&before).copied().collect();
    assert!(leaked.is_empty(), "lab processes left behind: {leaked:?}");
}
