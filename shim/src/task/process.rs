//! One containerd process (a container's init or an exec): its state machine,
//! its stdio wiring, and the cell its exit is reported through.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::SystemTime;

use containerd_shim::api::Status as ApiStatus;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;

use super::stdio::SharedStdin;

/// The pid reported to containerd for every task and exec: the shim's own, as
/// Kata does. The guest's pids mean nothing on the host, and containerd treats
/// a task pid as a host pid (signals, `/proc/<pid>/ns/*` in CRI specs);
/// `Pids` still lists the guest's pids.
pub fn task_pid() -> u32 {
    std::process::id()
}

/// Where a process is in its life. Transitions: Created → Running ⇄ Paused → Stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    /// The status as containerd's API spells it.
    pub fn to_api(self) -> ApiStatus {
        match self {
            Status::Created => ApiStatus::CREATED,
            Status::Running => ApiStatus::RUNNING,
            Status::Paused => ApiStatus::PAUSED,
            Status::Stopped => ApiStatus::STOPPED,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: u32,
    pub at: SystemTime,
}

impl Exit {
    /// The exit time as a protobuf timestamp.
    pub fn timestamp(&self) -> Timestamp {
        to_timestamp(self.at)
    }
}

/// Converts a time to a protobuf timestamp.
pub fn to_timestamp(at: SystemTime) -> Timestamp {
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = i32::try_from(d.subsec_nanos()).unwrap_or(0);
    ts
}

/// Set once when the process exits; `Wait` blocks on it.
#[derive(Debug, Default)]
pub struct ExitCell {
    exit: Mutex<Option<Exit>>,
    cv: Condvar,
}

impl ExitCell {
    /// Records the exit and wakes every waiter.
    pub fn set(&self, exit: Exit) {
        let mut guard = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        guard.get_or_insert(exit);
        self.cv.notify_all();
    }

    /// The exit, if it happened.
    pub fn get(&self) -> Option<Exit> {
        *self.exit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> Exit {
        let mut guard = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(exit) = *guard {
                return exit;
            }
            guard = self.cv.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// containerd's stdio strings for a process, echoed back in `State`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// One process as containerd sees it.
pub struct Process {
    /// The process's pid in the guest (the fake backend's: on the host), for logs.
    pub guest_pid: u32,
    pub status: Status,
    pub stdio: StdioPaths,
    pub exit: Arc<ExitCell>,
    /// The process's stdin; empty once closed.
    pub stdin: SharedStdin,
    /// Output relays; joined (drained) before the exit is published.
    pub outputs: Vec<JoinHandle<()>>,
    /// A `binary://` logger, reaped after the outputs are drained.
    pub logger: Option<std::process::Child>,
}

impl Process {
    /// A created process that has not started.
    pub fn new(stdio: StdioPaths) -> Self {
        Self {
            guest_pid: 0,
            status: Status::Created,
            stdio,
            exit: Arc::default(),
            stdin: Arc::default(),
            outputs: Vec::new(),
            logger: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_cell_wakes_waiters_and_keeps_the_first_exit() {
        let cell = Arc::new(ExitCell::default());
        let waiter = {
            let cell = cell.clone();
            std::thread::spawn(move || cell.wait())
        };
        assert_eq!(cell.get(), None);
        let first = Exit {
            code: 7,
            at: SystemTime::now(),
        };
        cell.set(first);
        cell.set(Exit {
            code: 9,
            at: SystemTime::now(),
        });
        assert_eq!(waiter.join().unwrap(), first);
        assert_eq!(cell.wait().code, 7);
    }

    #[test]
    fn timestamps_convert() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::new(5, 7);
        let ts = to_timestamp(at);
        assert_eq!((ts.seconds, ts.nanos), (5, 7));
    }
}
