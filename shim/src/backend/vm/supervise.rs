//! Watches the pod's virtiofsd: when it dies under a running VM, the guest's
//! share is gone and every file access of the pod's containers hangs for good,
//! so the VM is ended the way a dead hull-vmm ends it (every task exits with a
//! status, Delete leaves nothing behind). Process handles are pidfds, so a
//! recycled pid is never signalled.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::thread::JoinHandle;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};

/// Errors of setting up the watch.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error(
        "cannot open a pidfd for {what} (pid {pid}); the kernel needs pidfd_open (Linux 5.3+)"
    )]
    Pidfd {
        what: &'static str,
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the watcher's wake-up pipe")]
    Pipe(#[source] nix::Error),
    #[error("cannot duplicate the agent connection for the watcher")]
    Dup(#[source] std::io::Error),
}

/// A pidfd for `pid`, which must be an unreaped child of this process (so the
/// pid cannot have been recycled).
pub fn pidfd(what: &'static str, pid: u32) -> Result<OwnedFd, SuperviseError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // (or -1); it touches no memory of this process.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(SuperviseError::Pidfd {
            what,
            pid,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends SIGKILL to the process behind `pidfd` (a no-op once it has exited).
pub fn kill(pidfd: &OwnedFd) {
    // SAFETY: pidfd_send_signal on a descriptor this process owns, with no
    // siginfo (null) and no flags; it touches no memory of this process.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!("SIGKILL through a pidfd: {e}");
        }
    }
}

/// Whether the process behind `pidfd` has exited (it may not be reaped yet).
pub fn exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// How the process behind `pidfd` ended, without reaping it (its `Child`
/// reaps it at teardown).
fn exit_status(pidfd: &OwnedFd) -> String {
    match waitid(
        Id::PIDFd(pidfd.as_fd()),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
    ) {
        Ok(WaitStatus::Exited(_, code)) => format!("exit status {code}"),
        Ok(WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("status unknown: {e}"),
    }
}

/// A running watch; [`Watch::stop`] (or drop) ends it without firing.
pub struct Watch {
    /// Closing the write end of this pipe wakes the watcher to end it.
    wake: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Watch {
    /// Calls `on_exit` with the exit status once the process behind `pidfd`
    /// exits, unless the watch is stopped first.
    pub fn start(
        pidfd: OwnedFd,
        on_exit: impl FnOnce(String) + Send + 'static,
    ) -> Result<Self, SuperviseError> {
        let (stop_rx, stop_tx) = nix::unistd::pipe().map_err(SuperviseError::Pipe)?;
        let thread = std::thread::spawn(move || {
            let exited = loop {
                let mut fds = [
                    PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(stop_rx.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => {
                        tracing::error!("watching virtiofsd failed, the watch ends: {e}");
                        break false;
                    }
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                if ready(&fds[1]) {
                    break false;
                }
                if ready(&fds[0]) {
                    break true;
                }
            };
            if exited {
                on_exit(exit_status(&pidfd));
            }
        });
        Ok(Self {
            wake: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Ends the watch and waits for its thread (which may be running `on_exit`).
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    #[test]
    fn a_killed_process_fires_the_watch_with_its_status() {
        let mut child = Command::new("sleep").arg("1000").spawn().unwrap();
        let fd = pidfd("sleep", child.id()).unwrap();
        let killer = fd.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        let watch = Watch::start(fd, move |status| tx.send(status).unwrap()).unwrap();
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "no call while it runs"
        );
        kill(&killer);
        let status = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(status, "killed by SIGKILL");
        assert!(exited(&killer));
        // Not reaped by the watch: the Child still reaps it.
        assert!(child.wait().unwrap().code().is_none());
        kill(&killer);
        watch.stop();
    }

    #[test]
    fn a_stopped_watch_never_fires() {
        let mut child = Command::new("sleep").arg("1000").spawn().unwrap();
        let fd = pidfd("sleep", child.id()).unwrap();
        assert!(!exited(&fd));
        let (tx, rx) = mpsc::channel::<String>();
        let watch = Watch::start(fd, move |status| tx.send(status).unwrap()).unwrap();
        let started = Instant::now();
        watch.stop();
        assert!(started.elapsed() < Duration::from_secs(1), "stop is prompt");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    }

    #[test]
    fn a_pid_that_is_not_running_is_an_error() {
        let err = pidfd("nothing", u32::MAX >> 1).unwrap_err();
        assert!(err.to_string().contains("nothing"), "{err}");
    }
}
