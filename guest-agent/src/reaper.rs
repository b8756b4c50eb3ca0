//! Collects the exit status of every child, orphans included.
//!
//! The agent is PID 1 in the guest (and a child subreaper on the host), so
//! every process whose parent dies lands here. One thread waits for any
//! child and records how it ended; RPCs block on the PID they care about.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal number.
    pub status: u32,
    pub at: SystemTime,
}

#[derive(Default)]
pub struct Reaper {
    exits: Mutex<HashMap<i32, Exit>>,
    changed: Condvar,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

/// The process-wide reaper; the first call starts its thread.
pub fn reaper() -> &'static Reaper {
    REAPER.get_or_init(|| {
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(reap_forever)
            .expect("spawn the reaper thread");
        Reaper::default()
    })
}

/// Makes orphaned descendants our children (PID 1 gets them anyway).
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag only.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn reap_forever() {
    let reaper = reaper();
    loop {
        let (pid, status) = match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, code as u32),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as u32),
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => {
                // No child yet (ECHILD): nothing to wait for until one is spawned.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let exit = Exit {
            status,
            at: SystemTime::now(),
        };
        tracing::debug!(pid = pid.as_raw(), status, "reaped");
        reaper
            .exits
            .lock()
            .expect("reaper lock")
            .insert(pid.as_raw(), exit);
        reaper.changed.notify_all();
    }
}

impl Reaper {
    /// Blocks until `pid` has exited.
    pub fn wait(&self, pid: i32) -> Exit {
        let mut exits = self.exits.lock().expect("reaper lock");
        loop {
            if let Some(exit) = exits.get(&pid) {
                return *exit;
            }
            exits = self.changed.wait(exits).expect("reaper lock");
        }
    }

    /// Like [`Reaper::wait`], giving up after `timeout`.
    pub fn wait_timeout(&self, pid: i32, timeout: Duration) -> Option<Exit> {
        let exits = self.exits.lock().expect("reaper lock");
        let (exits, _) = self
            .changed
            .wait_timeout_while(exits, timeout, |e| !e.contains_key(&pid))
            .expect("reaper lock");
        exits.get(&pid).copied()
    }

    /// Whether `pid` has exited, without blocking.
    pub fn exited(&self, pid: i32) -> Option<Exit> {
        self.exits.lock().expect("reaper lock").get(&pid).copied()
    }

    /// Drops the record of `pid` once nobody will ask for it again.
    pub fn forget(&self, pid: i32) {
        self.exits.lock().expect("reaper lock").remove(&pid);
    }
}
