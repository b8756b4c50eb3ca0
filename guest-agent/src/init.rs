//! PID 1 duties: the guest's basic mounts, a console, cgroup controllers,
//! the boot self-test and power-off.

use std::os::fd::AsRawFd;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};

/// Kernel command-line word that makes the agent print the ready marker and
/// power off at once (boot-time tests).
pub const SELFTEST_READY: &str = "hull.selftest=ready";

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("mount {target}")]
    Mount {
        target: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("create {target}")]
    Dir {
        target: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// (source, target, fstype, flags, data), in order.
const MOUNTS: [(&str, &str, &str, MsFlags, &str); 7] = [
    (
        "proc",
        "/proc",
        "proc",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        "",
    ),
    (
        "sysfs",
        "/sys",
        "sysfs",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        "",
    ),
    (
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        "mode=0755",
    ),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        "newinstance,ptmxmode=0666,mode=0620",
    ),
    (
        "shm",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=1777",
    ),
    (
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        "mode=0755",
    ),
    (
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        "",
    ),
];

/// Moves our root off the initramfs: pivot_root(2) refuses to pivot away
/// from the initial rootfs mount (it has no parent), so every container setup
/// would fail. A recursive bind of `/` moved over `/` and entered with
/// chroot has a parent and the same contents; nothing is copied.
pub fn leave_initramfs() -> Result<(), InitError> {
    const NEW_ROOT: &str = "/.hull-root";
    let mount_err = |target| move |source| InitError::Mount { target, source };
    std::fs::create_dir_all(NEW_ROOT).map_err(|source| InitError::Dir {
        target: NEW_ROOT,
        source,
    })?;
    let rec_bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some("/"), NEW_ROOT, None::<&str>, rec_bind, None::<&str>)
        .map_err(mount_err(NEW_ROOT))?;
    nix::unistd::chdir(NEW_ROOT).map_err(mount_err(NEW_ROOT))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(mount_err("/"))?;
    nix::unistd::chroot(".").map_err(mount_err("/"))?;
    nix::unistd::chdir("/").map_err(mount_err("/"))?;
    Ok(())
}

/// Mounts the guest's filesystems; an already mounted target is fine.
pub fn mount_all() -> Result<(), InitError> {
    for (source, target, fstype, flags, data) in MOUNTS {
        std::fs::create_dir_all(target).map_err(|source| InitError::Dir { target, source })?;
        let data = (!data.is_empty()).then_some(data);
        match mount(Some(source), target, Some(fstype), flags, data) {
            Ok(()) | Err(nix::Error::EBUSY) => {}
            Err(source) => return Err(InitError::Mount { target, source }),
        }
    }
    Ok(())
}

/// Makes sure descriptors 0-2 are open (the console, else /dev/null), so no
/// socket of ours lands there and gets mistaken for stdio.
pub fn ensure_stdio() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries the descriptor table.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console")
            .or_else(|_| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
            });
        if let Ok(file) = file {
            // SAFETY: dup2 onto a closed low descriptor; `file` is open.
            unsafe { libc::dup2(file.as_raw_fd(), fd) };
        }
    }
}

/// Whether the kernel command line carries `word`.
pub fn cmdline_has(word: &str) -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == word))
        .unwrap_or(false)
}

/// Seconds since boot, from the guest's clock.
pub fn uptime() -> Option<f64> {
    std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The line boot tests wait for: when the agent started and when it serves,
/// both in seconds since boot on the guest's clock, then `status`.
pub fn print_ready(started: Option<f64>, status: &str) {
    use std::io::Write;
    let secs = |t: Option<f64>| t.map_or_else(|| "?".into(), |u| format!("{u:.2}"));
    let (up, start) = (secs(uptime()), secs(started));
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{} uptime={up} init_start={start} {status}",
        hull_protocol::READY_MARKER
    );
    let _ = out.flush();
}

/// Syncs and restarts the machine; the guest runs with `reboot=t` and the
/// VMM treats a restart as the end of the VM.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    // reboot(2) only returns on failure; nothing sensible is left to do.
    std::process::exit(1)
}

/// Whether `path` is a cgroup v2 mount.
pub fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}
