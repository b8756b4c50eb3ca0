//! Churn and parallel load (issue 15): pods created, started, exec'd into, killed and deleted
//! over and over, then pods started at once; afterwards nothing of them is left and containerd
//! holds no more descriptors than before. The test command runs small counts; `HULL_LAB_FULL=1`
//! runs 200 cycles and 10 pods at once; `HULL_CHURN_CYCLES` and `HULL_CHURN_PARALLEL` set
//! either count.

use super::*;

/// What the host holds that a pod could leak: containerd's descriptors, cgroups named after a
/// pod of this test (a parent such as `/default`, which several pods share, may stay as it does
/// under runc), mounts, user-space processes (kernel threads come and go on their own), the
/// entries of the shim's run directory (the `/run/hull` of these tests).
#[derive(Debug, PartialEq)]
struct Census {
    containerd_fds: usize,
    pod_cgroups: Vec<String>,
    mounts: usize,
    processes: usize,
    run_dir_entries: Vec<String>,
}

fn census(pods: &[&str]) -> Census {
    let pid = std::fs::read_to_string(Path::new(BASE).join("containerd/containerd.pid"))
        .unwrap_or_default();
    let containerd_fds = std::fs::read_dir(format!("/proc/{}/fd", pid.trim()))
        .map(|d| d.count())
        .unwrap_or(0);
    fn dirs(p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.push(e.path());
                dirs(&e.path(), out);
            }
        }
    }
    let mut cgroups = Vec::new();
    dirs(Path::new("/sys/fs/cgroup"), &mut cgroups);
    Census {
        containerd_fds,
        pod_cgroups: cgroups
            .iter()
            .filter(|d| {
                d.file_name()
                    .is_some_and(|n| pods.iter().any(|p| n.to_string_lossy() == *p))
            })
            .map(|d| d.display().to_string())
            .collect(),
        mounts: std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .count(),
        processes: std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| !c.is_empty()))
            .count(),
        run_dir_entries: {
            let mut entries = Vec::new();
            dirs(&Path::new(BASE).join("pods"), &mut entries);
            entries.iter().map(|d| d.display().to_string()).collect()
        },
    }
}

fn exec_echo(ctrd: &Containerd, id: &str) {
    let out = ctrd.ctr_ok(&["task", "exec", "--exec-id", "echo", id, "echo", id]);
    assert_eq!(out.trim(), id, "exec in {id}");
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_churn_cycles_and_parallel_pods_leave_nothing_behind() {
    let full = std::env::var("HULL_LAB_FULL").is_ok_and(|v| v == "1");
    let (cycles, parallel) = if full { (200, 10) } else { (1, 3) };
    // HULL_CHURN_CYCLES / HULL_CHURN_PARALLEL set either count for one campaign.
    let count = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (cycles, parallel) = (
        count("HULL_CHURN_CYCLES", cycles),
        count("HULL_CHURN_PARALLEL", parallel).max(1),
    );
    let (ctrd, _one) = containerd();
    let names: Vec<String> = (0..cycles)
        .map(|i| format!("churn{i}"))
        .chain((0..parallel).map(|i| format!("par{i}")))
        .collect();
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    let _cleanup = Remove(ctrd, &all);
    let _alone = Remove(ctrd, &["par-alone"]);
    // One pod alone first: the time to compare the parallel starts with, and what the first
    // pod of a containerd creates once (its namespace's cgroup, snapshotter files) is then in
    // the census taken before the churn.
    let alone = {
        let started = Instant::now();
        ctrd.run_detached("par-alone", &[], &["sleep", "100000"]);
        let took = started.elapsed().as_secs_f64();
        ctrd.stop_and_remove("par-alone", "KILL");
        took
    };
    assert_clean(ctrd, "the first pod");
    let before = census(&all);

    let mut per_cycle = Vec::new();
    for id in &all[..cycles] {
        let started = Instant::now();
        ctrd.ctr_ok(&[
            "containers",
            "create",
            "--runtime",
            HULL,
            IMAGE,
            id,
            "sleep",
            "100000",
        ]);
        ctrd.ctr_ok(&["task", "start", "-d", id]);
        exec_echo(ctrd, id);
        ctrd.stop_and_remove(id, "KILL");
        per_cycle.push(started.elapsed().as_secs_f64());
    }
    assert_clean(ctrd, "the churn cycles");

    // Pods started at once: every start succeeds. Where the machine's CPU went meanwhile is
    // sampled every 5 s (a start that fails shows whether the machine was saturated; the
    // sampling itself costs ~4% of the lab's CPU with ten pods).
    let started = Instant::now();
    let cpu = Mutex::new(hull_tests::procs::CpuCensus::new(&[
        "hull-vmm",
        "containerd-shim",
    ]));
    let starting = std::sync::atomic::AtomicBool::new(true);
    let starts: Vec<(String, f64, Output)> = std::thread::scope(|s| {
        s.spawn(|| {
            while starting.load(std::sync::atomic::Ordering::Relaxed) {
                cpu.lock().unwrap().sample();
                let next = Instant::now() + Duration::from_secs(5);
                while starting.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            cpu.lock().unwrap().sample();
        });
        let handles: Vec<_> = all[cycles..]
            .iter()
            .map(|id| {
                s.spawn(move || {
                    let t = Instant::now();
                    let out =
                        ctrd.ctr(&["run", "-d", "--runtime", HULL, IMAGE, id, "sleep", "100000"]);
                    (id.to_string(), t.elapsed().as_secs_f64(), out)
                })
            })
            .collect();
        let starts = handles.into_iter().map(|h| h.join().unwrap()).collect();
        starting.store(false, std::sync::atomic::Ordering::Relaxed);
        starts
    });
    let all_up = started.elapsed().as_secs_f64();
    let cpu = cpu.into_inner().unwrap().summary();
    let failed: Vec<&(String, f64, Output)> = starts
        .iter()
        .filter(|(_, _, out)| !out.status.success())
        .collect();
    if let Some((first, _, _)) = failed.first() {
        let lines: Vec<String> = failed
            .iter()
            .map(|(id, took, out)| format!("{id} after {took:.1} s: {}", text(&out.stderr).trim()))
            .collect();
        panic!(
            "{} of {} parallel starts failed:\n{}\nCPU during the starts: {cpu}\n\
             containerd's lines of {first}:\n{}",
            failed.len(),
            starts.len(),
            lines.join("\n"),
            ctrd.pod_log(first),
        );
    }
    for (id, _, _) in &starts {
        exec_echo(ctrd, id);
    }
    for (id, _, _) in &starts {
        ctrd.stop_and_remove(id, "KILL");
    }
    assert_clean(ctrd, "the parallel pods");

    // containerd may take a moment to close its last shim connections.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut after = census(&all);
    while after != before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(1));
        after = census(&all);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let slowest = starts.iter().map(|s| s.1).fold(0.0, f64::max);
    println!(
        "FIGURES churn: {cycles} cycles (create, start, exec, kill, delete), {:.1} s per cycle \
         (first {:.1} s, last {:.1} s); {parallel} pods at once: all up in {all_up:.1} s, \
         slowest start {slowest:.1} s, {:.1} s per pod, against {alone:.1} s for one alone; \
         census before {before:?}, after {after:?}; CPU during the starts: {cpu}",
        mean(&per_cycle),
        per_cycle.first().copied().unwrap_or(0.0),
        per_cycle.last().copied().unwrap_or(0.0),
        all_up / parallel as f64,
    );
    assert_eq!(after, before, "what the pods left on the host");
}
