//! The real `hull-vmm` binary on this host with a tiny PVH test image (no Linux guest needed,
//! so it runs even on a PVM-backed /dev/kvm): control socket, SIGTERM, and socket cleanup.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Vm {
    child: Child,
    dir: PathBuf,
}

impl Vm {
    fn start(name: &str) -> Vm {
        assert!(
            Path::new("/dev/kvm").exists(),
            "these tests need /dev/kvm (this host and CI have one)"
        );
        let dir = std::env::temp_dir().join(format!("hull-ctl-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("image"), hull_vmm::test_image::pvh_halt_image()).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
            .arg("--allow-pvm")
            .args(["--kernel", &dir.join("image").display().to_string()])
            .args(["--memory", "32", "--vcpus", "2"])
            .args(["--console", &dir.join("console").display().to_string()])
            .args(["--control", &dir.join("ctl.sock").display().to_string()])
            .args(["--vsock", &format!("3,{}", dir.join("v.sock").display())])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let vm = Vm { child, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read(vm.dir.join("console")).unwrap_or_default()
            != [hull_vmm::test_image::MARKER]
        {
            assert!(Instant::now() < deadline, "the test image never ran");
            std::thread::sleep(Duration::from_millis(10));
        }
        vm
    }

    fn connect(&self) -> UnixStream {
        UnixStream::connect(self.dir.join("ctl.sock")).unwrap()
    }

    fn ask(&self, s: &UnixStream, cmd: &str) -> Value {
        writeln!(&*s, r#"{{"v":1,"cmd":"{cmd}"}}"#).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    fn wait(mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let code = status.code().unwrap();
                assert!(
                    !self.dir.join("ctl.sock").exists(),
                    "control socket left behind"
                );
                assert!(
                    !self.dir.join("v.sock").exists(),
                    "vsock socket left behind"
                );
                std::fs::remove_dir_all(&self.dir).unwrap();
                return code;
            }
            assert!(Instant::now() < deadline, "the VMM did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

#[test]
fn control_socket_then_sigterm() {
    let vm = Vm::start("sigterm");
    let s = vm.connect();
    let stats = vm.ask(&s, "stats");
    assert_eq!(stats["ok"], true, "{stats}");
    assert_eq!(stats["stats"]["vcpus"], 2);
    assert_eq!(stats["stats"]["memory"]["guest_mib"], 32);
    assert!(stats["stats"]["memory"]["vmm_rss_kib"].as_u64().unwrap() > 0);
    assert_eq!(vm.ask(&s, "pause")["ok"], true);
    assert_eq!(vm.ask(&s, "stats")["stats"]["paused"], true);
    assert_eq!(vm.ask(&s, "resume")["ok"], true);
    assert_eq!(vm.ask(&s, "stats")["stats"]["paused"], false);
    let bad = vm.ask(&s, "explode");
    assert_eq!(bad["ok"], false);
    let waiter = vm.connect();
    writeln!(&waiter, r#"{{"v":1,"cmd":"wait-exit"}}"#).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    let mut line = String::new();
    BufReader::new(&waiter).read_line(&mut line).unwrap();
    let exit: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(exit["exit"]["status"], hull_vmm::exit::EXIT_STOPPED);
    assert_eq!(vm.wait(), hull_vmm::exit::EXIT_STOPPED);
}

#[test]
fn shutdown_command_stops_the_vm() {
    let vm = Vm::start("shutdown");
    let s = vm.connect();
    assert_eq!(vm.ask(&s, "shutdown")["ok"], true);
    assert_eq!(vm.wait(), hull_vmm::exit::EXIT_STOPPED);
}
