//! Confinement of the hull-vmm process that comes before the seccomp filters: no_new_privs,
//! resource limits (open files, written file size, processes) and the jail (a PID namespace
//! of its own, mount, IPC, UTS and network namespaces, a pivoted root holding only the pod's
//! socket directory, an unprivileged uid), from the VM configuration.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hull_protocol::vm::JailConfig;

use crate::config::VmConfig;

/// Errors while confining the process.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// prctl(PR_SET_NO_NEW_PRIVS) failed.
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] std::io::Error),
    /// setrlimit failed (a hard limit above the current one needs CAP_SYS_RESOURCE).
    #[error("cannot set {0} to {1} (lower limits.{2} in the VM config, or run hull-vmm as root)")]
    Rlimit(&'static str, u64, &'static str, #[source] std::io::Error),
    /// A disk's size could not be read to size RLIMIT_FSIZE.
    #[error("cannot read the size of disk {0}")]
    DiskSize(String, #[source] std::io::Error),
    /// A step of the jail's setup failed (hull-vmm needs root, CAP_SYS_ADMIN, to jail itself).
    #[error("jail: {0} failed (hull-vmm must start as root to jail itself)")]
    Jail(String, #[source] std::io::Error),
}

fn jail_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::Jail(what, e)
}

fn check(what: &str, rc: libc::c_long) -> Result<(), Error> {
    if rc < 0 {
        return Err(Error::Jail(
            what.to_string(),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn cstr(path: &Path) -> Result<CString, Error> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        Error::Jail(
            format!("path {}", path.display()),
            std::io::Error::from_raw_os_error(libc::EINVAL),
        )
    })
}

/// mount(2) with optional source, type and data.
fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), Error> {
    let what = format!("mount of {}", target.display());
    let src = src.map(cstr).transpose()?;
    let target = cstr(target)?;
    let fstype = fstype.map(|t| CString::new(t).unwrap_or_default());
    let data = data.map(|d| CString::new(d).unwrap_or_default());
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string that outlives the call, or null.
    let rc = unsafe {
        libc::mount(
            ptr(&src),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    check(&what, rc.into())
}

/// Bind-mounts `src` on `target`, then makes the bind nosuid, nodev, noexec (and read-only).
fn bind(src: &Path, target: &Path, read_only: bool) -> Result<(), Error> {
    mount(Some(src), target, None, libc::MS_BIND, None)?;
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    flags |= libc::MS_NOEXEC;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    mount(None, target, None, flags, None)
}

/// The name the process outside the VMM's PID namespace shows (`/proc/<pid>/comm`).
pub const HOLDER_NAME: &str = hull_protocol::vm::VMM_HOLDER_NAME;

/// The holder's pidfd in the VMM of [`enter_pid_namespace`] (-1: none), kept to re-arm the
/// parent-death signal after the uid drop, which clears it.
static HOLDER_PIDFD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

/// Sets the parent-death signal to SIGKILL and exits if the holder behind `pidfd` already
/// died (a pidfd polls readable once its process has exited: the signal was then missed).
fn arm_parent_death(pidfd: libc::c_int) {
    let mut alive = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: prctl with integer arguments; poll on one valid pollfd without waiting.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0
            || libc::poll(&mut alive, 1, 0) != 0
        {
            libc::_exit(crate::exit::EXIT_VMM_ERROR);
        }
    }
}

/// Arms the parent-death signal again after a credential change cleared it, then lets the
/// holder's pidfd go.
fn rearm_parent_death() {
    let fd = HOLDER_PIDFD.swap(-1, std::sync::atomic::Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    arm_parent_death(fd);
    // SAFETY: closing the pidfd this process owns.
    unsafe { libc::close(fd) };
}

/// Puts the rest of this process in a PID namespace of its own: unshare, then fork. The child
/// (PID 1 of the new namespace, where it sees no other process and no other pod's VMM) returns
/// and becomes the VMM; it dies with SIGKILL if the parent dies. The parent stays outside as
/// [`HOLDER_NAME`], the process its spawner (the shim) knows: it passes SIGTERM, SIGINT and
/// SIGHUP on to the VMM and ends as the VMM ends (same exit code, or killed by the same
/// signal), so the spawner sees one process. Call first thing, while single-threaded and
/// before KVM is opened (a VM belongs to the process that made it).
pub fn enter_pid_namespace() -> Result<(), Error> {
    const FORWARD: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];
    // SAFETY: plain sigset manipulation on local values.
    let (mut set, mut old) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    // SAFETY: `set` and `old` are valid sigsets owned by this frame.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in FORWARD.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *sig);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
    }
    // SAFETY: unshare with flags only; only children are born in the new namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWPID) };
    check("unshare of the PID namespace", rc.into())?;
    // The child checks the parent is alive through a pidfd: it cannot name the parent by pid
    // from inside the new namespace (getppid() is 0 there).
    // SAFETY: getpid has no preconditions; pidfd_open with our own pid and no flags.
    let parent = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    check("pidfd_open of hull-vmm", parent)?;
    // SAFETY: the process is single-threaded here (the caller's contract), so the child is a
    // full copy; it only returns into main.
    let pid = unsafe { libc::fork() };
    check("fork into the PID namespace", pid.into())?;
    if pid == 0 {
        arm_parent_death(parent as libc::c_int);
        // SAFETY: sigprocmask with the valid set saved above.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        HOLDER_PIDFD.store(parent as libc::c_int, std::sync::atomic::Ordering::Relaxed);
        return Ok(());
    }
    // SAFETY: the holder's own copy of the pidfd, not needed by it.
    unsafe { libc::close(parent as libc::c_int) };
    // The holder stays root outside the jail: it gets a filter of its own. Compiled here,
    // where it may still allocate; a failure ends the VMM with the holder (no unfiltered
    // holder is left).
    let filter = match crate::seccomp::holder(pid) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("hull-vmm-jail: {}", hull_protocol::error::chain(&e));
            // SAFETY: killing our own child; then leaving without unwinding.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::_exit(1)
            }
        }
    };
    hold(pid, &set, &filter)
}

/// The holder's life, under `filter`: forward the signals in `set` to `child` until it ends,
/// then end alike.
fn hold(child: libc::pid_t, set: &libc::sigset_t, filter: &seccompiler::BpfProgram) -> ! {
    // SAFETY: prctl with a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"hull-vmm-jail".as_ptr(), 0, 0, 0) };
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Holder, filter) {
        eprintln!("hull-vmm-jail: {}", hull_protocol::error::chain(&e));
        // SAFETY: killing our own child; then leaving without unwinding.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::_exit(1)
        }
    }
    loop {
        // SAFETY: `set` is a valid sigset; no siginfo is asked for.
        let sig = unsafe { libc::sigwaitinfo(set, std::ptr::null_mut()) };
        if sig > 0 && sig != libc::SIGCHLD {
            // SAFETY: signalling our own child, which cannot be reaped behind our back.
            unsafe { libc::kill(child, sig) };
            continue;
        }
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer; `child` is our child.
        let rc = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
        if rc != child {
            continue;
        }
        if libc::WIFEXITED(status) {
            // SAFETY: leaving the holder; nothing of it needs unwinding.
            unsafe { libc::_exit(libc::WEXITSTATUS(status)) };
        }
        let sig = libc::WTERMSIG(status);
        // SAFETY: dying of the VMM's signal: default action, unblocked, raised at ourselves.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let mut one = std::mem::zeroed();
            libc::sigemptyset(&mut one);
            libc::sigaddset(&mut one, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
            libc::kill(libc::getpid(), sig);
            libc::_exit(128 + sig);
        }
    }
}

/// Enters the jail: new mount, IPC, UTS and network namespaces; the root pivoted to a fresh read-only
/// tmpfs holding `jail.dir` at its own path (a non-recursive bind: its files and sockets,
/// each subdirectory covered by an empty read-only tmpfs) and this process's own /proc entry
/// at /proc/self; then the drop to `jail.gid`/`jail.uid` (every thread: glibc broadcasts
/// it), which also clears every capability. Call with every file the VMM needs open (after
/// the build) and before the vCPU threads start, so they are born inside.
pub fn enter(jail: &JailConfig) -> Result<(), Error> {
    // A network namespace of its own: hull-vmm's only network is the tap descriptors it was
    // handed (and Unix sockets by path); nothing in it can open another interface.
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET;
    // SAFETY: unshare with flags only; it affects the calling (main) thread.
    check("unshare", unsafe { libc::unshare(flags) }.into())?;
    let root = Path::new("/");
    mount(None, root, None, libc::MS_REC | libc::MS_PRIVATE, None)?;
    let open_path = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(p)
            .map_err(jail_err(format!("open of {}", p.display())))
    };
    let dir = open_path(&jail.dir)?;
    let own_proc = open_path(Path::new("/proc/self"))?;
    let subdirs: Vec<std::ffi::OsString> = std::fs::read_dir(&jail.dir)
        .map_err(jail_err(format!("listing {}", jail.dir.display())))?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name())
        .collect();
    let fd_path = |f: &std::fs::File| format!("/proc/self/fd/{}", f.as_raw_fd());
    // The new root: a tmpfs over the directory itself (only in this mount namespace).
    let new_root = jail.dir.as_path();
    let base = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let tmpfs = Some(Path::new("tmpfs"));
    mount(
        tmpfs,
        new_root,
        Some("tmpfs"),
        base,
        Some("mode=0755,size=1m"),
    )?;
    let inside = new_root.join(jail.dir.strip_prefix("/").unwrap_or(&jail.dir));
    std::fs::create_dir_all(&inside).map_err(jail_err("creating the jail's directory"))?;
    bind(Path::new(&fd_path(&dir)), &inside, false)?;
    for name in &subdirs {
        mount(
            tmpfs,
            &inside.join(name),
            Some("tmpfs"),
            base | libc::MS_RDONLY,
            Some("mode=0,size=4k"),
        )?;
    }
    let proc_self = new_root.join("proc/self");
    std::fs::create_dir_all(&proc_self).map_err(jail_err("creating /proc/self"))?;
    bind(Path::new(&fd_path(&own_proc)), &proc_self, true)?;
    drop((dir, own_proc));
    let new_root_c = cstr(new_root)?;
    // SAFETY: a NUL-terminated path.
    check("chdir", unsafe { libc::chdir(new_root_c.as_ptr()) }.into())?;
    let dot = c".";
    // SAFETY: pivot_root(".", ".") stacks the old root on the new one; both are NUL-terminated.
    check("pivot_root", unsafe {
        libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr())
    })?;
    // SAFETY: detaches the old root, now mounted on top of "."; the path is NUL-terminated.
    let rc = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
    check("unmount of the old root", rc.into())?;
    // SAFETY: a NUL-terminated path.
    check("chdir /", unsafe { libc::chdir(c"/".as_ptr()) }.into())?;
    mount(
        None,
        root,
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | base,
        None,
    )?;
    let host = b"hull-vmm";
    // SAFETY: `host` is valid for its length.
    let rc = unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) };
    check("sethostname", rc.into())?;
    drop_ids(jail.uid, jail.gid)?;
    rearm_parent_death();
    Ok(())
}

/// Sets every uid and gid of the process (all threads) to `uid`/`gid` and clears the
/// supplementary groups; 0/0 keeps root.
fn drop_ids(uid: u32, gid: u32) -> Result<(), Error> {
    if uid == 0 && gid == 0 {
        return Ok(());
    }
    // SAFETY: setgroups with an empty list; setresgid/setresuid with plain ids. glibc applies
    // each to every thread of the process.
    unsafe {
        check("setgroups", libc::setgroups(0, std::ptr::null()).into())?;
        check("setresgid", libc::setresgid(gid, gid, gid).into())?;
        check("setresuid", libc::setresuid(uid, uid, uid).into())?;
    }
    Ok(())
}

/// The resource limits `cfg` asks for: (resource, its name, the config field, value).
pub fn limits(cfg: &VmConfig) -> Result<Vec<(u32, &'static str, &'static str, u64)>, Error> {
    let fsize_mib = match cfg.limits.fsize_mib {
        Some(mib) => mib,
        None => {
            let mut mib = hull_protocol::vm::DEFAULT_VMM_FSIZE_MIB;
            // Empty slots take read-only images later: nothing is ever written to them.
            for path in cfg.disks.iter().filter_map(|d| d.path.as_ref()) {
                let len = std::fs::metadata(path)
                    .map_err(|e| Error::DiskSize(path.display().to_string(), e))?
                    .len();
                mib = mib.max(len.div_ceil(1 << 20));
            }
            mib
        }
    };
    Ok(vec![
        (
            libc::RLIMIT_NOFILE,
            "RLIMIT_NOFILE",
            "nofile",
            cfg.limits.nofile,
        ),
        (
            libc::RLIMIT_NPROC,
            "RLIMIT_NPROC",
            "nproc",
            cfg.limits.nproc,
        ),
        (
            libc::RLIMIT_FSIZE,
            "RLIMIT_FSIZE",
            "fsize_mib",
            fsize_mib.saturating_mul(1 << 20),
        ),
    ])
}

/// Sets no_new_privs and the configured resource limits (soft and hard) on the whole process,
/// then enters the jail if the config asks for one. A write beyond RLIMIT_FSIZE fails with
/// EFBIG instead of killing the VMM with SIGXFSZ.
pub fn confine(cfg: &VmConfig) -> Result<(), Error> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(Error::NoNewPrivs(std::io::Error::last_os_error()));
    }
    for (resource, name, field, value) in limits(cfg)? {
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: `lim` is a valid rlimit for the duration of the call.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            return Err(Error::Rlimit(
                name,
                value,
                field,
                std::io::Error::last_os_error(),
            ));
        }
    }
    // SAFETY: ignoring a signal installs no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    match &cfg.jail {
        Some(jail) => enter(jail),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_protocol::vm::{DiskConfig, DEFAULT_VMM_FSIZE_MIB, DEFAULT_VMM_NOFILE};

    #[test]
    fn fsize_defaults_to_the_largest_disk_and_at_least_the_floor() {
        let dir = std::env::temp_dir().join(format!("hull-jail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.img");
        std::fs::File::create(&big)
            .unwrap()
            .set_len((DEFAULT_VMM_FSIZE_MIB + 3) << 20)
            .unwrap();
        let mut cfg = VmConfig::new("/k");
        let fsize = |cfg: &VmConfig| {
            limits(cfg)
                .unwrap()
                .into_iter()
                .find(|l| l.0 == libc::RLIMIT_FSIZE)
                .unwrap()
                .3
        };
        assert_eq!(fsize(&cfg), DEFAULT_VMM_FSIZE_MIB << 20);
        cfg.disks.push(DiskConfig {
            path: Some(big.clone()),
            read_only: false,
            serial: None,
        });
        cfg.disks.push(DiskConfig::empty_slot(None));
        assert_eq!(fsize(&cfg), (DEFAULT_VMM_FSIZE_MIB + 3) << 20);
        cfg.limits.fsize_mib = Some(7);
        assert_eq!(fsize(&cfg), 7 << 20);
        cfg.limits.fsize_mib = None;
        cfg.disks[0].path = Some(dir.join("missing.img"));
        let err = limits(&cfg).unwrap_err().to_string();
        assert!(err.contains("missing.img"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let nofile = limits(&VmConfig::new("/k")).unwrap()[0];
        assert_eq!(
            (nofile.0, nofile.3),
            (libc::RLIMIT_NOFILE, DEFAULT_VMM_NOFILE)
        );
    }

    /// confine() in a forked child: the limits and no_new_privs show in /proc/self/status and
    /// getrlimit, and a write past RLIMIT_FSIZE fails with EFBIG instead of killing.
    #[test]
    fn confine_sets_no_new_privs_and_limits() {
        let dir = std::env::temp_dir().join(format!("hull-jail-c-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        let mut cfg = VmConfig::new("/k");
        cfg.limits.nofile = 100;
        cfg.limits.fsize_mib = Some(1);
        // SAFETY: the child runs straight-line code and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = confine(&cfg).is_ok()
                && std::fs::read_to_string("/proc/self/status")
                    .is_ok_and(|s| s.contains("NoNewPrivs:\t1"))
                && {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    // SAFETY: `lim` is a valid out pointer.
                    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
                    lim.rlim_cur == 100 && lim.rlim_max == 100
                }
                && {
                    use std::os::unix::fs::FileExt;
                    let f = std::fs::File::create(&file).unwrap();
                    f.write_at(b"x", 1 << 20).map_err(|e| e.raw_os_error())
                        == Err(Some(libc::EFBIG))
                        && f.write_at(b"x", 10).is_ok()
                };
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status:#x}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
