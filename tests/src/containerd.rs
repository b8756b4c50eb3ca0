//! A test's private containerd: starting and stopping it with `tests/lab/containerd.sh`,
//! `ctr` calls bounded in time and its event stream, as the lab and host test crates drive it.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use crate::repo_root;

/// Runs `tests/lab/containerd.sh ACTION` for the containerd whose state is `ctrd_dir`
/// (`HULL_CTRD_DIR`), with `env` added (`HULL_SHIM_DIR`, `HULL_CONFIG`, ...); its output.
pub fn containerd_sh(action: &str, ctrd_dir: &Path, env: &[(&str, &OsStr)]) -> Output {
    Command::new(repo_root().join("tests/lab/containerd.sh"))
        .arg(action)
        .env("HULL_CTRD_DIR", ctrd_dir)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run tests/lab/containerd.sh {action}: {e}"))
}

/// Stops the containerd whose state is `ctrd_dir`, if it runs; errors are ignored (this runs
/// at exit and before a fresh start).
pub fn stop_containerd(ctrd_dir: &Path) {
    let _ = Command::new(repo_root().join("tests/lab/containerd.sh"))
        .arg("stop")
        .env("HULL_CTRD_DIR", ctrd_dir)
        .status();
}

/// `timeout SECS ctr GLOBAL... ARGS...` (`GLOBAL`: the address, a namespace), with `input`
/// on its stdin (or none); its output.
pub fn ctr(timeout_secs: u32, global: &[&str], args: &[&str], input: Option<&[u8]>) -> Output {
    let mut child = Command::new("timeout")
        .arg(timeout_secs.to_string())
        .arg("ctr")
        .args(global)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ctr");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
    }
    child.wait_with_output().unwrap()
}

/// `ctr GLOBAL... events` with its stdout to the file `log` (created afresh), ready to spawn.
pub fn ctr_events(global: &[&str], log: &Path) -> Command {
    let mut cmd = Command::new("ctr");
    cmd.args(global)
        .arg("events")
        .stdout(std::fs::File::create(log).unwrap());
    cmd
}

/// Stops `events` (a spawned [`ctr_events`]) and reads what it wrote to `log`: the text, and
/// the task topics in it (`/tasks/create`, ...) in order.
pub fn stop_events(events: &mut Child, log: &Path) -> (String, Vec<String>) {
    let _ = events.kill();
    let _ = events.wait();
    let text = std::fs::read_to_string(log).unwrap();
    let topics = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|t| t.starts_with("/tasks/"))
        .map(str::to_string)
        .collect();
    (text, topics)
}

/// Stops `events` (see [`stop_events`]) and asserts the task events of one container that was
/// created and started, ran `execs` execs to their exit, was paused and resumed, exited by
/// SIGTERM (status 143) and was deleted: their topics in that order.
pub fn assert_task_lifecycle(events: &mut Child, log: &Path, execs: usize) {
    let (text, topics) = stop_events(events, log);
    let mut expected = vec!["/tasks/create", "/tasks/start"];
    for _ in 0..execs {
        expected.extend(["/tasks/exec-added", "/tasks/exec-started", "/tasks/exit"]);
    }
    expected.extend([
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ]);
    assert_eq!(topics, expected, "{text}");
    assert!(text.contains("\"exit_status\":143"), "{text}");
}
