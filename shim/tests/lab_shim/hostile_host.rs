//! A guest that floods the console, OOM events or vsock, or an agent that stops answering, cannot exhaust or stall the host side (issue 16, holes 5 to 7).

use super::*;
use hull_tests::procs::{cpu_ticks, rss_kib, ticks_per_sec};

/// The shim's resident memory may not pass this while a guest floods its console.
const SHIM_RSS_BOUND_KIB: u64 = 64 * 1024;
/// Console lines the shim may log over `secs` seconds: the burst, the rate, slack.
fn log_bound(secs: f64) -> usize {
    1000 + (50.0 * secs) as usize + 100
}

/// The serving shim of pod `id` (its arguments carry `-id <id>`).
fn shim_of(id: &str) -> i32 {
    let found: Vec<i32> = pod_processes(&["containerd-shim-hull-v2"])
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| {
            let args = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = args.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|w| w[0] == b"-id" && w[1] == id.as_bytes())
        })
        .collect();
    assert_eq!(found.len(), 1, "one shim serves pod {id}: {found:?}");
    found[0]
}

/// Lines of the containerd log that the flood pod's shim logged from its console.
fn console_lines(pod: &str) -> usize {
    let log = Path::new(BASE).join("containerd/containerd.log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("sandbox={pod} ")) && l.contains("guest console"))
        .count()
}

fn dropped_reports(pod: &str) -> Vec<String> {
    let log = Path::new(BASE).join("containerd/containerd.log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("sandbox={pod} ")) && l.contains("lines not logged"))
        .map(|l| l.chars().take(300).collect())
        .collect()
}

#[test]
#[ignore = "lab: needs a KVM that boots a standard guest kernel (make test-lab)"]
fn lab_hostile_host_console_flood_keeps_the_shim_bounded_and_the_pods_manageable() {
    let (ctrd, _one) = containerd();
    let _cleanup = Remove(ctrd, &["flood", "bystander"]);
    let t0 = Instant::now();
    let step = |what: &str| println!("flood: +{:.0} s {what}", t0.elapsed().as_secs_f64());
    ctrd.run_detached("bystander", &[], &["sleep", "100000"]);
    step("bystander up");
    let before_lines = console_lines("flood");
    // Root of its guest: random bytes, newlines removed, straight to the serial console.
    let flood = "for d in /dev/ttyS0 /dev/console; do \
                 if [ -c $d ]; then tr -d '\\n' < /dev/urandom > $d; fi; done; \
                 echo no console device; exit 1";
    ctrd.run_detached("flood", &["--privileged"], &["sh", "-c", flood]);
    step("flooder up");
    let shim = shim_of("flood");
    let baseline = rss_kib(shim);
    let flood_started = Instant::now();
    let cpu_start = cpu_ticks(shim);
    let mut peak = baseline;
    let mut samples = Vec::new();
    while flood_started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(2));
        let rss = rss_kib(shim);
        peak = peak.max(rss);
        samples.push(rss);
        assert_eq!(
            ctrd.task_status("flood"),
            "RUNNING",
            "the flooder runs on\n{}",
            ctrd.shim_log()
        );
    }
    let flood_secs = flood_started.elapsed().as_secs_f64();
    step("flood watched");
    let flood_cpu = (cpu_ticks(shim) - cpu_start) as f64 / ticks_per_sec() as f64;
    // While it floods: another pod's container still answers.
    let alive = ctrd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "alive",
        "bystander",
        "echo",
        "alive",
    ]);
    assert_eq!(alive, "alive\n");
    step("bystander answered");
    // Kill and delete still work; then the shim goes quiet.
    ctrd.ctr_ok(&["task", "kill", "-s", "KILL", "flood"]);
    step("flooder killed");
    ctrd.wait_status("flood", "STOPPED", 120);
    step("flooder stopped");
    std::thread::sleep(Duration::from_secs(2));
    let quiet_start = cpu_ticks(shim);
    std::thread::sleep(Duration::from_secs(10));
    let quiet_cpu = (cpu_ticks(shim) - quiet_start) as f64 / ticks_per_sec() as f64;
    let logged = console_lines("flood") - before_lines;
    let reports = dropped_reports("flood");
    println!(
        "FIGURES console flood {flood_secs:.0} s: shim VmRSS baseline {baseline} KiB, peak {peak} KiB \
         (bound {SHIM_RSS_BOUND_KIB} KiB), samples {samples:?}; shim CPU {flood_cpu:.2} s during \
         the flood, {quiet_cpu:.2} s in the 10 s after the kill; {logged} console lines logged \
         (bound {}); drop reports: {reports:?}",
        log_bound(flood_secs + 30.0)
    );
    assert!(
        peak < SHIM_RSS_BOUND_KIB,
        "shim RSS peaked at {peak} KiB, bound {SHIM_RSS_BOUND_KIB} KiB"
    );
    assert!(
        quiet_cpu < 1.0,
        "the shim used {quiet_cpu:.2} s of CPU in the 10 s after the flood ended"
    );
    assert!(
        logged <= log_bound(flood_secs + 30.0),
        "{logged} console lines logged in {flood_secs:.0} s"
    );
    ctrd.ctr_ok(&["task", "delete", "flood"]);
    ctrd.ctr_ok(&["containers", "rm", "flood"]);
    assert_eq!(ctrd.task_status("bystander"), "RUNNING");
    ctrd.remove("bystander");
    assert_clean(ctrd, "the console flood");
}
