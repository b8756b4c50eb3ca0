//! Faults as an operator meets them (issue 15): containerd crashes and comes back while a Hull
//! pod runs, and a guest kernel panics under a running container.

use super::*;

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_containerd_crash_keeps_the_pod_and_a_guest_panic_ends_its_task() {
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(ctrd, &["survivor", "panicker"]);
    ctrd.run_detached("survivor", &[], &["sleep", "100000"]);
    let vmm_before = pod_processes(&["hull-vmm"]);

    // containerd dies (SIGKILL) and starts again: it finds the running pod through its shim.
    ctrd.crash_and_restart();
    assert_eq!(
        ctrd.task_status("survivor"),
        "RUNNING",
        "after the restart\n{}",
        ctrd.shim_log()
    );
    assert_eq!(
        pod_processes(&["hull-vmm"]),
        vmm_before,
        "the pod's VM is the one from before the crash"
    );
    let out = ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "after-restart",
        "survivor",
        "echo",
        "still here",
    ]);
    assert_eq!(out, "still here\n");

    // A privileged container is root of its guest: it makes the guest kernel panic (an
    // out-of-memory with panic_on_oom=2, which the guest's own cgroup cannot absorb). The
    // guest reboots on panic, hull-vmm ends, and the task ends like one whose VM was killed.
    let panic = "echo 2 > /proc/sys/vm/panic_on_oom || exit 1; tail /dev/zero";
    ctrd.run_detached("panicker", &["--privileged"], &["sh", "-c", panic]);
    ctrd.wait_status("panicker", "STOPPED", 300);
    let log = std::fs::read_to_string(Path::new(BASE).join("containerd/containerd.log"))
        .unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("sandbox=panicker") && l.contains("Kernel panic")),
        "no guest panic in the pod's console lines\n{}",
        ctrd.shim_log()
    );
    ctrd.ctr_ok(&["task", "delete", "panicker"]);
    ctrd.ctr_ok(&["containers", "rm", "panicker"]);

    // The survivor's pod is untouched by its neighbour's panic and ends normally.
    assert_eq!(ctrd.task_status("survivor"), "RUNNING");
    ctrd.stop_and_remove("survivor", "KILL");
    assert_clean(ctrd, "a containerd crash and a guest panic");
}
