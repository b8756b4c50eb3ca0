//! The product (VM) backend through a real containerd, against an agent that
//! stops answering (issue 16, hole 6). hull-vmm and virtiofsd are stand-in
//! scripts (the first prints the agent's ready marker and points the pod's
//! vsock socket at this test's agent); the agent is a ttrpc server in this
//! process that answers the calls a container needs to start and never
//! answers SignalProcess, WaitProcess, OomEvent, RemoveContainer or
//! DestroySandbox.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hull_protocol::agent::*;
use hull_protocol::agent_ttrpc::Agent;
use ttrpc::TtrpcContext;

use super::standin::{
    host_processes, recorded_pids, run_detached, runs_containers, scratch, serve,
};
use super::Lab;
use hull_tests::procs::alive;

/// The shim's deadline for agent calls in this test (`agent_timeout_secs`).
const AGENT_TIMEOUT_SECS: u64 = 2;

/// Answers what a container needs to run; hangs on everything that stops one.
struct HungAgent;

fn hang() -> ! {
    loop {
        std::thread::park();
    }
}

impl Agent for HungAgent {
    runs_containers!("hung-agent stand-in");
    fn signal_process(&self, _: &TtrpcContext, _: SignalProcessRequest) -> ttrpc::Result<Empty> {
        hang()
    }
    fn wait_process(
        &self,
        _: &TtrpcContext,
        _: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        hang()
    }
    fn oom_event(&self, _: &TtrpcContext, _: OomEventRequest) -> ttrpc::Result<OomEventResponse> {
        hang()
    }
    fn remove_container(
        &self,
        _: &TtrpcContext,
        _: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        hang()
    }
    fn destroy_sandbox(&self, _: &TtrpcContext, _: DestroySandboxRequest) -> ttrpc::Result<Empty> {
        hang()
    }
}

#[test]
fn a_hung_agent_does_not_stall_state_and_kill_stops_its_vm_in_bounded_time() {
    let dir = scratch("hung-agent");
    let (_server, front) = serve(&dir, Arc::new(HungAgent));
    let config = host_processes(
        &dir,
        &front,
        "",
        &format!("agent_timeout_secs = {AGENT_TIMEOUT_SECS}\n"),
    );
    let lab = Lab::start_with("hung", "vm", &config);
    let shim_pid = run_detached(&lab, "h1").to_string();
    let tasks = lab.ctr_ok(&["task", "ls"]);
    assert!(
        tasks.lines().any(|l| l
            .split_whitespace()
            .eq(["h1", shim_pid.as_str(), "RUNNING"])),
        "the task runs with the shim's pid {shim_pid}: {tasks}"
    );
    let host_pids = recorded_pids(&lab.dir.join("run"), "h1");
    assert_eq!(host_pids.len(), 2, "hull-vmm and virtiofsd: {host_pids:?}");
    assert!(host_pids.iter().all(|p| alive(p)));

    // Kill hangs in the agent; State answers meanwhile.
    let kill = {
        let sock = lab.dir.join("c.sock");
        std::thread::spawn(move || {
            let started = Instant::now();
            let out = Command::new("timeout")
                .args(["60", "ctr", "-a", sock.to_str().unwrap(), "-n", "hulltest"])
                .args(["task", "kill", "-s", "KILL", "h1"])
                .output()
                .unwrap();
            (out, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let state_started = Instant::now();
    let tasks = lab.ctr_ok(&["task", "ls"]);
    let state_took = state_started.elapsed();
    assert!(tasks.contains("h1"), "{tasks}");
    assert!(
        state_took < Duration::from_secs(AGENT_TIMEOUT_SECS),
        "State took {state_took:?} while Kill hung"
    );
    let (out, kill_took) = kill.join().unwrap();
    assert!(
        out.status.success(),
        "kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bound = Duration::from_secs(AGENT_TIMEOUT_SECS + 2);
    assert!(
        kill_took < bound,
        "Kill returned after {kill_took:?}, bound {bound:?}"
    );
    println!(
        "hung agent: State answered in {state_took:?}, Kill returned in {kill_took:?} (agent timeout {AGENT_TIMEOUT_SECS} s)"
    );
    for pid in &host_pids {
        assert!(
            !alive(pid),
            "stand-in {pid} (hull-vmm or virtiofsd) still runs"
        );
    }
    // The task exits with a status; Delete answers at once.
    lab.wait_stopped("h1");
    let started = Instant::now();
    lab.ctr_ok(&["task", "delete", "h1"]);
    assert!(started.elapsed() < Duration::from_secs(AGENT_TIMEOUT_SECS));
    lab.ctr_ok(&["containers", "rm", "h1"]);
    lab.assert_clean();
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}
