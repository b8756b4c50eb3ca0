//! Lab tier: `ctr run --runtime io.containerd.hull.v2` through a private
//! containerd (tests/lab/containerd.sh), each container in a real microVM
//! (hull-vmm + virtiofsd + hull-agent). Needs a /dev/kvm that boots a standard
//! guest kernel: run it with tests/lab/lab.sh (`make test-lab`). Needs the guest
//! kernel (`make kernel`), the guest image (`make image`), `hull-vmm` built next
//! to the shim (`cargo build -p hull-vmm`) and virtiofsd. `HULL_INITRD`
//! overrides the guest image.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-hull-v2");
const HULL: &str = "io.containerd.hull.v2";
const RUNC: &str = "io.containerd.runc.v2";
const IMAGE: &str = "docker.io/library/busybox:latest";
/// Upper bound for one `ctr` command in the (30-100x slower) lab.
const CTR_TIMEOUT_SECS: u32 = 600;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .into()
}

fn script_output(script: &str, args: &[&str]) -> String {
    let out = Command::new(workspace().join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn virtiofsd() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let candidates = [
        PathBuf::from(home).join(".cargo/bin/virtiofsd"),
        "/usr/local/bin/virtiofsd".into(),
        "/usr/libexec/virtiofsd".into(),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .expect("no virtiofsd: cargo install virtiofsd (make setup)")
}

/// A private containerd whose shim config points at this checkout's builds.
struct Containerd {
    address: String,
    dir: PathBuf,
}

impl Containerd {
    fn start() -> Self {
        let bin_dir = Path::new(SHIM).parent().unwrap();
        let vmm = bin_dir.join("hull-vmm");
        assert!(vmm.is_file(), "no {vmm:?}: cargo build -p hull-vmm");
        let kernel = PathBuf::from(script_output("kernel-config/build.sh", &["--path"]));
        let initrd = std::env::var("HULL_INITRD")
            .unwrap_or_else(|_| script_output("rootfs/build.sh", &["--path"]));
        let dir = std::env::temp_dir().join("hull-lab-shim");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("hull.toml");
        std::fs::write(
            &config,
            format!(
                "kernel = {:?}\ninitrd = {initrd:?}\nhull_vmm = {vmm:?}\nvirtiofsd = {:?}\n\
                 memory_mib = 256\ndebug = true\n",
                kernel.join("vmlinux"),
                virtiofsd()
            ),
        )
        .unwrap();
        let out = Command::new(workspace().join("tests/lab/containerd.sh"))
            .arg("start")
            .env("HULL_SHIM_DIR", bin_dir)
            .env("HULL_CONFIG", &config)
            .env("HULL_CTRD_DIR", dir.join("containerd"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "containerd.sh start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let address = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Self { address, dir }
    }

    /// `ctr run --rm` of busybox with `runtime`; returns the output and the time taken.
    fn run(&self, runtime: &str, id: &str, args: &[&str]) -> (Output, Duration) {
        let started = Instant::now();
        let out = Command::new("timeout")
            .arg(CTR_TIMEOUT_SECS.to_string())
            .args([
                "ctr",
                "--address",
                &self.address,
                "run",
                "--rm",
                "--runtime",
            ])
            .args([runtime, IMAGE, id])
            .args(args)
            .output()
            .unwrap();
        let took = started.elapsed();
        println!(
            "ctr run {runtime} {args:?}: {} in {:.1} s\n  stdout: {}  stderr: {}",
            out.status,
            took.as_secs_f64(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out, took)
    }

    fn shim_log(&self) -> String {
        let log = self.dir.join("containerd/containerd.log");
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("sandbox=") || l.contains("hull"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = Command::new(workspace().join("tests/lab/containerd.sh"))
            .arg("stop")
            .env("HULL_CTRD_DIR", self.dir.join("containerd"))
            .status();
    }
}

/// Host processes of the pod machinery still running.
fn leftover_processes() -> Vec<String> {
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let argv0 = String::from_utf8_lossy(argv0);
        if ["hull-vmm", "virtiofsd", "containerd-shim-hull-v2"]
            .iter()
            .any(|name| argv0.ends_with(name))
        {
            left.push(format!("{} {argv0}", entry.file_name().to_string_lossy()));
        }
    }
    left
}

fn leftover_files_and_mounts() -> Vec<String> {
    let mut left: Vec<String> = std::fs::read_dir("/run/hull")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    left.extend(
        mounts
            .lines()
            .filter(|l| l.contains("/run/hull/"))
            .map(str::to_string),
    );
    left
}

/// Waits for the shim to go after the last `--rm`; returns what is left.
fn wait_until_clean() -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut left = leftover_processes();
        left.extend(leftover_files_and_mounts());
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "pending: hull-vmm has no virtio-fs device yet, so the guest cannot mount container roots; rename this file to lab_shim.rs when it lands"]
fn lab_ctr_run_in_a_microvm_and_nothing_left() {
    let release = std::fs::read_to_string(
        PathBuf::from(script_output("kernel-config/build.sh", &["--path"])).join("release"),
    )
    .expect("guest kernel release file")
    .trim()
    .to_string();
    let ctrd = Containerd::start();
    let (runc, runc_took) = ctrd.run(RUNC, "true-runc", &["true"]);
    assert!(runc.status.success(), "runc reference run");

    let (out, uname_took) = ctrd.run(HULL, "uname", &["uname", "-r"]);
    let ok = out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == release;
    if !ok {
        println!("shim log:\n{}", ctrd.shim_log());
        // Even a pod that failed to start must leave nothing behind.
        assert_eq!(
            wait_until_clean(),
            Vec::<String>::new(),
            "left after a failed run"
        );
    }
    assert!(ok, "uname -r in the microVM should print {release}");

    let (out, _) = ctrd.run(HULL, "exit7", &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "the container's exit status");

    let (hull, hull_took) = ctrd.run(HULL, "true-hull", &["true"]);
    assert!(hull.status.success());
    println!(
        "TIMING ctr run --rm true: hull {:.1} s, runc {:.1} s (first hull run {:.1} s)",
        hull_took.as_secs_f64(),
        runc_took.as_secs_f64(),
        uname_took.as_secs_f64()
    );
    assert_eq!(
        wait_until_clean(),
        Vec::<String>::new(),
        "left after the runs"
    );
}
