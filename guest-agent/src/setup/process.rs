//! The last steps before the container's program runs: session and
//! terminal, rlimits, working directory, umask, user and groups,
//! capabilities, no_new_privileges, then execve.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::fcntl::{open, OFlag};
use nix::pty::{grantpt, unlockpt};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{chdir, execve, setgroups, setresgid, setresuid, setsid, Gid, Uid};
use oci_spec::runtime::{LinuxSeccomp, PosixRlimitType, Process};

use super::{io, sys, SetupError};
use crate::channel::{Channel, Msg};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// New session; with a terminal, a pty from the container's own devpts whose
/// master goes to the agent and whose slave becomes stdio and controlling tty.
pub fn session(chan: &Channel, process: &Process) -> Result<(), SetupError> {
    setsid().map_err(sys("setsid"))?;
    if !process.terminal().unwrap_or(false) {
        return Ok(());
    }
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(sys("open /dev/ptmx (does the spec mount devpts?)"))?;
    grantpt(&master).map_err(sys("grantpt"))?;
    unlockpt(&master).map_err(sys("unlockpt"))?;
    let name = nix::pty::ptsname_r(&master).map_err(sys("ptsname"))?;
    let slave: OwnedFd = open(Path::new(&name), OFlag::O_RDWR, Mode::empty())
        .map_err(sys(format!("open {name}")))?;
    for fd in 0..3 {
        // SAFETY: dup2 onto our own stdio numbers; `slave` is an open descriptor.
        if unsafe { libc::dup2(slave.as_raw_fd(), fd) } < 0 {
            return Err(io("dup the pty to stdio")(std::io::Error::last_os_error()));
        }
    }
    // SAFETY: TIOCSCTTY on our stdin (the pty slave) with argument 0; no memory is passed.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(io("make the pty the controlling terminal")(
            std::io::Error::last_os_error(),
        ));
    }
    if let Some(size) = process.console_size() {
        let size = libc::winsize {
            ws_row: size.height().min(u16::MAX.into()) as u16,
            ws_col: size.width().min(u16::MAX.into()) as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize that lives on our stack for the call.
        if unsafe { libc::ioctl(0, libc::TIOCSWINSZ, &size) } < 0 {
            return Err(io("set the console size")(std::io::Error::last_os_error()));
        }
    }
    chan.send(&Msg::PtyMaster, Some(master.as_raw_fd()))?;
    Ok(())
}

/// Applies the process spec and executes it; returns only on failure.
pub fn exec(process: &Process, seccomp: Option<&LinuxSeccomp>) -> Result<(), SetupError> {
    let filter = seccomp.map(super::seccomp::compile).transpose()?;
    let nnp = process.no_new_privileges().unwrap_or(false);
    for rl in process.rlimits().clone().unwrap_or_default() {
        setrlimit(resource(rl.typ()), rl.soft(), rl.hard())
            .map_err(sys(format!("setrlimit {}", rl.typ())))?;
    }
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(io("set oom_score_adj"))?;
    }
    let cwd = process.cwd();
    chdir(cwd.as_path()).map_err(sys(format!("chdir {}", cwd.display())))?;
    let user = process.user();
    if let Some(mask) = user.umask() {
        umask(Mode::from_bits_truncate(mask));
    }

    let caps = process.capabilities().clone().unwrap_or_default();
    let want = |set: &Option<oci_spec::runtime::Capabilities>| -> CapsHashSet {
        set.iter().flatten().filter_map(|c| to_caps(*c)).collect()
    };
    let bounding = want(caps.bounding());
    for cap in caps::all() {
        if !bounding.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| SetupError::Unsupported(format!("drop bounding {cap}: {e}")))?;
        }
    }
    // Without no_new_privileges the filter needs CAP_SYS_ADMIN: install it
    // while we still have it (the remaining setup calls are ordinary ones).
    if let (Some(filter), false) = (&filter, nnp) {
        super::seccomp::install(filter)?;
    }
    // SAFETY: PR_SET_KEEPCAPS takes an integer flag only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    setgroups(&groups).map_err(sys("setgroups"))?;
    let (uid, gid) = (Uid::from_raw(user.uid()), Gid::from_raw(user.gid()));
    setresgid(gid, gid, gid).map_err(sys("setgid"))?;
    setresuid(uid, uid, uid).map_err(sys("setuid"))?;
    let set_caps = |set: CapSet, value: &CapsHashSet| {
        caps::set(None, set, value)
            .map_err(|e| SetupError::Unsupported(format!("set {set:?} capabilities: {e}")))
    };
    // Shrink effective first: capset(2) refuses an effective set wider than permitted.
    set_caps(CapSet::Effective, &want(caps.effective()))?;
    set_caps(CapSet::Permitted, &want(caps.permitted()))?;
    set_caps(CapSet::Inheritable, &want(caps.inheritable()))?;
    set_caps(CapSet::Ambient, &want(caps.ambient()))?;
    if nnp {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes an integer flag only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io("set no_new_privileges")(std::io::Error::last_os_error()));
        }
    }

    if let (Some(filter), true) = (&filter, nnp) {
        super::seccomp::install(filter)?;
    }
    let args = process.args().clone().unwrap_or_default();
    let env = process.env().clone().unwrap_or_default();
    let Some(arg0) = args.first() else {
        return Err(SetupError::Unsupported("process.args is empty".into()));
    };
    let program = lookup(arg0, &env)?;
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| SetupError::Unsupported(format!("NUL byte in {s:?}")))
    };
    let path = cstr(&program.to_string_lossy())?;
    let argv = args
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<Vec<_>, _>>()?;
    let envp = env.iter().map(|e| cstr(e)).collect::<Result<Vec<_>, _>>()?;
    // Rust's runtime ignores SIGPIPE, and an ignored signal survives execve:
    // give the program the default (`yes | head` must end `yes`).
    // SAFETY: setting a default disposition installs no handler.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    execve(&path, &argv, &envp).map_err(sys(format!("execute {}", program.display())))?;
    Ok(())
}

/// Finds `arg0` in the PATH of the process's own environment.
fn lookup(arg0: &str, env: &[String]) -> Result<PathBuf, SetupError> {
    if arg0.contains('/') {
        return Ok(arg0.into());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|dir| Path::new(dir).join(arg0))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| SetupError::Unsupported(format!("{arg0:?} not found in PATH {path}")))
}

fn to_caps(cap: oci_spec::runtime::Capability) -> Option<Capability> {
    let name = serde_json::to_value(cap).ok()?;
    name.as_str()?.parse().ok()
}

fn resource(typ: PosixRlimitType) -> Resource {
    match typ {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_map() {
        use oci_spec::runtime::Capability as Oci;
        assert_eq!(to_caps(Oci::Chown), Some(Capability::CAP_CHOWN));
        assert_eq!(to_caps(Oci::SysAdmin), Some(Capability::CAP_SYS_ADMIN));
    }

    #[test]
    fn lookup_uses_the_process_path() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        assert!(lookup("sh", &env).unwrap().ends_with("sh"));
        assert_eq!(lookup("/x/y", &env).unwrap(), PathBuf::from("/x/y"));
        assert!(lookup("no-such-program-hull", &env).is_err());
    }

    #[test]
    fn all_rlimits_map() {
        assert_eq!(
            resource(PosixRlimitType::RlimitNofile),
            Resource::RLIMIT_NOFILE
        );
    }
}
