//! virtio-fs against the real virtiofsd on this host, with the tiny PVH test image (no Linux
//! guest, so it runs even on a PVM-backed /dev/kvm): the VMM's vhost-user setup at start, and a
//! clean exit of both processes. The guest side (mount, read, write) is a lab test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// virtiofsd: $HULL_VIRTIOFSD, else on PATH, else cargo's bin directory (`make setup`).
fn virtiofsd() -> PathBuf {
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

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn exit_code(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn vmm_sets_up_virtiofsd_and_both_exit_cleanly() {
    assert!(Path::new("/dev/kvm").exists(), "this test needs /dev/kvm");
    let dir = std::env::temp_dir().join(format!("hull-fs-host-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let sock = dir.join("fs.sock");
    let mut vfsd = Command::new(virtiofsd())
        .arg(format!("--socket-path={}", sock.display()))
        .arg(format!("--shared-dir={}", share.display()))
        .args(["--sandbox=none", "--cache=never", "--log-level=error"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the virtiofsd socket", Duration::from_secs(10), || {
        sock.exists()
    });
    let image = dir.join("image");
    std::fs::write(&image, hull_vmm::test_image::pvh_halt_image()).unwrap();
    let console = dir.join("console");
    let mut vmm = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .arg("--allow-pvm")
        .args(["--kernel", &image.display().to_string()])
        .args(["--memory", "32"])
        .args(["--console", &console.display().to_string()])
        .args(["--fs", &format!("hullshare,{}", sock.display())])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The guest runs only once the VM is built, vhost-user setup included.
    wait_for("the test image", Duration::from_secs(20), || {
        std::fs::read(&console).unwrap_or_default() == [hull_vmm::test_image::MARKER]
    });
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe { libc::kill(vmm.id() as i32, libc::SIGTERM) };
    let vmm_code = exit_code(&mut vmm, Duration::from_secs(20));
    let vfsd_code = exit_code(&mut vfsd, Duration::from_secs(20));
    let mut vmm_err = String::new();
    std::io::Read::read_to_string(&mut vmm.stderr.take().unwrap(), &mut vmm_err).unwrap();
    let mut vfsd_err = String::new();
    std::io::Read::read_to_string(&mut vfsd.stderr.take().unwrap(), &mut vfsd_err).unwrap();
    assert_eq!(vmm_code, Some(4), "hull-vmm (SIGTERM): {vmm_err}");
    assert_eq!(
        vfsd_code,
        Some(0),
        "virtiofsd ends with its client: {vfsd_err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
