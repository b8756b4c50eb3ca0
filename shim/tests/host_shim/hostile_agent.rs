//! The product (VM) backend through a real containerd, against a hostile guest
//! (issue 16, hole 5): an agent stand-in that answers every OomEvent at once
//! with ids of containers that are not in the pod (and some that are), and a
//! hull-vmm stand-in whose console floods without newlines and with invalid
//! UTF-8. The shim's memory, CPU and log volume stay bounded, only the pod's
//! own OOM events reach containerd, and the pod stays manageable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hull_protocol::agent::*;
use hull_protocol::agent_ttrpc::Agent;
use ttrpc::TtrpcContext;

use super::standin::{
    host_processes, power_off, recorded_pids, run_detached, runs_containers, scratch, serve,
};
use super::Lab;
use hull_tests::containerd::{ctr_events, stop_events};
use hull_tests::procs::{alive, cpu_secs, rss_kib};

/// The shim's resident memory may not pass this under either flood (the
/// debug build idles at ~10 MiB).
const SHIM_RSS_BOUND_KIB: u64 = 48 * 1024;
/// CPU the shim may use in the seconds after a flood ends.
const QUIET_CPU_SECS: f64 = 0.3;
/// The shim's pace and coalescing of OOM events (`backend::vm::oom`).
const OOM_MIN_CALL_GAP: Duration = Duration::from_millis(100);
const OOM_COALESCE: Duration = Duration::from_secs(1);
/// The shim's per-pod log limit (`backend::vm::console`) and its line cap.
const LOG_BURST: usize = 1000;
const LOG_PER_SEC: f64 = 50.0;
const MAX_LINE: usize = 2048;

/// An agent that runs containers as far as the shim can tell, and answers
/// OomEvent at once while `storm` is set (mostly with ids not in the pod).
struct HostileAgent {
    /// The pod's container, whose OOM events must reach containerd.
    member: String,
    storm: AtomicBool,
    oom_calls: Mutex<Vec<Instant>>,
    offered: AtomicUsize,
    /// Signals delivered, by container; WaitProcess returns once one arrives.
    signals: Mutex<HashMap<String, u32>>,
    signalled: Condvar,
    dir: PathBuf,
}

impl HostileAgent {
    fn new(member: &str, dir: &Path) -> Self {
        Self {
            member: member.into(),
            storm: AtomicBool::new(false),
            oom_calls: Mutex::new(Vec::new()),
            offered: AtomicUsize::new(0),
            signals: Mutex::new(HashMap::new()),
            signalled: Condvar::new(),
            dir: dir.into(),
        }
    }

    /// The `n`th id of the storm: one in eight is the pod's container, the
    /// rest are made up, empty, huge, path-like or full of escapes.
    fn storm_id(&self, n: usize) -> String {
        match n % 8 {
            0 => self.member.clone(),
            1 => String::new(),
            2 => "x".repeat(1 << 20),
            3 => "../../etc/passwd".into(),
            4 => format!("{}\n\u{1b}[2J\u{0}fake", self.member),
            5 => format!("{} ", self.member),
            _ => format!("foreign-{n}"),
        }
    }
}

impl Agent for HostileAgent {
    runs_containers!("hostile-agent stand-in");
    fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> ttrpc::Result<Empty> {
        self.signals
            .lock()
            .unwrap()
            .insert(req.container_id, req.signal);
        self.signalled.notify_all();
        Ok(Empty::new())
    }
    fn wait_process(
        &self,
        _: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let mut signals = self.signals.lock().unwrap();
        let signal = loop {
            if let Some(s) = signals.get(&req.container_id) {
                break *s;
            }
            signals = self.signalled.wait(signals).unwrap();
        };
        let mut r = WaitProcessResponse::new();
        r.exit_status = 128 + signal;
        Ok(r)
    }
    fn list_pids(&self, _: &TtrpcContext, _: ListPidsRequest) -> ttrpc::Result<ListPidsResponse> {
        let mut r = ListPidsResponse::new();
        r.pids = vec![1];
        Ok(r)
    }
    fn oom_event(&self, _: &TtrpcContext, req: OomEventRequest) -> ttrpc::Result<OomEventResponse> {
        let mut r = OomEventResponse::new();
        if self.storm.load(Ordering::SeqCst) {
            self.oom_calls.lock().unwrap().push(Instant::now());
            r.container_id = self.storm_id(self.offered.fetch_add(1, Ordering::SeqCst));
        } else {
            // Calm: no event within the call's timeout, as the real agent answers.
            std::thread::sleep(Duration::from_millis(req.timeout_ms.into()));
        }
        Ok(r)
    }
    fn remove_container(
        &self,
        _: &TtrpcContext,
        _: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        Ok(Empty::new())
    }
    fn destroy_sandbox(&self, _: &TtrpcContext, _: DestroySandboxRequest) -> ttrpc::Result<Empty> {
        power_off(&self.dir);
        Ok(Empty::new())
    }
}

/// Kills `id`, waits for its exit, deletes it; asserts the stand-ins are gone
/// and nothing of the pod is left.
fn kill_and_delete(lab: &Lab, id: &str, host_pids: &[String]) {
    let started = Instant::now();
    lab.ctr_ok(&["task", "kill", "-s", "KILL", id]);
    lab.wait_stopped(id);
    lab.ctr_ok(&["task", "delete", id]);
    lab.ctr_ok(&["containers", "rm", id]);
    println!("{id}: kill, exit and delete took {:?}", started.elapsed());
    lab.assert_clean();
    for pid in host_pids {
        assert!(
            !alive(pid),
            "stand-in {pid} (hull-vmm or virtiofsd) still runs"
        );
    }
}

/// Samples `pid`'s RSS every 50 ms while `until` is false; returns the peak.
fn peak_rss_while(pid: i32, mut until: impl FnMut() -> bool, limit: Duration) -> u64 {
    let started = Instant::now();
    let mut peak = rss_kib(pid);
    while !until() && started.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
        peak = peak.max(rss_kib(pid));
    }
    peak
}

/// CPU seconds `pid` uses over `window`.
fn cpu_over(pid: i32, window: Duration) -> f64 {
    let before = cpu_secs(pid);
    std::thread::sleep(window);
    cpu_secs(pid) - before
}

#[test]
fn an_oom_event_storm_with_foreign_ids_reaches_containerd_only_for_the_pods_container() {
    let dir = scratch("oom-storm");
    let agent = Arc::new(HostileAgent::new("o1", &dir));
    let (_server, front) = serve(&dir, agent.clone());
    let config = host_processes(&dir, &front, "", "agent_timeout_secs = 10\n");
    let lab = Lab::start_with("oom", "vm", &config);
    let events_log = lab.dir.join("events.txt");
    let sock = lab.dir.join("c.sock");
    let mut events = ctr_events(
        &["-a", sock.to_str().unwrap(), "-n", "hulltest"],
        &events_log,
    )
    .stderr(Stdio::null())
    .spawn()
    .expect("ctr events");
    let shim = run_detached(&lab, "o1");
    let host_pids = recorded_pids(&lab.dir.join("run"), "o1");
    assert_eq!(host_pids.len(), 2, "hull-vmm and virtiofsd: {host_pids:?}");
    let baseline = rss_kib(shim);

    // The storm: every OomEvent answered at once, for as long as the shim asks.
    const STORM: Duration = Duration::from_secs(12);
    let storm_started = Instant::now();
    agent.storm.store(true, Ordering::SeqCst);
    let peak = peak_rss_while(shim, || false, STORM);
    agent.storm.store(false, Ordering::SeqCst);
    let storm_secs = storm_started.elapsed().as_secs_f64();
    // Meanwhile and after, the pod answers.
    let ps_started = Instant::now();
    let ps = lab.ctr_ok(&["task", "ps", "o1"]);
    let ps_took = ps_started.elapsed();
    assert!(ps.lines().count() == 2, "{ps}");
    // A call in flight when the storm ended may still return one more id.
    std::thread::sleep(Duration::from_secs(1));
    let quiet = cpu_over(shim, Duration::from_secs(3));

    let calls = agent.oom_calls.lock().unwrap().clone();
    let offered = agent.offered.load(Ordering::SeqCst);
    let members_offered = offered.div_ceil(8);
    std::thread::sleep(Duration::from_millis(500));
    let (text, _) = stop_events(&mut events, &events_log);
    let ooms: Vec<&str> = text.lines().filter(|l| l.contains("/tasks/oom")).collect();
    let shortest_gap = calls
        .windows(2)
        .map(|w| w[1] - w[0])
        .min()
        .unwrap_or_default();
    println!(
        "FIGURES OOM storm {storm_secs:.1} s: {offered} events offered ({members_offered} for \
         the pod's container), {} OomEvent calls (shortest gap {shortest_gap:?}), {} OOM events \
         reached containerd; shim VmRSS baseline {baseline} KiB, peak {peak} KiB (bound \
         {SHIM_RSS_BOUND_KIB} KiB); shim CPU {quiet:.2} s in the 3 s after; ps took {ps_took:?}",
        calls.len(),
        ooms.len()
    );
    // Paced: the shim asks no faster than its minimum gap (a little scheduling slack).
    let most = (storm_secs / OOM_MIN_CALL_GAP.as_secs_f64()) as usize + 2;
    assert!(
        calls.len() <= most,
        "{} calls in {storm_secs:.1} s (at most {most})",
        calls.len()
    );
    assert!(calls.len() >= 40, "the storm ran: {} calls", calls.len());
    // Only the pod's container, at most once per coalescing interval, and at least once.
    assert!(
        ooms.iter().all(|l| l.contains("\"container_id\":\"o1\"")),
        "an OOM event for a foreign id reached containerd:\n{text}"
    );
    let most_ooms = (storm_secs / OOM_COALESCE.as_secs_f64()) as usize + 2;
    assert!(
        (1..=most_ooms).contains(&ooms.len()),
        "{} OOM events for o1 in {storm_secs:.1} s (at most {most_ooms}):\n{text}",
        ooms.len()
    );
    let log = lab.log();
    assert!(
        log.contains("OOM events dropped") && log.contains("not in this pod"),
        "the refused events are reported"
    );
    assert!(
        !log.contains("xxxxxxxxxxxxxxxx") && !log.contains("foreign-"),
        "foreign ids are counted, not logged"
    );
    assert!(
        peak < SHIM_RSS_BOUND_KIB,
        "shim RSS peaked at {peak} KiB, bound {SHIM_RSS_BOUND_KIB} KiB"
    );
    assert!(
        quiet < QUIET_CPU_SECS,
        "the shim used {quiet:.2} s of CPU in the 3 s after the storm"
    );
    assert!(ps_took < Duration::from_secs(2), "ps took {ps_took:?}");
    kill_and_delete(&lab, "o1", &host_pids);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Console lines of the containerd log for pod `pod`, and the lines the rate
/// limit summarised as not logged.
fn console_log(lab: &Lab, pod: &str) -> (usize, u64, Vec<String>) {
    // logfmt: the pod's field sits among the others (`... sandbox=f1 source=...`).
    let tag = format!(" sandbox={pod} ");
    let log = lab.log();
    let ours: Vec<&str> = log.lines().filter(|l| l.contains(&tag)).collect();
    let logged = ours
        .iter()
        .filter(|l| l.contains("source=\"guest console\"") && !l.contains("lines not logged"))
        .count();
    let summaries: Vec<String> = ours
        .iter()
        .filter(|l| l.contains("lines not logged"))
        .map(|l| l.chars().take(300).collect())
        .collect();
    let dropped = summaries
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("dropped="))?
                .parse::<u64>()
                .ok()
        })
        .sum();
    (logged, dropped, summaries)
}

#[test]
fn a_console_flood_without_newlines_keeps_the_shim_bounded_and_the_pod_manageable() {
    // 256 MiB without a newline, with invalid UTF-8 and terminal escapes,
    // as fast as `yes | tr | head` makes it; then the console closes.
    const FLOOD_MIB: usize = 256;
    let dir = scratch("console-flood");
    let done = dir.join("flood-done");
    let go = dir.join("flood-go");
    let agent = Arc::new(HostileAgent::new("f1", &dir));
    let (_server, front) = serve(&dir, agent);
    let console = format!(
        "while [ ! -e {go} ]; do sleep 0.05; done\n\
         yes \"$(printf 'ab\\377\\376\\033[2J\\200c')\" | tr -d '\\n' | head -c {FLOOD_MIB}M\n\
         : > {done}",
        done = done.display(),
        go = go.display()
    );
    let config = host_processes(&dir, &front, &console, "agent_timeout_secs = 10\n");
    let lab = Lab::start_with("flood", "vm", &config);
    let run_started = Instant::now();
    let shim = run_detached(&lab, "f1");
    let host_pids = recorded_pids(&lab.dir.join("run"), "f1");
    assert_eq!(host_pids.len(), 2, "hull-vmm and virtiofsd: {host_pids:?}");

    // While it floods: State and ListPids answer.
    let mut answers = Vec::new();
    let baseline = rss_kib(shim);
    let mut peak = baseline;
    std::fs::write(&go, "").unwrap();
    let flood_started = Instant::now();
    while !done.exists() {
        assert!(
            flood_started.elapsed() < Duration::from_secs(120),
            "the flood did not end"
        );
        for args in [&["task", "ls"][..], &["task", "ps", "f1"][..]] {
            let started = Instant::now();
            lab.ctr_ok(args);
            answers.push(started.elapsed());
        }
        peak = peak.max(rss_kib(shim));
    }
    let flood_secs = flood_started.elapsed().as_secs_f64();
    // Every line is either logged or counted in a summary (at the console's EOF).
    let total = (FLOOD_MIB << 20) / MAX_LINE + 1;
    let deadline = Instant::now() + Duration::from_secs(20);
    let (logged, dropped, summaries) = loop {
        peak = peak.max(rss_kib(shim));
        let seen = console_log(&lab, "f1");
        if seen.0 as u64 + seen.1 >= total as u64 || Instant::now() >= deadline {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = run_started.elapsed().as_secs_f64();
    let quiet = cpu_over(shim, Duration::from_secs(3));
    let slowest = answers.iter().max().copied().unwrap_or_default();
    println!(
        "FIGURES console flood {FLOOD_MIB} MiB in {flood_secs:.1} s ({total} lines of at most \
         {MAX_LINE} bytes): {logged} logged, {dropped} summarised as not logged in {} \
         summaries; shim VmRSS baseline {baseline} KiB, peak {peak} KiB (bound {SHIM_RSS_BOUND_KIB} KiB); shim CPU \
         {quiet:.2} s in the 3 s after; {} State/ListPids calls during the flood, slowest \
         {slowest:?}; summaries: {summaries:?}",
        summaries.len(),
        answers.len()
    );
    assert_eq!(
        logged as u64 + dropped,
        total as u64,
        "every console line is logged or counted"
    );
    let most = LOG_BURST + (LOG_PER_SEC * elapsed) as usize + 1;
    assert!(
        (LOG_BURST..=most).contains(&logged),
        "{logged} console lines logged in {elapsed:.1} s (burst {LOG_BURST}, at most {most})"
    );
    assert!(!summaries.is_empty(), "the drops are reported");
    assert!(
        peak < SHIM_RSS_BOUND_KIB,
        "shim RSS peaked at {peak} KiB, bound {SHIM_RSS_BOUND_KIB} KiB"
    );
    assert!(
        quiet < QUIET_CPU_SECS,
        "the shim used {quiet:.2} s of CPU in the 3 s after the flood"
    );
    assert!(
        !answers.is_empty() && slowest < Duration::from_secs(5),
        "State/ListPids during the flood: {answers:?}"
    );
    let log = lab.log();
    assert!(
        !log.contains('\u{1b}'),
        "no terminal escape reaches the log"
    );
    kill_and_delete(&lab, "f1", &host_pids);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}
