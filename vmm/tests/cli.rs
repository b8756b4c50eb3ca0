//! The `hull-vmm` binary's command line: help, usage errors, and clear failures for bad inputs
//! that leave nothing behind. Runs on any host (no guest boots).

use std::path::PathBuf;
use std::process::{Command, Output};

fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hull-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn help_documents_every_flag_and_exit_status() {
    let o = vmm(&["--help"]);
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--vcpus",
        "--memory",
        "--vsock",
        "--disk",
        "--fs",
        "--console",
        "--config",
        "--control",
        "EXIT STATUS",
    ] {
        assert!(text.contains(flag), "help lacks {flag}");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["--vcpus", "2"],
        &["--kernel", "k", "--vcpus", "99"],
        &["--what"],
    ] {
        let o = vmm(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).starts_with("hull-vmm: "));
        assert_eq!(
            stderr(&o).lines().count(),
            1,
            "one-line error: {}",
            stderr(&o)
        );
    }
}

#[test]
fn bad_inputs_fail_clearly_and_leave_nothing_behind() {
    let dir = scratch("inputs");
    let junk = dir.join("junk");
    std::fs::write(&junk, b"not a kernel").unwrap();
    let sock = dir.join("v.sock");
    let ctl = dir.join("ctl.sock");
    let missing = dir.join("missing");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--kernel".into(), missing.display().to_string()],
            "cannot open kernel",
        ),
        (
            vec!["--kernel".into(), junk.display().to_string()],
            "not a loadable ELF",
        ),
        (
            vec![
                "--kernel".into(),
                junk.display().to_string(),
                "--memory".into(),
                "100000000".into(),
            ],
            "memory_mib = 100000000: must be 16 to 262144",
        ),
        (
            vec![
                "--kernel".into(),
                junk.display().to_string(),
                "--memory".into(),
                "262144".into(),
            ],
            "exceeds host RAM",
        ),
    ];
    for (mut args, want) in cases {
        args.extend(["--allow-pvm".into(), "--console".into(), "none".into()]);
        args.extend(["--vsock".into(), format!("3,{}", sock.display())]);
        args.extend(["--control".into(), ctl.display().to_string()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = vmm(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
        assert!(!sock.exists() && !ctl.exists(), "sockets left behind");
    }
    // A socket path that already exists is refused and kept as it was.
    std::fs::write(&sock, b"").unwrap();
    let o = vmm(&[
        "--allow-pvm",
        "--kernel",
        &junk.display().to_string(),
        "--vsock",
        &format!("3,{}", sock.display()),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert!(sock.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_virtiofsd_fails_clearly_and_leaves_nothing_behind() {
    let dir = scratch("fs");
    let kernel = dir.join("image");
    std::fs::write(&kernel, hull_vmm::test_image::pvh_halt_image()).unwrap();
    let fs_sock = dir.join("fs.sock");
    let (sock, ctl) = (dir.join("v.sock"), dir.join("ctl.sock"));
    let o = vmm(&[
        "--allow-pvm",
        "--kernel",
        &kernel.display().to_string(),
        "--fs",
        &format!("hullshare,{}", fs_sock.display()),
        "--vsock",
        &format!("3,{}", sock.display()),
        "--control",
        &ctl.display().to_string(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&fs_sock.display().to_string()), "{err}");
    assert!(err.contains("start virtiofsd"), "{err}");
    assert!(!sock.exists() && !ctl.exists(), "sockets left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pvm_host_fails_fast_without_override() {
    let o = vmm(&["--kernel", "/nonexistent"]);
    if std::path::Path::new(hull_vmm::builder::PVM_MARKER).exists() {
        assert_eq!(o.status.code(), Some(1));
        assert!(stderr(&o).contains("PVM-backed"), "{}", stderr(&o));
    } else {
        // Not a PVM host: the VMM goes on and trips over the missing kernel instead.
        assert_eq!(o.status.code(), Some(2));
        assert!(stderr(&o).contains("cannot open kernel"), "{}", stderr(&o));
    }
}

#[test]
fn bad_initramfs_fails_clearly() {
    let dir = scratch("initrd");
    let kernel = dir.join("image");
    std::fs::write(&kernel, hull_vmm::test_image::pvh_halt_image()).unwrap();
    let junk = dir.join("junk");
    std::fs::write(&junk, b"not a cpio archive").unwrap();
    let sock = dir.join("v.sock");
    for (initrd, want) in [
        (dir.join("missing"), "cannot read initramfs"),
        (junk, "neither a cpio"),
    ] {
        let o = vmm(&[
            "--allow-pvm",
            "--kernel",
            &kernel.display().to_string(),
            "--initrd",
            &initrd.display().to_string(),
            "--vsock",
            &format!("3,{}", sock.display()),
        ]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
        assert!(!sock.exists(), "socket left behind");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `"debug": true` in the VM config (what the shim writes for `debug = true`)
/// and `--debug` turn on hull-vmm's debug lines; without them there are none.
#[test]
fn debug_in_the_config_turns_on_debug_logs() {
    let dir = scratch("debug");
    let junk = dir.join("junk");
    std::fs::write(&junk, b"not a kernel").unwrap();
    let config = dir.join("vm.json");
    let mut vm = hull_protocol::vm::VmConfig::new(&junk);
    vm.console = hull_protocol::vm::Console::None;
    vm.allow_pvm = true;
    for (debug, want) in [(false, false), (true, true)] {
        vm.debug = debug;
        std::fs::write(&config, vm.to_json()).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
            .args(["--config", &config.display().to_string()])
            .env_remove("HULL_LOG")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert_eq!(
            stderr(&o).contains("hull-vmm debug logging on"),
            want,
            "debug = {debug}: {}",
            stderr(&o)
        );
    }
    let o = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .args(["--debug", "--allow-pvm", "--console", "none", "--kernel"])
        .arg(&junk)
        .env_remove("HULL_LOG")
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("hull-vmm debug logging on"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
