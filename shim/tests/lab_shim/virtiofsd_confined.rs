//! virtiofsd confined (issue 15): the process that serves a pod's share runs in virtiofsd's
//! namespace sandbox with its seccomp filter and a reduced capability set, in the pod's cgroup,
//! and still sees the container roots and volumes the shim mounts into the share later. One
//! pod start checks all of it, and ends the pod by killing the other virtiofsd process.

use super::*;

/// virtiofsd's capabilities in the pod: chown, dac_override, dac_read_search, fowner,
/// fsetid, setgid, setuid (bits 0-4, 6, 7); no mknod, setfcap, sys_admin or anything else.
const SERVER_CAPS: &str = "00000000000000df";

/// A pod's two virtiofsd processes: (the one the shim spawned, which only waits, the server
/// it forked as PID 1 of its own PID namespace).
pub(super) fn launcher_and_server() -> (i32, i32) {
    let fsds = pod_processes(&["virtiofsd"]);
    let (servers, launchers): (Vec<_>, Vec<_>) = fsds
        .iter()
        .map(|(pid, _)| *pid)
        .partition(|&pid| proc_status(pid, "NSpid").len() == 2);
    assert!(
        launchers.len() == 1 && servers.len() == 1,
        "one launcher and one server: {fsds:?}"
    );
    (launchers[0], servers[0])
}

/// The mount points of `pid`'s mount namespace (relative to its root).
fn mount_points(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .collect()
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_virtiofsd_is_confined_and_serves_what_is_mounted_later() {
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(ctrd, &["vfsd-c2", "vfsd"]);
    let pod = ["--annotation", "io.kubernetes.cri.sandbox-id=vfsd"];
    ctrd.run_detached("vfsd", &pod, &["sleep", "1000"]);
    let (launcher, server) = launcher_and_server();

    // The server: virtiofsd's seccomp filter (which sets no_new_privs), the reduced
    // capability set with an empty bounding set, PID 1 of its own PID namespace, its own
    // mount and network namespaces.
    assert_eq!(proc_status(server, "Seccomp"), ["2"]);
    assert_eq!(proc_status(server, "NoNewPrivs"), ["1"]);
    assert_eq!(proc_status(server, "CapEff"), [SERVER_CAPS]);
    assert_eq!(proc_status(server, "CapBnd"), ["0000000000000000"]);
    assert_eq!(
        proc_status(server, "Uid"),
        ["0"; 4],
        "root: see README, known gaps"
    );
    assert_eq!(proc_status(launcher, "CapEff"), ["0000000000000000"]);
    let shims = pod_processes(&["containerd-shim-hull-v2"]);
    assert_eq!(shims.len(), 1, "{shims:?}");
    let ns = |pid: i32, ns: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
    for kind in ["mnt", "pid", "net"] {
        assert_ne!(ns(server, kind), ns(shims[0].0, kind), "{kind} namespace");
    }
    // Both virtiofsd processes sit in the pod's cgroup, hull-vmm's, named after the pod.
    let cgroup = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let vmms = pod_processes(&["hull-vmm"]);
    assert_eq!(vmms.len(), 1, "{vmms:?}");
    println!("pod cgroup: {}", cgroup(server).trim());
    assert!(
        cgroup(server).lines().any(|l| l.ends_with("/vfsd")),
        "{}",
        cgroup(server)
    );
    assert_eq!(cgroup(server), cgroup(vmms[0].0));
    assert_eq!(cgroup(launcher), cgroup(vmms[0].0));

    // A second container of the pod, with a volume, mounted into the share after virtiofsd
    // started: its root and volume reach the server's namespace and the guest.
    let vol = Path::new(BASE).join("vfsd-volume");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("early"), "before c2\n").unwrap();
    let mount = format!("type=bind,src={},dst=/vol,options=rbind:rw", vol.display());
    let c2 = [
        &pod[..],
        &["--annotation", "io.kubernetes.cri.container-type=container"],
        &["--mount", &mount],
    ]
    .concat();
    ctrd.run_detached("vfsd-c2", &c2, &["sleep", "1000"]);
    assert!(
        mount_points(server).contains(&"/vfsd-c2".to_string()),
        "the second container's root is mounted in virtiofsd's namespace: {:?}",
        mount_points(server)
    );
    std::fs::write(vol.join("late"), "made on the host while c2 runs\n").unwrap();
    let seen = ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "r",
        "vfsd-c2",
        "cat",
        "/vol/early",
        "/vol/late",
    ]);
    assert_eq!(seen, "before c2\nmade on the host while c2 runs\n");
    ctrd.remove("vfsd-c2");
    let deadline = Instant::now() + Duration::from_secs(60);
    while mount_points(server).contains(&"/vfsd-c2".to_string()) {
        assert!(
            Instant::now() < deadline,
            "the removed container's root stays in virtiofsd's namespace: {:?}",
            mount_points(server)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        ctrd.task_status("vfsd"),
        "RUNNING",
        "the pod runs on after its second container went"
    );

    // The process the shim spawned dies (the fault test kills the server): the pod ends
    // as with a dead virtiofsd, and nothing is left.
    let _ = Command::new("kill")
        .args(["-9", &launcher.to_string()])
        .status();
    ctrd.wait_status("vfsd", "STOPPED", 120);
    ctrd.ctr_ok(&["task", "delete", "vfsd"]);
    ctrd.ctr_ok(&["containers", "rm", "vfsd"]);
    std::fs::remove_dir_all(&vol).unwrap();
    assert_clean(ctrd, "a killed virtiofsd launcher");
}
