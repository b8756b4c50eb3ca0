//! Entering the container's cgroup and namespaces, in the setup helper.

use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sched::{setns, unshare, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::{io, sys, SetupError};

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

/// Creates (or joins, when the spec gives a path) the spec's namespaces.
pub fn create(spec: &Spec) -> Result<(), SetupError> {
    let mut fresh = CloneFlags::empty();
    let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone());
    for ns in namespaces.unwrap_or_default() {
        let flag = flag(ns.typ())?;
        match ns.path() {
            Some(path) => {
                let file = std::fs::File::open(path)
                    .map_err(io(format!("open namespace {}", path.display())))?;
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
    unshare(fresh).map_err(sys("unshare namespaces"))
}

/// Joins every namespace of `init_pid` that differs from ours, mount last.
pub fn join(init_pid: i32) -> Result<(), SetupError> {
    let kinds = [
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut files = Vec::new();
    for (name, flag) in kinds {
        let theirs = format!("/proc/{init_pid}/ns/{name}");
        let file = std::fs::File::open(&theirs).map_err(io(format!("open {theirs}")))?;
        let ours = std::fs::metadata(format!("/proc/self/ns/{name}"))
            .map_err(io(format!("stat our {name} namespace")))?;
        let meta = file.metadata().map_err(io(format!("stat {theirs}")))?;
        if (meta.dev(), meta.ino()) != (ours.dev(), ours.ino()) {
            files.push((file, flag, theirs));
        }
    }
    for (file, flag, path) in files {
        setns(file.as_fd(), flag).map_err(sys(format!("join {path}")))?;
    }
    Ok(())
}
