//! Process file descriptors: a handle on one process that a reused PID
//! cannot redirect (exec joins a container through its init's pidfd).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A pidfd for `pid` (close-on-exec). The caller must know `pid` has not
/// been reaped yet (its own child, or a process it is still waiting on).
pub fn open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor
    // or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Whether the process has not been reaped yet (a zombie still counts): what
/// was read through /proc/PID before this returned true belonged to it.
pub fn alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: signal 0 only checks that the process exists; the null siginfo
    // pointer is allowed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_alive_until_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("0")
            .spawn()
            .unwrap();
        let fd = open(child.id() as i32).unwrap();
        assert!(alive(&fd), "not yet reaped");
        child.wait().unwrap();
        assert!(!alive(&fd), "reaped");
        assert!(open(-1).is_err());
    }
}
