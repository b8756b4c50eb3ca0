//! The real `hull-vmm` binary under its seccomp filters, on this host with the tiny PVH test
//! image (runs on a PVM-backed /dev/kvm too): a filtered VMM shows `Seccomp: 2` and
//! `NoNewPrivs: 1`, and a forbidden syscall from its event loop kills it with SIGSYS.

use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hull-seccomp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("image"), hull_vmm::test_image::pvh_halt_image()).unwrap();
    dir
}

fn spawn(dir: &Path, extra_env: Option<(&str, &str)>) -> Child {
    assert!(
        Path::new("/dev/kvm").exists(),
        "these tests need /dev/kvm (this host and CI have one)"
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hull-vmm"));
    cmd.arg("--allow-pvm")
        .args(["--kernel", &dir.join("image").display().to_string()])
        .args(["--memory", "32", "--vcpus", "2"])
        .args(["--console", &dir.join("console").display().to_string()])
        .args(["--control", &dir.join("ctl.sock").display().to_string()])
        .args(["--vsock", &format!("3,{}", dir.join("v.sock").display())])
        .stderr(Stdio::piped());
    if let Some((k, v)) = extra_env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_running_vmm_is_filtered_and_has_no_new_privs() {
    let dir = scratch("status");
    let mut child = spawn(&dir, None);
    wait_for("the test image's marker", || {
        std::fs::read(dir.join("console")).unwrap_or_default() == [hull_vmm::test_image::MARKER]
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .map(|t| {
            let t = t.unwrap().path();
            let name = std::fs::read_to_string(t.join("comm")).unwrap();
            let st = std::fs::read_to_string(t.join("status")).unwrap();
            let seccomp = st.lines().find(|l| l.starts_with("Seccomp:")).unwrap_or("");
            format!(
                "{} {}",
                name.trim(),
                seccomp.split_whitespace().nth(1).unwrap_or("?")
            )
        })
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(status.contains("\nSeccomp:\t2\n"), "{status}");
    assert!(status.contains("\nNoNewPrivs:\t1\n"), "{status}");
    // The event loop, the console writer and both vCPUs (KVM may add a kernel worker, which
    // inherits the filter): every thread filtered.
    for name in ["hull-vmm", "console", "vcpu0", "vcpu1"] {
        assert!(tasks.contains(&format!("{name} 2")), "{name}: {tasks:?}");
    }
    assert!(tasks.iter().all(|t| t.ends_with(" 2")), "{tasks:?}");
}

#[test]
fn a_forbidden_syscall_kills_the_vmm_with_sigsys() {
    let dir = scratch("kill");
    let child = spawn(&dir, Some((hull_vmm::seccomp::SELFTEST_ENV, "1")));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let sockets_left = dir.join("v.sock").exists();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGSYS),
        "status {:?}, stderr:\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("no seccomp filter is installed"),
        "{stderr}"
    );
    // Killed, the VMM leaves its sockets: the shim removes the pod directory.
    assert!(sockets_left);
}

/// The jail with the tiny image: a VMM given `jail` in its config runs as the unprivileged
/// uid/gid, PID 1 of its own PID namespace under a holder process, in its own mount, IPC, UTS
/// and network namespaces, sees only its socket directory (the
/// subdirectories hidden), and still answers on its control socket (stats read
/// /proc/self inside the jail) and removes nothing it cannot.
#[test]
fn a_jailed_vmm_runs_unprivileged_in_its_own_namespaces() {
    use std::io::{BufRead, BufReader, Write};
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: the jail needs root (CAP_SYS_ADMIN) and this test runs unprivileged");
        return;
    }
    let dir = scratch("jail");
    std::fs::create_dir_all(dir.join("shared/secret")).unwrap();
    std::fs::write(dir.join("shared/secret/file"), "not for the VMM").unwrap();
    let (uid, gid) = (65534u32, 65534u32);
    let cfg = serde_json::json!({
        "kernel": dir.join("image"),
        "memory_mib": 32,
        "vcpus": 2,
        "allow_pvm": true,
        "console": {"file": dir.join("console")},
        "vsock": {"cid": 3, "uds": dir.join("v.sock")},
        "control": dir.join("ctl.sock"),
        "jail": {"dir": dir, "uid": uid, "gid": gid},
    });
    std::fs::write(dir.join("vm.json"), cfg.to_string()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .args(["--config", &dir.join("vm.json").display().to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the test image's marker", || {
        std::fs::read(dir.join("console")).unwrap_or_default() == [hull_vmm::test_image::MARKER]
            || child.try_wait().unwrap().is_some()
    });
    // The spawned process holds the VMM's PID namespace; the VMM is its one child.
    let holder = child.id();
    let holder_comm = std::fs::read_to_string(format!("/proc/{holder}/comm")).unwrap_or_default();
    let children = std::fs::read_to_string(format!("/proc/{holder}/task/{holder}/children"))
        .unwrap_or_default();
    let pid: u32 = children.trim().parse().unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let ns = |p: &str, name: &str| std::fs::read_link(format!("/proc/{p}/ns/{name}")).ok();
    let own_ns: Vec<bool> = ["mnt", "ipc", "uts", "net", "pid"]
        .iter()
        .map(|n| ns(&pid.to_string(), n) != ns("self", n))
        .collect();
    let ns_pid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .map(|l| l.split_whitespace().last().unwrap_or("").to_string());
    // What the VMM sees of the directory, through its own root.
    let seen = std::fs::read_dir(format!("/proc/{pid}/root{}/shared", dir.display()))
        .map(|d| d.count())
        .ok();
    let stats = UnixStream::connect(dir.join("ctl.sock")).map(|s| {
        writeln!(&s, r#"{{"v":1,"cmd":"stats"}}"#).unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        line
    });
    let holder_seccomp = std::fs::read_to_string(format!("/proc/{holder}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:").map(|v| v.trim().to_string()));
    // SIGTERM to the holder (what the shim sends first) goes on to the VMM, and the holder
    // ends as the VMM ends, all under its seccomp filter.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(holder as libc::pid_t, libc::SIGTERM) };
    let term_deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() && Instant::now() < term_deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let ended_on_term = child.try_wait().unwrap();
    // SIGKILL of the holder (what the shim does last) takes the VMM with it.
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while pid != 0 && Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let vmm_left = pid != 0 && Path::new(&format!("/proc/{pid}")).exists();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        holder_comm.trim(),
        hull_vmm::jail::HOLDER_NAME,
        "{children}"
    );
    assert!(pid != 0, "no VMM under the holder: {children:?}\n{stderr}");
    assert_eq!(
        holder_seccomp.as_deref(),
        Some("2"),
        "the holder is filtered"
    );
    use std::os::unix::process::ExitStatusExt;
    let ended = ended_on_term.expect("the holder ends after SIGTERM, as the VMM does");
    assert_ne!(ended.signal(), Some(libc::SIGSYS), "{stderr}");
    println!("holder after SIGTERM: {ended:?}");
    assert_eq!(
        ns_pid.as_deref(),
        Some("1"),
        "the VMM is PID 1 of its namespace"
    );
    assert!(!vmm_left, "the VMM outlived its holder");
    assert!(
        status.contains(&format!("\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")),
        "{status}\n{stderr}"
    );
    assert!(status.contains(&format!("\nGid:\t{gid}\t{gid}\t{gid}\t{gid}\n")));
    assert!(status.contains("\nCapEff:\t0000000000000000\n"), "{status}");
    assert!(status.contains("\nSeccomp:\t2\n") && status.contains("\nNoNewPrivs:\t1\n"));
    assert_eq!(
        own_ns,
        [true, true, true, true, true],
        "own mnt, ipc, uts, net, pid namespaces"
    );
    assert_eq!(seen, Some(0), "the subdirectory is hidden in the jail");
    let stats = stats.expect("control socket unreachable");
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert!(
        v["stats"]["memory"]["vmm_rss_kib"].as_u64().unwrap_or(0) > 0,
        "stats read /proc/self inside the jail: {stats}"
    );
}
