//! File locks: `flock` and `fcntl` (process-owned and open-file-description)
//! locks conflict between processes and between open files as on a local file system.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use crate::sys;

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}

fn would_block(r: io::Result<impl Sized>) -> bool {
    matches!(r, Err(e) if matches!(e.raw_os_error(), Some(libc::EWOULDBLOCK) | Some(libc::EACCES)))
}

/// A child process holding a lock on a file until it is dropped.
struct Holder {
    pid: libc::pid_t,
    release: libc::c_int,
}

fn pipe() -> Result<[libc::c_int; 2]> {
    let mut fds = [0; 2];
    // SAFETY: the array has room for the two fds pipe writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        bail!("pipe: {}", io::Error::last_os_error());
    }
    Ok(fds)
}

impl Holder {
    /// Forks a child that takes the lock `take` runs on `file`, reports, and
    /// holds it until the parent closes the release pipe.
    fn spawn(file: &File, take: fn(libc::c_int) -> libc::c_int) -> Result<Self> {
        let (ready, release) = (pipe()?, pipe()?);
        let fd = std::os::fd::AsRawFd::as_raw_fd(file);
        // SAFETY: the child calls only async-signal-safe functions (the lock
        // call, read, write, close, _exit) before it exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: fds are the pipes made above and the open file; buffers are local.
            unsafe {
                let status: u8 = if take(fd) == 0 { b'1' } else { b'0' };
                libc::write(ready[1], (&status as *const u8).cast(), 1);
                let mut b = 0u8;
                libc::close(release[1]);
                libc::read(release[0], (&mut b as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        // SAFETY: closing the parent's copies of the child's ends, which it owns.
        unsafe {
            libc::close(ready[1]);
            libc::close(release[0]);
        }
        ensure!(pid > 0, "fork: {}", io::Error::last_os_error());
        let mut status = 0u8;
        // SAFETY: ready[0] is the pipe's read end; status is a 1-byte buffer.
        let n = unsafe { libc::read(ready[0], (&mut status as *mut u8).cast(), 1) };
        // SAFETY: the parent owns ready[0] and no longer needs it.
        unsafe { libc::close(ready[0]) };
        let holder = Self {
            pid,
            release: release[1],
        };
        ensure!(
            n == 1 && status == b'1',
            "the child process could not take its lock"
        );
        Ok(holder)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let mut status = 0;
        // SAFETY: closing the release pipe ends the child; waitpid reaps our own child.
        unsafe {
            libc::close(self.release);
            libc::waitpid(self.pid, &mut status, 0);
        }
    }
}

fn child_flock(fd: libc::c_int) -> libc::c_int {
    // SAFETY: flock takes no pointers; fd is the inherited open file.
    unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }
}

fn child_fcntl(fd: libc::c_int) -> libc::c_int {
    // SAFETY: flock is a plain C struct; zero is a valid start value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 10;
    // SAFETY: fl is valid and writable for the call.
    unsafe { libc::fcntl(fd, libc::F_SETLK, &mut fl as *mut libc::flock) }
}

pub fn flock(dir: &Path, _: crate::Sizes) -> Result<String> {
    let path = dir.join("lock");
    let (a, b) = (open(&path)?, open(&path)?);
    sys::flock(&a, libc::LOCK_EX).context("flock LOCK_EX")?;
    ensure!(
        would_block(sys::flock(&b, libc::LOCK_EX | libc::LOCK_NB)),
        "a second open file took an exclusive flock held by the first"
    );
    ensure!(
        would_block(sys::flock(&b, libc::LOCK_SH | libc::LOCK_NB)),
        "a shared flock was granted over an exclusive one"
    );
    sys::flock(&a, libc::LOCK_UN).context("flock LOCK_UN")?;
    sys::flock(&b, libc::LOCK_SH | libc::LOCK_NB).context("shared flock after unlock")?;
    sys::flock(&a, libc::LOCK_SH | libc::LOCK_NB).context("two shared flocks")?;
    sys::flock(&a, libc::LOCK_UN)?;
    sys::flock(&b, libc::LOCK_UN)?;

    let c = open(&path)?;
    let holder = Holder::spawn(&open(&path)?, child_flock)?;
    ensure!(
        would_block(sys::flock(&c, libc::LOCK_EX | libc::LOCK_NB)),
        "another process's flock did not block this one"
    );
    drop(holder);
    sys::flock(&c, libc::LOCK_EX | libc::LOCK_NB)
        .context("flock after the holding process exited")?;
    Ok("exclusive/shared between open files and processes".into())
}

pub fn fcntl_locks(dir: &Path, _: crate::Sizes) -> Result<String> {
    let path = dir.join("lock");
    let f = open(&path)?;
    let holder = Holder::spawn(&open(&path)?, child_fcntl)?;
    let seen = sys::fcntl_lock(&f, libc::F_GETLK, libc::F_WRLCK, 0, 10).context("F_GETLK")?;
    ensure!(
        seen.l_type == libc::F_WRLCK as libc::c_short,
        "F_GETLK does not see the other process's write lock (l_type {})",
        seen.l_type
    );
    ensure!(
        seen.l_pid == holder.pid,
        "F_GETLK names pid {}, the holder is {}",
        seen.l_pid,
        holder.pid
    );
    ensure!(
        would_block(sys::fcntl_lock(&f, libc::F_SETLK, libc::F_RDLCK, 5, 1)),
        "F_SETLK was granted over another process's write lock"
    );
    sys::fcntl_lock(&f, libc::F_SETLK, libc::F_WRLCK, 20, 10)
        .context("F_SETLK on a range nobody holds")?;
    drop(holder);
    sys::fcntl_lock(&f, libc::F_SETLK, libc::F_WRLCK, 0, 10)
        .context("F_SETLK after the holder exited")?;
    sys::fcntl_lock(&f, libc::F_SETLK, libc::F_UNLCK, 0, 0)?;

    // Open-file-description locks conflict between two opens in one process.
    let (a, b) = (open(&path)?, open(&path)?);
    sys::fcntl_lock(&a, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 0).context("F_OFD_SETLK")?;
    ensure!(
        would_block(sys::fcntl_lock(&b, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 0)),
        "two open files both got an OFD write lock"
    );
    sys::fcntl_lock(&a, libc::F_OFD_SETLK, libc::F_UNLCK, 0, 0)?;
    sys::fcntl_lock(&b, libc::F_OFD_SETLK, libc::F_WRLCK, 0, 0)
        .context("F_OFD_SETLK after unlock")?;
    Ok("POSIX range locks between processes, OFD locks between open files".into())
}
