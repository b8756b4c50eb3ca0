//! Host processes a sandbox starts (hull-vmm, virtiofsd; the fake's containers),
//! recorded in `<state_dir>/host-pids` so the `delete` subcommand can stop them
//! after the shim died. Each line is `<pid> <start time>`: a pid reused by an
//! unrelated process since is never killed.

use std::io::Write;
use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// File name in the pod's state directory.
pub const FILE: &str = "host-pids";

/// The process's start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may contain spaces, start after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Appends a process to the pod's record.
pub fn record(state_dir: &Path, pid: u32) -> std::io::Result<()> {
    let start = start_time(pid).ok_or_else(|| std::io::Error::other("process is gone"))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state_dir.join(FILE))?;
    writeln!(file, "{pid} {start}")
}

/// SIGKILLs every recorded process that is still the one recorded; returns how many.
pub fn kill_recorded(state_dir: &Path) -> usize {
    let Ok(text) = std::fs::read_to_string(state_dir.join(FILE)) else {
        return 0;
    };
    let mut killed = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(pid)), Some(Ok(start))) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(pid32) = u32::try_from(pid) else {
            continue;
        };
        if start_time(pid32) == Some(start) {
            let Ok(raw) = i32::try_from(pid32) else {
                continue;
            };
            if kill(Pid::from_raw(raw), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
    }
    killed
}

/// Forgets the record (the sandbox stopped its processes itself).
pub fn clear(state_dir: &Path) {
    let _ = std::fs::remove_file(state_dir.join(FILE));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_processes_are_killed_and_stale_entries_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        record(dir.path(), child.id()).unwrap();
        // A stale entry: our own pid with a wrong start time must survive.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        writeln!(f, "{} 1\ngarbage", std::process::id()).unwrap();
        assert_eq!(kill_recorded(dir.path()), 1);
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        clear(dir.path());
        assert!(!dir.path().join(FILE).exists());
        assert_eq!(kill_recorded(dir.path()), 0);
    }
}
