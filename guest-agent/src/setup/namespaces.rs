//! Entering the container's cgroup and namespaces, in the setup helper, and
//! the rule for which namespaces a spec may name by path: only those of a
//! container the agent created, never the agent's own (a container in the
//! agent's PID or mount namespace could reach the agent and the pod share).

use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use super::{io, sys, SetupError, PIDFD_FD};

/// The namespace kinds a container has, as named under /proc/PID/ns.
pub const KINDS: [(&str, CloneFlags); 6] = [
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("pid", CloneFlags::CLONE_NEWPID),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// One namespace: its kind (clone flag bits) and its nsfs file's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsId {
    pub kind: i32,
    pub dev: u64,
    pub ino: u64,
}

impl NsId {
    fn of(kind: CloneFlags, meta: &std::fs::Metadata) -> NsId {
        NsId {
            kind: kind.bits(),
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The namespaces of the process whose /proc directory is `proc_dir`
/// (`/proc/self` or `/proc/PID`).
pub fn ids_of(proc_dir: &str) -> std::io::Result<Vec<NsId>> {
    KINDS
        .iter()
        .map(|&(name, kind)| {
            std::fs::metadata(format!("{proc_dir}/ns/{name}")).map(|m| NsId::of(kind, &m))
        })
        .collect()
}

/// The identity of the namespace file at `path`, for a spec entry of `kind`.
pub fn id_at(path: &Path, kind: CloneFlags) -> std::io::Result<NsId> {
    std::fs::metadata(path).map(|m| NsId::of(kind, &m))
}

/// Whether a spec may join `wanted` (found at `path`): it must not be one
/// of the agent's namespaces and must be one of `containers` (namespaces of
/// the pod's running containers, the agent's own left out).
pub fn check_joinable(
    path: &Path,
    wanted: NsId,
    agent: &[NsId],
    containers: &[NsId],
) -> Result<(), SetupError> {
    let refuse = |why: &str| {
        Err(SetupError::Refused(format!(
            "namespace path {} {why}; a container may join only a namespace of another container of this pod",
            path.display()
        )))
    };
    if agent.contains(&wanted) {
        return refuse("is one of the agent's own namespaces");
    }
    if !containers.contains(&wanted) {
        return refuse("is not a namespace of a container of this pod");
    }
    Ok(())
}

/// Moves this process (and so its future children) into the cgroup.
pub fn join_cgroup(cgroup: &Path) -> Result<(), SetupError> {
    std::fs::write(cgroup.join("cgroup.procs"), "0")
        .map_err(io(format!("join cgroup {}", cgroup.display())))
}

/// The clone flag for a namespace type the agent supports.
pub fn flag(typ: LinuxNamespaceType) -> Result<CloneFlags, SetupError> {
    Ok(match typ {
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        other => {
            return Err(SetupError::Unsupported(format!(
                "namespace type {other} is not supported"
            )))
        }
    })
}

/// Creates (or joins, when the spec gives a path) the spec's namespaces; a
/// path must open a namespace in `joinable` (checked again here on the open
/// file, so a path that changed since the agent checked it is refused too).
pub fn create(spec: &Spec, joinable: &[NsId]) -> Result<(), SetupError> {
    let mut fresh = CloneFlags::empty();
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone());
    for ns in namespaces.unwrap_or_default() {
        let flag = flag(ns.typ())?;
        match ns.path() {
            Some(path) => {
                // Non-blocking: a FIFO swapped in after the agent's check
                // must not hang the helper (it is then refused below).
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                    .open(path)
                    .map_err(io(format!("open namespace {}", path.display())))?;
                let meta = file
                    .metadata()
                    .map_err(io(format!("stat namespace {}", path.display())))?;
                check_joinable(path, NsId::of(flag, &meta), &[], joinable)?;
                setns(file.as_fd(), flag)
                    .map_err(sys(format!("join namespace {}", path.display())))?;
            }
            None => fresh |= flag,
        }
    }
    if !fresh.contains(CloneFlags::CLONE_NEWNS) {
        // Without its own mount namespace the container would pivot the agent's root.
        return Err(SetupError::Unsupported(
            "the spec must ask for a mount namespace".into(),
        ));
    }
    unshare(fresh).map_err(sys("unshare namespaces"))?;
    if fresh.contains(CloneFlags::CLONE_NEWNET) {
        // A new network namespace is the pod's (a CRI sandbox's, whose host
        // side CNI set up with its loopback plugin): its loopback is up, as
        // under runc with CNI, so the pod's containers talk over 127.0.0.1.
        loopback_up()?;
    }
    Ok(())
}

/// Sets `lo` of the current network namespace up.
fn loopback_up() -> Result<(), SetupError> {
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys("socket for the loopback interface"))?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the interface named in `req`,
    // which lives across the call, into its union; the socket is open.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) } < 0 {
        return Err(sys("read the loopback interface's flags")(
            nix::Error::last(),
        ));
    }
    // SAFETY: SIOCGIFFLAGS filled ifru_flags; SIOCSIFFLAGS reads it back from `req`.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(sys("set the loopback interface up")(nix::Error::last()));
        }
    }
    Ok(())
}

/// Joins the namespaces `kinds` of the container's init through its pidfd
/// (installed at [`PIDFD_FD`]): the pidfd names that process for good, so a
/// reused PID cannot send us elsewhere, and a dead init fails with ESRCH.
pub fn join(kinds: i32) -> Result<(), SetupError> {
    // SAFETY: the agent installs the init's pidfd on PIDFD_FD for an exec;
    // nothing else in this process owns it, and it is closed when dropped so
    // the executed process does not inherit it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(PIDFD_FD) };
    let kinds = CloneFlags::from_bits_truncate(kinds);
    if !kinds.is_empty() {
        let fd: BorrowedFd<'_> = pidfd.as_fd();
        setns(fd, kinds).map_err(sys("join the container's namespaces through its pidfd"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(kind: CloneFlags, ino: u64) -> NsId {
        NsId {
            kind: kind.bits(),
            dev: 4,
            ino,
        }
    }

    #[test]
    fn only_namespaces_of_containers_are_joinable() {
        let path = Path::new("/proc/1/ns/pid");
        let agent = [
            id(CloneFlags::CLONE_NEWPID, 1),
            id(CloneFlags::CLONE_NEWNS, 2),
        ];
        let containers = [
            id(CloneFlags::CLONE_NEWPID, 10),
            id(CloneFlags::CLONE_NEWNET, 11),
        ];
        let ok = |w| check_joinable(path, w, &agent, &containers);
        assert!(ok(id(CloneFlags::CLONE_NEWPID, 10)).is_ok());
        let err = ok(id(CloneFlags::CLONE_NEWPID, 1)).unwrap_err().to_string();
        assert!(
            err.contains("agent's own") && err.contains("/proc/1/ns/pid"),
            "{err}"
        );
        let err = ok(id(CloneFlags::CLONE_NEWPID, 99))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a namespace of a container"), "{err}");
        // The right inode under the wrong kind, or another device, is not it.
        assert!(ok(id(CloneFlags::CLONE_NEWNET, 10)).is_err());
        assert!(ok(NsId {
            dev: 5,
            ..id(CloneFlags::CLONE_NEWPID, 10)
        })
        .is_err());
        // Even if a container shares it, the agent's namespace stays refused.
        let shared = [agent[0]];
        assert!(check_joinable(path, agent[0], &agent, &shared).is_err());
    }

    #[test]
    fn our_own_namespaces_are_read() {
        let ours = ids_of("/proc/self").unwrap();
        assert_eq!(ours.len(), KINDS.len());
        let pid = id_at(Path::new("/proc/self/ns/pid"), CloneFlags::CLONE_NEWPID).unwrap();
        assert!(ours.contains(&pid));
        let as_net = id_at(Path::new("/proc/self/ns/pid"), CloneFlags::CLONE_NEWNET).unwrap();
        assert!(!ours.contains(&as_net));
    }
}
