//! CRI pod sizing and host accounting: the VM's vCPUs and memory come from the pod's
//! resources, hull-vmm and virtiofsd sit in the pod's host cgroup, a container limit the VM
//! cannot hold is refused; the per-pod overhead that the RuntimeClass's
//! `overhead.podFixed` stands for, measured on an idle pod (printed as `FIGURES overhead`);
//! and a crashed container restarted in the same pod the way kubelet does it.

use super::*;

/// The idle window over which the pod cgroup's CPU use is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(20);

/// A number from a cgroup v2 file of `dir`: the whole file, or the value after `key`.
fn cgroup_number(dir: &Path, file: &str, key: Option<&str>) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    match key {
        None => text.trim().parse().ok(),
        Some(key) => text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok()),
    }
}

/// (RssAnon + RssFile, RssShmem) of a process in KiB: its own memory, and the shared memory it
/// maps (for hull-vmm, the guest RAM the guest has touched: a memfd).
fn rss_kib(pid: i32) -> (u64, u64) {
    let field = |name: &str| hull_tests::procs::status_kib(pid, name);
    (field("RssAnon") + field("RssFile"), field("RssShmem"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Prints what an idle pod costs the host beyond its containers, and checks that the pod's
/// host cgroup is charged for it: memory.current of the pod's cgroup against what the
/// containers use inside; hull-vmm's own memory and the guest RAM it maps, virtiofsd's, the
/// shim's (outside the pod's cgroup); the pod cgroup's CPU while idle.
fn measure_overhead(r: &mut Report, cri: &mut Cri, handler: &str, app: &str, cgroup_dir: &Path) {
    let inside: u64 = exec(
        cri,
        r,
        handler,
        app,
        &["cat", "/sys/fs/cgroup/memory.current"],
    )
    .stdout
    .trim()
    .parse()
    .unwrap_or(0);
    let cpu_before = cgroup_number(cgroup_dir, "cpu.stat", Some("usage_usec"));
    std::thread::sleep(IDLE_WINDOW);
    let cpu_after = cgroup_number(cgroup_dir, "cpu.stat", Some("usage_usec"));
    let pod = cgroup_number(cgroup_dir, "memory.current", None).unwrap_or(0);
    let millicores = match (cpu_before, cpu_after) {
        (Some(a), Some(b)) => {
            (b.saturating_sub(a) as f64 / IDLE_WINDOW.as_micros() as f64) * 1000.0
        }
        _ => f64::NAN,
    };
    let (pod_kib, inside_kib) = (pod / 1024, inside / 1024);
    let mut line = format!(
        "FIGURES overhead [{handler}]: idle pod cgroup {:.1} MiB (memory.current), its app \
         container {:.1} MiB inside, the rest {:.1} MiB; pod cgroup CPU while idle {millicores:.0} \
         millicores over {} s",
        mib(pod_kib),
        mib(inside_kib),
        mib(pod_kib.saturating_sub(inside_kib)),
        IDLE_WINDOW.as_secs()
    );
    if handler == "hull" {
        let own = |names: &[&str]| -> (u64, u64) {
            pod_processes(names)
                .into_iter()
                .map(rss_kib)
                .fold((0, 0), |(a, s), (a2, s2)| (a + a2, s + s2))
        };
        let (vmm_own, guest_ram) = own(&["hull-vmm"]);
        let (fs_own, _) = own(&["virtiofsd"]);
        let (shim_own, _) = own(&["containerd-shim-hull-v2"]);
        // What podFixed must cover beyond the containers' limits: the guest's base memory
        // (the VM is sized as the pod's memory plus it) and the host processes' own memory.
        let fixed_mib = BASE_MEMORY_MIB as f64 + mib(vmm_own + fs_own);
        line += &format!(
            "; hull-vmm own {:.1} MiB + guest RAM touched {:.1} MiB, virtiofsd {:.1} MiB, shim \
             {:.1} MiB (not in the pod's cgroup); podFixed memory at least base {BASE_MEMORY_MIB} \
             MiB + hull-vmm + virtiofsd = {fixed_mib:.0} MiB",
            mib(vmm_own),
            mib(guest_ram),
            mib(fs_own),
            mib(shim_own)
        );
        r.check(
            handler,
            guest_ram > 0 && pod_kib > inside_kib + 1024,
            format!(
                "the pod's host cgroup is charged for the VM: {pod_kib} KiB against {inside_kib} \
                 KiB used inside, hull-vmm maps {guest_ram} KiB of touched guest RAM"
            ),
        );
    }
    println!("{line}");
}

/// A crashed container restarted as kubelet restarts it: the dead one stays (kubelet keeps it
/// for its logs until garbage collection) and a CreateContainer of the same name with the next
/// attempt runs in the same pod, next to the app.
fn crash_and_restart(
    r: &mut Report,
    cri: &mut Cri,
    handler: &str,
    pod: &str,
    pod_config: &PodSandboxConfig,
) {
    let crash = container_config(
        "crash",
        IMAGE,
        &["sh", "-c", "echo bye; exit 3"],
        &[],
        false,
        None,
    );
    let Some(first) = r.result(
        handler,
        "CreateContainer of a container that crashes",
        cri.create_container(pod, &crash, pod_config),
    ) else {
        return;
    };
    r.result(
        handler,
        "StartContainer (crashes)",
        cri.start_container(&first),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut status = cri.container_status(&first).ok();
    while Instant::now() < deadline
        && status
            .as_ref()
            .is_none_or(|s| s.state != ContainerState::ContainerExited as i32)
    {
        std::thread::sleep(Duration::from_millis(500));
        status = cri.container_status(&first).ok();
    }
    let exit = status.as_ref().map(|s| (s.state, s.exit_code));
    r.check(
        handler,
        exit == Some((ContainerState::ContainerExited as i32, 3)),
        format!("the crashed container is EXITED with code 3: (state, code) {exit:?}"),
    );
    let mut again = container_config("crash", IMAGE, &["sleep", "100000"], &[], false, None);
    if let Some(meta) = again.metadata.as_mut() {
        meta.attempt = 1;
    }
    again.log_path = "crash_1.log".into();
    let Some(second) = r.result(
        handler,
        "CreateContainer attempt 1 after the crash",
        cri.create_container(pod, &again, pod_config),
    ) else {
        return;
    };
    r.result(
        handler,
        "StartContainer attempt 1",
        cri.start_container(&second),
    );
    let out = exec(cri, r, handler, &second, &["echo", "restarted"]);
    r.check(
        handler,
        second != first && out.stdout.trim() == "restarted",
        format!("attempt 1 ({second}) runs in the pod after the crash of {first}: {out:?}"),
    );
}

/// A container over its memory limit is OOM-killed, and the CRI says so as
/// kubelet reads it (`kubectl describe`'s "Reason: OOMKilled"): EXITED with
/// 137 and the reason `OOMKilled`, which containerd sets only from the
/// runtime's TaskOOM event. Under Hull that event travels from the guest's
/// memory.events through the agent's OomEvent and the shim to containerd.
fn oom_killed(
    r: &mut Report,
    cri: &mut Cri,
    handler: &str,
    pod: &str,
    pod_config: &PodSandboxConfig,
) {
    let hog = container_config(
        "hog",
        IMAGE,
        // tail keeps the line it is reading: /dev/zero has no newline.
        &["tail", "/dev/zero"],
        &[],
        false,
        Some(resources(1, 32)),
    );
    let Some(id) = r.result(
        handler,
        "CreateContainer of a container over its 32 MiB limit",
        cri.create_container(pod, &hog, pod_config),
    ) else {
        return;
    };
    let started = Instant::now();
    r.result(
        handler,
        "StartContainer (the hog)",
        cri.start_container(&id),
    );
    // The exit first, then the reason: containerd may handle the two events
    // in either order, and the shim passes the guest's OOM events on at most
    // one a second per container.
    let deadline = started + Duration::from_secs(120);
    let mut status = cri.container_status(&id).ok();
    while Instant::now() < deadline
        && status.as_ref().is_none_or(|s| {
            s.state != ContainerState::ContainerExited as i32 || s.reason != "OOMKilled"
        })
    {
        std::thread::sleep(Duration::from_millis(500));
        status = cri.container_status(&id).ok();
    }
    let got = status
        .as_ref()
        .map(|s| (s.state, s.exit_code, s.reason.clone()));
    r.check(
        handler,
        got == Some((
            ContainerState::ContainerExited as i32,
            137,
            "OOMKilled".to_string(),
        )),
        format!(
            "the hog is EXITED with 137 and reason OOMKilled: (state, code, reason) {got:?} \
             ({:.1} s)",
            started.elapsed().as_secs_f64()
        ),
    );
    r.result(
        handler,
        "RemoveContainer (the hog)",
        cri.remove_container(&id),
    );
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel, runc, CNI plugins (make test-lab)"]
fn lab_cri_pod_resources_size_the_vm_and_its_host_cgroup_holds_it() {
    let (mut cri, base) = cri();
    let mut r = Report::default();
    for handler in &handlers() {
        let handler = handler.as_str();
        let mut fx = PodFixture::new(
            &base,
            handler,
            &format!("sized-{handler}"),
            true,
            Some(resources(2, 1024)),
        );
        let app = container_config(
            "app",
            IMAGE,
            &["sleep", "100000"],
            &[],
            true,
            Some(resources(1, 512)),
        );
        let Some((pod, a, _)) = fx.start(&mut cri, &mut r, "start the pod", &app) else {
            continue;
        };
        let nproc = exec(&mut cri, &mut r, handler, &a, &["nproc"]).stdout;
        let meminfo = exec(
            &mut cri,
            &mut r,
            handler,
            &a,
            &["head", "-1", "/proc/meminfo"],
        )
        .stdout;
        let mem_kib: u64 = meminfo
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        println!("[{handler}] nproc {} MemTotal {mem_kib} KiB", nproc.trim());
        // shareProcessNamespace: the app sees the pause process.
        let ps = exec(&mut cri, &mut r, handler, &a, &["ps", "-o", "args"]).stdout;
        r.check(
            handler,
            ps.contains("sleep 2147483647"),
            format!("the app sees the pause process: {ps:?}"),
        );
        measure_overhead(&mut r, &mut cri, handler, &a, &fx.cgroup_dir);
        crash_and_restart(&mut r, &mut cri, handler, &pod, &fx.config);
        oom_killed(&mut r, &mut cri, handler, &pod, &fx.config);
        if handler == "hull" {
            r.check(
                handler,
                nproc.trim() == "2",
                format!("nproc is the pod's 2 CPUs: {nproc:?}"),
            );
            let (lo, hi) = (1024 * 1024 * 9 / 10, (1024 + BASE_MEMORY_MIB) * 1024);
            r.check(
                handler,
                (lo..=hi).contains(&mem_kib),
                format!(
                    "MemTotal {mem_kib} KiB is the pod's 1 GiB plus the base (within {lo}..={hi})"
                ),
            );
            let vm = pod_processes(&["hull-vmm", "virtiofsd"]);
            let in_pod = vm
                .iter()
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/cgroup"))
                        .unwrap_or_default()
                        .contains(&format!("{}/", fx.parent))
                })
                .count();
            r.check(
                handler,
                vm.len() == 3 && in_pod == 3,
                format!(
                    "hull-vmm and virtiofsd's launcher and server ({vm:?}) are in the pod's \
                     cgroup {}: {in_pod}",
                    fx.parent
                ),
            );
            // A container limit above the VM's memory cannot be honoured.
            let big = container_config(
                "big",
                IMAGE,
                &["sleep", "100000"],
                &[],
                true,
                Some(resources(1, 4096)),
            );
            let err = cri
                .create_container(&pod, &big, &fx.config)
                .and_then(|id| cri.start_container(&id));
            r.check(
                handler,
                err.as_ref()
                    .is_err_and(|e| e.to_string().contains("does not fit")),
                format!("a 4 GiB container limit in a 1 GiB pod is refused: {err:?}"),
            );
        }
        fx.teardown(&mut cri, &mut r);
    }
    r.finish(&shim_log());
}
