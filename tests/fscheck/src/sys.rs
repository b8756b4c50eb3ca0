//! Safe wrappers for the system calls the cases need that `std` lacks
//! (xattrs, renameat2, O_TMPFILE, locks, fallocate, SEEK_DATA, statvfs, utimensat).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

fn cname(name: &str) -> io::Result<CString> {
    CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name has a NUL byte"))
}

/// Turns a -1 return into the thread's errno.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

pub fn setxattr(path: &Path, name: &str, value: &[u8], flags: libc::c_int) -> io::Result<()> {
    let (p, n) = (cpath(path)?, cname(name)?);
    // SAFETY: both strings are NUL-terminated and live across the call; value
    // is a valid slice of value.len() bytes.
    check(unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })?;
    Ok(())
}

pub fn getxattr(path: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (p, n) = (cpath(path)?, cname(name)?);
    let mut buf = vec![0u8; 4096];
    // SAFETY: the strings are NUL-terminated; buf is writable for buf.len() bytes.
    let len = check_size(unsafe {
        libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    })?;
    buf.truncate(len);
    Ok(buf)
}

/// The size getxattr reports when asked with an empty buffer.
pub fn getxattr_size(path: &Path, name: &str) -> io::Result<usize> {
    let (p, n) = (cpath(path)?, cname(name)?);
    // SAFETY: a null buffer of size 0 asks only for the value's size.
    check_size(unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) })
}

pub fn listxattr(path: &Path) -> io::Result<Vec<String>> {
    let p = cpath(path)?;
    let mut buf = vec![0u8; 65536];
    // SAFETY: the path is NUL-terminated; buf is writable for buf.len() bytes.
    let len =
        check_size(unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })?;
    Ok(buf[..len]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

pub fn removexattr(path: &Path, name: &str) -> io::Result<()> {
    let (p, n) = (cpath(path)?, cname(name)?);
    // SAFETY: both strings are NUL-terminated and live across the call.
    check(unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) })?;
    Ok(())
}

pub fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let (f, t) = (cpath(from)?, cpath(to)?);
    // SAFETY: both paths are NUL-terminated and relative to the working
    // directory. A raw syscall: the musl that Rust links lacks renameat2().
    let ret = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    check(ret as libc::c_int)?;
    Ok(())
}

/// An unnamed file in `dir` (O_TMPFILE), readable and writable.
pub fn open_tmpfile(dir: &Path) -> io::Result<File> {
    let d = cpath(dir)?;
    // SAFETY: the path is NUL-terminated; the mode argument is required with O_TMPFILE.
    let fd = check(unsafe {
        libc::open(
            d.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600,
        )
    })?;
    // SAFETY: fd was just returned by open and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Gives `file` (an O_TMPFILE) the name `to` through /proc/self/fd.
pub fn link_fd(file: &File, to: &Path) -> io::Result<()> {
    let from = cpath(Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd())))?;
    let t = cpath(to)?;
    // SAFETY: both paths are NUL-terminated; AT_SYMLINK_FOLLOW resolves the fd link.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })?;
    Ok(())
}

pub fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: the fd is open for the call's duration; flock takes no pointers.
    check(unsafe { libc::flock(file.as_raw_fd(), op) })?;
    Ok(())
}

/// A byte-range lock request: `cmd` is F_SETLK, F_GETLK, F_OFD_SETLK or F_OFD_GETLK.
pub fn fcntl_lock(
    file: &File,
    cmd: libc::c_int,
    kind: libc::c_int,
    start: i64,
    len: i64,
) -> io::Result<libc::flock> {
    // SAFETY: flock is a plain C struct; all-zero is a valid value (l_pid 0 is required for OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: fl is a valid, writable struct flock for the whole call.
    check(unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl as *mut libc::flock) })?;
    Ok(fl)
}

pub fn fallocate(file: &File, mode: libc::c_int, offset: i64, len: i64) -> io::Result<()> {
    // SAFETY: the fd is open for the call's duration; fallocate takes no pointers.
    check(unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) })?;
    Ok(())
}

/// lseek with SEEK_DATA or SEEK_HOLE.
pub fn seek(file: &File, offset: i64, whence: libc::c_int) -> io::Result<i64> {
    // SAFETY: the fd is open for the call's duration; lseek takes no pointers.
    let ret = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let p = cpath(path)?;
    // SAFETY: statvfs is a plain C struct that the call fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated; st is writable.
    check(unsafe { libc::statvfs(p.as_ptr(), &mut st) })?;
    Ok(st)
}

/// Sets atime and mtime (seconds, nanoseconds) of `path`.
pub fn utimens(path: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let p = cpath(path)?;
    let times = [
        libc::timespec {
            tv_sec: atime.0,
            tv_nsec: atime.1,
        },
        libc::timespec {
            tv_sec: mtime.0,
            tv_nsec: mtime.1,
        },
    ];
    // SAFETY: the path is NUL-terminated; times holds the two timespecs utimensat reads.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) })?;
    Ok(())
}

/// An empty regular file made with one mknod call (cheaper than create + close).
pub fn mknod_file(path: &Path) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: the path is NUL-terminated; S_IFREG needs no device number.
    check(unsafe { libc::mknod(p.as_ptr(), libc::S_IFREG | 0o644, 0) })?;
    Ok(())
}
