//! Lab tests: they need a KVM that boots a standard guest kernel (the lab's
//! nested VM, or a host with hardware KVM) and run with `--ignored`.

use std::time::Duration;

use hull_tests::{guest_initrd, guest_kernel, qemu_microvm, run_with_deadline};

/// The lab's `/dev/kvm` must come from real (emulated-hardware) AMD SVM, not PVM.
#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_kvm_is_kvm_amd_or_hardware() {
    let has = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
    assert!(!has("kvm_pvm"), "/dev/kvm is PVM-backed here: not a lab");
    assert!(
        has("kvm_amd") || has("kvm_intel"),
        "no kvm_amd/kvm_intel module loaded"
    );
    let meta = std::fs::metadata("/dev/kvm").expect("/dev/kvm exists");
    use std::os::unix::fs::FileTypeExt;
    assert!(
        meta.file_type().is_char_device(),
        "/dev/kvm is not a character device"
    );
    if std::env::var_os("HULL_LAB").is_some() {
        assert!(
            has("kvm_amd"),
            "inside the lab /dev/kvm comes from kvm-amd (nested=1)"
        );
        let nested = std::fs::read_to_string("/sys/module/kvm_amd/parameters/nested").unwrap();
        assert_eq!(nested.trim(), "1", "kvm-amd nested support is on");
    }
}

/// QEMU's microvm machine (a reference VMM, test-only) boots the Hull kernel and
/// image to the agent's ready marker, and the guest's restart ends the VM cleanly.
#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_reference_vmm_boots_hull_guest_to_ready() {
    let (kernel, initrd) = (guest_kernel(), guest_initrd());
    let run = run_with_deadline(
        qemu_microvm()
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!(
                "{} hull.selftest=ready",
                hull_protocol::vm::DEFAULT_CMDLINE
            )),
        Duration::from_secs(120),
    );
    let console = run.stdout.replace('\r', "");
    println!("console:\n{console}\nstderr:\n{}", run.stderr);
    let status = run.status.expect("guest boot did not finish within 120 s");
    let ready = console
        .lines()
        .find(|l| l.starts_with(hull_protocol::READY_MARKER))
        .expect("the agent printed its ready marker");
    assert!(
        status.success(),
        "QEMU exited with {status} after the guest restarted"
    );
    println!(
        "{ready} (VMM start to exit: {:.2} s)",
        run.elapsed.as_secs_f64()
    );
}
