//! How many syscall numbers the kernel under the container answers: each number
//! is called once, with every argument -1, in a forked child (so whatever it
//! does stays in that child), and counted unless it returns ENOSYS.

use std::time::Duration;

use crate::probe_data::SyscallScan;

/// Highest x86_64 syscall number tried (6.12 ends at 462, `mseal`; a few more for newer kernels).
pub const MAX_NR: u32 = 470;

/// Not tried: they fork the probe itself or block it (and exist on every Linux):
/// pause, clone, fork, vfork, vhangup, clone3.
pub const SKIPPED: &[u32] = &[34, 56, 57, 58, 153, 435];

/// How one syscall number was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Returned (an error other than ENOSYS, or success).
    Returned,
    /// Returned ENOSYS.
    NotImplemented,
    /// The child ended, crashed (some kernels answer a hole in the table with
    /// SIGILL) or blocked inside it: the kernel handled it.
    Handled,
    /// The child was killed by SIGSYS (seccomp).
    Seccomp,
}

/// Calls syscall `nr` with all arguments -1 in a forked child.
pub fn probe(nr: u32, wait: Duration) -> std::io::Result<Answer> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let [rd, wr] = fds;
    // SAFETY: the probe is single-threaded; the child only makes raw syscalls and _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: closing the two fds pipe2 just gave us.
        unsafe {
            libc::close(rd);
            libc::close(wr);
        }
        return Err(e);
    }
    if pid == 0 {
        // SAFETY: in the child: the syscall acts on this throwaway process only
        // (every argument is invalid); then report one byte and _exit.
        unsafe {
            let r = libc::syscall(
                libc::c_long::from(nr as i32),
                -1i64,
                -1i64,
                -1i64,
                -1i64,
                -1i64,
                -1i64,
            );
            let enosys = r == -1 && *libc::__errno_location() == libc::ENOSYS;
            let b: u8 = if enosys { b'N' } else { b'Y' };
            libc::write(wr, (&b as *const u8).cast(), 1);
            libc::_exit(0);
        }
    }
    // SAFETY: the parent's copy of the write end is ours to close.
    unsafe { libc::close(wr) };
    let mut pfd = libc::pollfd {
        fd: rd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: pfd is one valid pollfd.
    let ready = unsafe { libc::poll(&mut pfd, 1, wait.as_millis() as libc::c_int) };
    let mut byte = 0u8;
    let got = ready > 0
        // SAFETY: reading one byte into `byte`.
        && unsafe { libc::read(rd, (&mut byte as *mut u8).cast(), 1) } == 1;
    if !got {
        // SAFETY: pid is our child; killing it is harmless if it already exited.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let mut status = 0;
    // SAFETY: reaping our own child; status is a valid int.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
        libc::close(rd);
    }
    Ok(match (got, byte) {
        (true, b'N') => Answer::NotImplemented,
        (true, _) => Answer::Returned,
        (false, _) if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS => {
            Answer::Seccomp
        }
        (false, _) => Answer::Handled,
    })
}

/// Tries every number from 0 to `MAX_NR` but the skipped ones.
pub fn scan(wait: Duration) -> std::io::Result<SyscallScan> {
    let mut s = SyscallScan {
        max_nr: MAX_NR,
        skipped: SKIPPED.to_vec(),
        ..Default::default()
    };
    for nr in (0..=MAX_NR).filter(|n| !SKIPPED.contains(n)) {
        s.probed += 1;
        match probe(nr, wait)? {
            Answer::Returned | Answer::Handled => s.answered += 1,
            Answer::NotImplemented => s.enosys += 1,
            Answer::Seccomp => s.sigsys += 1,
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn getppid_is_answered_and_a_missing_number_is_enosys() {
        assert_eq!(probe(110, WAIT).unwrap(), Answer::Returned);
        // Far beyond the end of the x86_64 table (some kernels trap holes in it, like 335, with SIGILL).
        assert_eq!(probe(1000, WAIT).unwrap(), Answer::NotImplemented);
    }

    #[test]
    fn exit_in_the_child_counts_as_handled() {
        assert_eq!(probe(60, WAIT).unwrap(), Answer::Handled);
    }
}
