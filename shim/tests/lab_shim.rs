//! Lab tier: `ctr` against a private containerd (tests/lab/containerd.sh) with
//! `--runtime io.containerd.hull.v2`, each pod in a real microVM (hull-vmm +
//! virtiofsd + hull-agent on the Hull guest kernel). Needs a /dev/kvm that boots
//! a standard guest kernel: `make test-lab` runs it inside the lab when the
//! host's cannot. Needs the guest kernel (`make kernel`), the guest image
//! (`make image`; `HULL_INITRD` overrides it), `hull-vmm` built next to the
//! shim (`cargo build -p hull-vmm`) and virtiofsd.
//!
//! One containerd serves every test of this binary (importing the image costs
//! ~20 s in the lab); it is stopped when the binary exits. Every test checks
//! that nothing of its pods is left: no hull-vmm, virtiofsd or shim process, no
//! pod directory, no mount.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hull_tests::census;
use hull_tests::containerd::{
    assert_task_lifecycle, containerd_sh, ctr, ctr_events, stop_containerd,
};
use hull_tests::procs::proc_status;
use hull_tests::{
    guest_initrd, guest_kernel_dir, repo_root as workspace, script_output, virtiofsd,
};

// Hostile-guest scenarios share this binary's containerd (one image import).
#[path = "lab_shim/churn.rs"]
mod churn;
#[path = "lab_shim/faults.rs"]
mod faults;
#[path = "lab_shim/fs_conformance.rs"]
mod fs_conformance;
#[path = "lab_shim/hostile_guest.rs"]
mod hostile_guest;
#[path = "lab_shim/hostile_host.rs"]
mod hostile_host;
#[path = "lab_shim/hostile_share.rs"]
mod hostile_share;
#[path = "lab_shim/image_disk.rs"]
mod image_disk;
#[path = "lab_shim/memory_back.rs"]
mod memory_back;
#[path = "lab_shim/metrics.rs"]
mod metrics;
#[path = "lab_shim/netfilter.rs"]
mod netfilter;
#[path = "lab_shim/virtiofsd_confined.rs"]
mod virtiofsd_confined;

const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-hull-v2");
const HULL: &str = "io.containerd.hull.v2";
const RUNC: &str = "io.containerd.runc.v2";
const IMAGE: &str = "docker.io/library/busybox:latest";
/// Upper bound for one `ctr` command in the (30-100x slower) lab.
const CTR_TIMEOUT_SECS: u32 = 600;
/// Upper bound for one `ctr` command of the cleanup after a failed test.
const CLEANUP_TIMEOUT_SECS: u32 = 120;
/// Everything of this binary lives here: containerd's state, the shim's pods.
const BASE: &str = "/run/hull-lab-shim";

fn guest_release() -> String {
    std::fs::read_to_string(guest_kernel_dir().join("release"))
        .expect("guest kernel release file")
        .trim()
        .to_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The private containerd, whose shim config points at this checkout's builds.
struct Containerd {
    address: String,
}

extern "C" fn stop_at_exit() {
    stop_containerd(&Path::new(BASE).join("containerd"));
}

/// The shared containerd; tests run one at a time (`--test-threads=1` or this lock).
fn containerd() -> (&'static Containerd, std::sync::MutexGuard<'static, ()>) {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    static CTRD: OnceLock<Containerd> = OnceLock::new();
    let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    (CTRD.get_or_init(Containerd::start), guard)
}

/// Where the shim, hull-vmm and hull-monitor under test are (see `lab_bin_dir`).
fn bin_dir() -> PathBuf {
    hull_tests::lab_bin_dir(Path::new(SHIM).parent().unwrap())
}

/// Runs `tests/lab/containerd.sh ACTION` for this binary's containerd; its stdout.
fn containerd_action(action: &str) -> String {
    let bin_dir = bin_dir();
    let config = Path::new(BASE).join("hull.toml");
    let out = containerd_sh(
        action,
        &Path::new(BASE).join("containerd"),
        &[
            ("HULL_SHIM_DIR", bin_dir.as_os_str()),
            ("HULL_CONFIG", config.as_os_str()),
        ],
    );
    assert!(
        out.status.success(),
        "containerd.sh {action}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

impl Containerd {
    fn start() -> Self {
        let bin_dir = bin_dir();
        let vmm = bin_dir.join("hull-vmm");
        assert!(vmm.is_file(), "no {vmm:?}: cargo build -p hull-vmm");
        let (kernel, initrd) = (guest_kernel_dir().join("vmlinux"), guest_initrd());
        let base = Path::new(BASE);
        stop_at_exit();
        let _ = std::fs::remove_dir_all(base);
        std::fs::create_dir_all(base).unwrap();
        let config = base.join("hull.toml");
        std::fs::write(
            &config,
            format!(
                "kernel = {:?}\ninitrd = {initrd:?}\nhull_vmm = {vmm:?}\nvirtiofsd = {:?}\n\
                 run_dir = {:?}\nmemory_mib = 256\ndebug = true\n\
                 vmm_uid = {JAIL_ID}\nvmm_gid = {JAIL_ID}\nwritable_layer = {:?}\n\
                 image_cache_dir = {:?}\n{}",
                kernel,
                virtiofsd(),
                base.join("pods"),
                hull_tests::writable_layer(),
                base.join("images"),
                // The shim's bound on each agent call: its default unless
                // HULL_LAB_AGENT_TIMEOUT_SECS says otherwise (a slow lab, a diagnosis).
                std::env::var("HULL_LAB_AGENT_TIMEOUT_SECS")
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
                    .map_or_else(String::new, |s| format!("agent_timeout_secs = {s}\n")),
            ),
        )
        .unwrap();
        let address = containerd_action("start").trim().to_string();
        // SAFETY: registers a plain function with no captured state, run once at exit.
        unsafe { libc::atexit(stop_at_exit) };
        Self { address }
    }

    /// Kills containerd as a crash would (SIGKILL) and starts it again on the same state; the
    /// shims, which run in sessions of their own, live on.
    fn crash_and_restart(&self) {
        let pid_file = Path::new(BASE).join("containerd/containerd.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: kill(2) with a pid read from containerd.sh's pid file.
        let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
        assert_eq!(killed, 0, "kill containerd {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        // Gone, or a zombie its new parent has not reaped yet.
        while std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.contains(") Z "))
        {
            assert!(Instant::now() < deadline, "containerd outlived SIGKILL");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(containerd_action("start").trim(), self.address);
    }

    /// `ctr ARGS` with `input` on its stdin (or none), bounded in time.
    fn ctr_in(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        ctr(CTR_TIMEOUT_SECS, &["--address", &self.address], args, input)
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_in(args, None)
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}\nshim log:\n{}",
            text(&out.stdout),
            text(&out.stderr),
            self.shim_log()
        );
        text(&out.stdout)
    }

    /// `ctr run --rm` of busybox with `runtime`; returns the output and the time taken.
    fn run(
        &self,
        runtime: &str,
        id: &str,
        args: &[&str],
        input: Option<&[u8]>,
    ) -> (Output, Duration) {
        let started = Instant::now();
        let mut full = vec!["run", "--rm", "--runtime", runtime, IMAGE, id];
        full.extend_from_slice(args);
        let out = self.ctr_in(&full, input);
        let took = started.elapsed();
        let show = |b: &[u8]| text(&b[..b.len().min(300)]);
        println!(
            "ctr run {runtime} {args:?}: {} in {:.1} s\n  stdout: {}  stderr: {}",
            out.status,
            took.as_secs_f64(),
            show(&out.stdout),
            show(&out.stderr)
        );
        (out, took)
    }

    /// `ctr run -d` of busybox under Hull with extra `opts` before the image.
    fn run_detached(&self, id: &str, opts: &[&str], args: &[&str]) {
        let mut full = vec!["run", "-d", "--runtime", HULL];
        full.extend_from_slice(opts);
        full.extend_from_slice(&[IMAGE, id]);
        full.extend_from_slice(args);
        self.ctr_ok(&full);
    }

    /// The task's status column in `ctr task ls` ("" when absent).
    fn task_status(&self, id: &str) -> String {
        self.ctr_ok(&["task", "ls"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_string()
    }

    fn wait_status(&self, id: &str, want: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let status = self.task_status(id);
            if status == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} is {status:?}, not {want}\nshim log:\n{}",
                self.shim_log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Sends `signal` to task `id`, waits for it to stop, deletes the task and the container;
    /// every step must succeed.
    fn stop_and_remove(&self, id: &str, signal: &str) {
        self.ctr_ok(&["task", "kill", "-s", signal, id]);
        self.wait_status(id, "STOPPED", 120);
        self.ctr_ok(&["task", "delete", id]);
        self.ctr_ok(&["containers", "rm", id]);
    }

    /// Removes task and container `id`, whatever state they are in. Each step is bounded by
    /// [`CLEANUP_TIMEOUT_SECS`]: after a failure, cleanup must not outlast the test.
    fn remove(&self, id: &str) {
        for args in [
            &["task", "kill", "-s", "KILL", id][..],
            &["task", "delete", "-f", id],
            &["containers", "rm", id],
        ] {
            let _ = ctr(
                CLEANUP_TIMEOUT_SECS,
                &["--address", &self.address],
                args,
                None,
            );
        }
    }

    /// containerd's whole log (empty if it cannot be read).
    fn log(&self) -> String {
        std::fs::read_to_string(Path::new(BASE).join("containerd/containerd.log"))
            .unwrap_or_default()
    }

    fn shim_log(&self) -> String {
        let all = self.log();
        let lines: Vec<&str> = all
            .lines()
            .filter(|l| l.contains("sandbox=") || l.contains("hull"))
            .collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    }

    /// Every line of containerd's log about one pod (`sandbox=ID`).
    fn pod_log(&self, id: &str) -> String {
        let (tag, within) = (format!("sandbox={id}"), format!("sandbox={id} "));
        let all = self.log();
        let lines: Vec<&str> = all
            .lines()
            .filter(|l| l.contains(&within) || l.ends_with(&tag))
            .collect();
        lines.join("\n")
    }
}

/// Removes the named containers when a test ends, also when it fails, so
/// one failure does not leave pods behind for the next test.
struct Remove<'a>(&'a Containerd, &'a [&'a str]);

impl Drop for Remove<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for id in self.1 {
                self.0.remove(id);
            }
        }
    }
}

/// Host processes of this binary's pods (their command line names [`BASE`]): (pid, name).
fn pod_processes(names: &[&str]) -> Vec<(i32, String)> {
    hull_tests::procs::pod_processes(&[BASE], names)
}

/// uid and gid of the jailed hull-vmm in these tests (nobody/nogroup).
const JAIL_ID: u32 = 65534;

/// What the pods left: processes, pod directories, mounts.
fn leftovers() -> Vec<String> {
    census::leftovers(&[BASE], &Path::new(BASE).join("pods"), BASE)
}

/// Waits for the pods' teardown to finish; asserts nothing is left.
fn assert_clean(ctrd: &Containerd, after: &str) {
    let left = census::settled(Duration::from_secs(120), leftovers);
    assert!(
        left.is_empty(),
        "left after {after}: {left:#?}\nshim log:\n{}",
        ctrd.shim_log()
    );
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_ctr_run_kernel_exit_status_stdin_stdout_and_tty() {
    let release = guest_release();
    let (ctrd, _one) = containerd();
    let full = std::env::var("HULL_LAB_FULL").is_ok_and(|v| v == "1");

    // One run checks the guest kernel, stdin passed through intact and the exit
    // status (each Hull start costs ~40 s here).
    let line = b"a line for the microVM \xe2\x9c\x93 with bytes: \t!\n";
    let (out, first_took) = ctrd.run(
        HULL,
        "uname",
        &["sh", "-c", "uname -r; cat; exit 7"],
        Some(line),
    );
    let expected = [format!("{release}\n").as_bytes(), line].concat();
    let ok = out.status.code() == Some(7) && out.stdout == expected;
    if !ok {
        println!("shim log:\n{}", ctrd.shim_log());
        assert_clean(ctrd, "a failed run");
    }
    assert!(
        ok,
        "uname -r in the microVM should print {release}, stdin should come back intact and \
         the container's exit status 7 should be ctr's: {:?}, {}",
        out.status.code(),
        text(&out.stdout)
    );
    assert_ne!(
        release,
        text(&Command::new("uname").arg("-r").output().unwrap().stdout).trim(),
        "the guest kernel must not be the host's"
    );

    // A known stream, length and content checked on the host: 8 MiB in the
    // test command, 100 MiB with HULL_LAB_FULL=1 (about 4 lab minutes).
    let mib: usize = if full { 100 } else { 8 };
    let size = mib << 20;
    let (out, took) = ctrd.run(
        HULL,
        "bulk",
        &[
            "sh",
            "-c",
            &format!("yes 0123456789abcdef | head -c {size}"),
        ],
        None,
    );
    assert!(out.status.success());
    assert_eq!(out.stdout.len(), size, "all of stdout arrives");
    let expected: Vec<u8> = b"0123456789abcdef\n"
        .iter()
        .copied()
        .cycle()
        .take(size)
        .collect();
    assert!(out.stdout == expected, "stdout arrives unchanged");
    println!(
        "TIMING {mib} MiB stdout through ctr run: {:.1} s",
        took.as_secs_f64()
    );

    // ctr -t needs a terminal of its own: script(1) provides one.
    let tty = format!(
        "ctr --address {} run --rm -t --runtime {HULL} {IMAGE} tty \
         sh -c 'test -t 0 && test -t 1 && echo on-a-tty; exit 3'",
        ctrd.address
    );
    let out = Command::new("timeout")
        .args([
            &CTR_TIMEOUT_SECS.to_string(),
            "script",
            "-qec",
            &tty,
            "/dev/null",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    assert!(
        text(&out.stdout).contains("on-a-tty"),
        "{}\nshim log:\n{}",
        text(&out.stdout),
        ctrd.shim_log()
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));

    // The start-time comparison with runc is a figure, not a check: in the full run only.
    if full {
        let (runc, runc_took) = ctrd.run(RUNC, "true-runc", &["true"], None);
        assert!(runc.status.success(), "runc reference run");
        let (hull, hull_took) = ctrd.run(HULL, "true-hull", &["true"], None);
        assert!(hull.status.success());
        println!(
            "TIMING ctr run --rm true: hull {:.1} s, runc {:.1} s, ratio {:.2} (first hull run {:.1} s)",
            hull_took.as_secs_f64(),
            runc_took.as_secs_f64(),
            hull_took.as_secs_f64() / runc_took.as_secs_f64(),
            first_took.as_secs_f64()
        );
    } else {
        println!(
            "skipped: the ctr run --rm true timing against runc (a figure; HULL_LAB_FULL=1 runs it)"
        );
    }
    assert_clean(ctrd, "the runs");
}

/// `debug = true` (this fixture's config) reaches all three: the shim, hull-vmm
/// through the typed VM config, and the agent through the kernel command line;
/// each one's debug line lands in containerd's log under the pod's id.
#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_debug_lines_of_shim_vmm_and_agent_reach_containerds_log() {
    let (ctrd, _one) = containerd();
    let (out, _) = ctrd.run(HULL, "debuglines", &["true"], None);
    assert!(out.status.success(), "ctr run: {}", text(&out.stderr));
    let log = std::fs::read_to_string(Path::new(BASE).join("containerd/containerd.log"))
        .unwrap_or_default();
    let pod: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sandbox=debuglines"))
        .collect();
    for (who, line) in [
        ("the shim", "shim debug logging on"),
        ("hull-vmm", "hull-vmm debug logging on"),
        ("the agent", "hull-agent debug logging on"),
    ] {
        assert!(
            pod.iter().any(|l| l.contains(line)),
            "no debug line of {who} ({line:?}) in containerd's log; the pod's lines:\n{}",
            pod.join("\n")
        );
    }
    assert_clean(ctrd, "the debug run");
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_task_operations_and_events_in_order() {
    let (ctrd, _one) = containerd();
    let events_log = Path::new(BASE).join("events.txt");
    let mut events = ctr_events(&["--address", &ctrd.address], &events_log)
        .spawn()
        .expect("ctr events");
    // PID 1 of a PID namespace ignores TERM unless it handles it: this one does.
    let _cleanup = Remove(ctrd, &["ops"]);
    let script = "trap 'exit 143' TERM; while :; do sleep 1; done";
    ctrd.run_detached("ops", &[], &["sh", "-c", script]);
    let out = ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "ops",
        "echo",
        "from-exec",
    ]);
    assert_eq!(out, "from-exec\n");
    let ps = ctrd.ctr_ok(&["task", "ps", "ops"]);
    assert!(ps.lines().count() >= 2, "{ps}");
    let metrics = ctrd.ctr_ok(&["task", "metrics", "ops"]);
    assert!(metrics.contains("pids.current"), "{metrics}");
    ctrd.ctr_ok(&["task", "pause", "ops"]);
    assert_eq!(ctrd.task_status("ops"), "PAUSED");
    ctrd.ctr_ok(&["task", "resume", "ops"]);
    assert_eq!(ctrd.task_status("ops"), "RUNNING");
    ctrd.stop_and_remove("ops", "TERM");
    assert_clean(ctrd, "the task operations");
    assert_task_lifecycle(&mut events, &events_log, 1);
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_containers_of_one_pod_share_one_vm_and_a_volume() {
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(ctrd, &["pod1-c2", "pod1"]);
    let vol = Path::new(BASE).join("volume");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("from-host"), "host file\n").unwrap();
    let mount = format!("type=bind,src={},dst=/vol,options=rbind:rw", vol.display());
    let pod = ["--annotation", "io.kubernetes.cri.sandbox-id=pod1"];
    let opts = [&pod[..], &["--mount", &mount]].concat();
    ctrd.run_detached("pod1", &opts, &["sleep", "1000"]);
    ctrd.run_detached(
        "pod1-c2",
        &[
            &opts[..],
            &["--annotation", "io.kubernetes.cri.container-type=container"],
        ]
        .concat(),
        &["sleep", "1000"],
    );
    let vmms = pod_processes(&["hull-vmm"]);
    assert_eq!(vmms.len(), 1, "one VM for the pod: {vmms:?}");
    ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "w",
        "pod1",
        "sh",
        "-c",
        "echo from-c1 > /vol/c1",
    ]);
    let seen = ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "r",
        "pod1-c2",
        "cat",
        "/vol/c1",
        "/vol/from-host",
    ]);
    assert_eq!(seen, "from-c1\nhost file\n");
    assert_eq!(
        std::fs::read_to_string(vol.join("c1")).unwrap(),
        "from-c1\n"
    );
    let kernels = ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "k",
        "pod1-c2",
        "cat",
        "/proc/sys/kernel/random/boot_id",
    ]);
    let kernels1 = ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "k",
        "pod1",
        "cat",
        "/proc/sys/kernel/random/boot_id",
    ]);
    assert_eq!(kernels, kernels1, "both containers run on one guest kernel");
    ctrd.remove("pod1-c2");
    assert_eq!(
        pod_processes(&["hull-vmm"]).len(),
        1,
        "the VM stays while the pod has a container"
    );
    ctrd.remove("pod1");
    assert_clean(ctrd, "the pod");
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_killed_vmm_ends_the_task_and_killed_shim_is_cleaned_up() {
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(ctrd, &["vmmdies", "shimdies"]);
    // The VMM dies under a running container: the task exits, ctr returns.
    ctrd.run_detached("vmmdies", &[], &["sleep", "1000"]);
    let vmms = pod_processes(&["hull-vmm"]);
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    // The running pod's VMM is confined: seccomp filter mode, no_new_privs, the configured
    // unprivileged uid/gid without capabilities, its own mount, IPC, UTS, network and PID
    // namespaces (PID 1 of its own, under a holder process outside).
    let vmm = vmms[0].0;
    let id = JAIL_ID.to_string();
    assert_eq!(proc_status(vmm, "Seccomp"), ["2"]);
    assert_eq!(proc_status(vmm, "NoNewPrivs"), ["1"]);
    assert_eq!(proc_status(vmm, "Uid"), [id.as_str(); 4]);
    assert_eq!(proc_status(vmm, "Gid"), [id.as_str(); 4]);
    assert_eq!(proc_status(vmm, "CapEff"), ["0000000000000000"]);
    assert_eq!(
        proc_status(vmm, "NSpid").last().map(String::as_str),
        Some("1")
    );
    for ns in ["mnt", "ipc", "uts", "net", "pid"] {
        let link = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(link(&vmm.to_string()), link("self"), "{ns} namespace");
    }
    // The container's output still flows (the VMM reaches the shim's port sockets).
    let out = ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "jailprobe",
        "vmmdies",
        "echo",
        "jailed",
    ]);
    assert_eq!(out.trim(), "jailed");
    let _ = Command::new("kill")
        .args(["-9", &vmms[0].0.to_string()])
        .status();
    ctrd.wait_status("vmmdies", "STOPPED", 120);
    ctrd.ctr_ok(&["task", "delete", "vmmdies"]);
    ctrd.ctr_ok(&["containers", "rm", "vmmdies"]);
    assert_clean(ctrd, "a killed VMM");

    // The shim dies: containerd runs `containerd-shim-hull-v2 delete`, which
    // kills the VM and virtiofsd and removes the pod's mounts and files.
    ctrd.run_detached("shimdies", &[], &["sleep", "1000"]);
    let shims = pod_processes(&["containerd-shim-hull-v2"]);
    assert_eq!(shims.len(), 1, "{shims:?}");
    let _ = Command::new("kill")
        .args(["-9", &shims[0].0.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !ctrd.task_status("shimdies").is_empty() {
        assert!(
            Instant::now() < deadline,
            "task not cleaned up\n{}",
            ctrd.shim_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = ctrd.ctr(&["task", "delete", "shimdies"]);
    ctrd.ctr_ok(&["containers", "rm", "shimdies"]);
    assert_clean(ctrd, "a killed shim");
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_killed_virtiofsd_ends_the_task_like_a_killed_vmm() {
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(ctrd, &["fsdies"]);
    // virtiofsd's server dies under a running container: the shim kills the VM,
    // the task exits, Delete and rm succeed, nothing is left (the launcher it
    // forked from: virtiofsd_confined).
    ctrd.run_detached("fsdies", &[], &["sleep", "1000"]);
    let (_, server) = virtiofsd_confined::launcher_and_server();
    let started = Instant::now();
    let _ = Command::new("kill")
        .args(["-9", &server.to_string()])
        .status();
    ctrd.wait_status("fsdies", "STOPPED", 120);
    println!(
        "killed virtiofsd: the task stopped {:.1} s later",
        started.elapsed().as_secs_f64()
    );
    assert!(
        pod_processes(&["hull-vmm"]).is_empty(),
        "hull-vmm is killed with the share gone"
    );
    let log = std::fs::read_to_string(Path::new(BASE).join("containerd/containerd.log"));
    assert!(
        log.unwrap_or_default()
            .contains("virtiofsd, which serves the pod's share, exited"),
        "the shim says why the pod ended\n{}",
        ctrd.shim_log()
    );
    ctrd.ctr_ok(&["task", "delete", "fsdies"]);
    ctrd.ctr_ok(&["containers", "rm", "fsdies"]);
    assert_clean(ctrd, "a killed virtiofsd");
}
