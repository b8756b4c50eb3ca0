//! virtio-fs against the real virtiofsd on this host, with the tiny PVH test image (no Linux
//! guest, so it runs even on a PVM-backed /dev/kvm): the VMM's vhost-user setup at start, and a
//! clean exit of both processes. The guest side (mount, read, write) is a lab test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hull_tests::{virtiofsd_on_path, wait_or_kill};

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The exit code of `child` within `timeout`; `None` when it had to be killed.
fn exit_code(child: &mut Child, timeout: Duration) -> Option<i32> {
    wait_or_kill(child, Instant::now() + timeout).and_then(|s| s.code())
}

#[test]
fn vmm_sets_up_virtiofsd_and_both_exit_cleanly() {
    assert!(Path::new("/dev/kvm").exists(), "this test needs /dev/kvm");
    let dir = std::env::temp_dir().join(format!("hull-fs-host-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let sock = dir.join("fs.sock");
    let mut vfsd = Command::new(virtiofsd_on_path())
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
