//! The container's filesystem, built by its first process before it runs:
//! the spec's mounts, devices, pivot_root, masked and read-only paths,
//! a read-only root, hostname and sysctls.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chdir, chown, pivot_root, sethostname, Gid, Uid};
use oci_spec::runtime::{LinuxDeviceType, Mount, Spec};

use super::mount_opts::MountOpts;
use super::{io, sys, SetupError};
use crate::paths::{check_lexical, secure_join};

/// Device nodes every container gets when the spec mounts a fresh /dev.
const DEFAULT_DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

const NONE: Option<&str> = None;

/// Builds the container's root and pivots into it; on return `/` is the rootfs.
pub fn prepare(rootfs: &Path, spec: &Spec, cgroup: &Path) -> Result<(), SetupError> {
    // Nothing we mount may leak back into the guest's namespace.
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .map_err(sys("make / private"))?;
    mount(
        Some(rootfs),
        rootfs,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .map_err(sys(format!("bind the rootfs {}", rootfs.display())))?;

    let mounts = spec.mounts().clone().unwrap_or_default();
    for m in &mounts {
        mount_one(rootfs, m, cgroup)?;
    }
    let linux = spec.linux().clone().unwrap_or_default();
    let devices = linux.devices().clone().unwrap_or_default();
    if mounts.iter().any(|m| m.destination() == Path::new("/dev")) {
        // The spec's own nodes (a privileged container lists them all) win.
        let listed: Vec<&Path> = devices.iter().map(|d| d.path().as_path()).collect();
        default_devices(rootfs, &listed)?;
    }
    for dev in devices {
        let path = secure_join(rootfs, dev.path())?;
        let kind = match dev.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        let mode = Mode::from_bits_truncate(dev.file_mode().unwrap_or(0o666));
        if let Some(parent) = path.parent() {
            // Nodes in subdirectories (/dev/net/tun, /dev/dri/...).
            std::fs::create_dir_all(parent).map_err(io(format!(
                "create the directory of {}",
                dev.path().display()
            )))?;
        }
        let _ = std::fs::remove_file(&path);
        mknod(
            &path,
            kind,
            mode,
            makedev(dev.major() as u64, dev.minor() as u64),
        )
        .map_err(sys(format!("mknod {}", dev.path().display())))?;
        chown(
            &path,
            dev.uid().map(Uid::from_raw),
            dev.gid().map(Gid::from_raw),
        )
        .map_err(sys(format!("chown {}", dev.path().display())))?;
    }

    chdir(rootfs).map_err(sys("chdir into the rootfs"))?;
    pivot_root(".", ".").map_err(sys("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the old root"))?;
    chdir("/").map_err(sys("chdir /"))?;

    for (key, value) in linux.sysctl().clone().unwrap_or_default() {
        sysctl(&key, &value)?;
    }

    for path in linux.masked_paths().clone().unwrap_or_default() {
        mask(Path::new(&path))?;
    }
    for path in linux.readonly_paths().clone().unwrap_or_default() {
        readonly(Path::new(&path), MsFlags::MS_REC)?;
    }
    if let Some(hostname) = spec.hostname() {
        sethostname(hostname).map_err(sys("set the hostname"))?;
    }
    if let Some(domain) = spec.domainname() {
        let len = domain.len();
        // SAFETY: the pointer and length describe `domain`, alive for the call.
        if unsafe { libc::setdomainname(domain.as_ptr().cast(), len) } != 0 {
            return Err(io("set the domain name")(std::io::Error::last_os_error()));
        }
    }
    if let Some(propagation) = linux.rootfs_propagation() {
        let flags = MountOpts::parse(std::slice::from_ref(propagation)).propagation;
        if flags.is_empty() {
            let what = format!("rootfsPropagation {propagation:?}");
            return Err(SetupError::Unsupported(what));
        }
        mount(NONE, "/", NONE, flags, NONE).map_err(sys("set the rootfs propagation"))?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        readonly(Path::new("/"), MsFlags::empty())?;
    }
    Ok(())
}

fn mount_one(rootfs: &Path, m: &Mount, cgroup: &Path) -> Result<(), SetupError> {
    let dest = secure_join(rootfs, m.destination())?;
    let what = format!("mount {}", m.destination().display());
    let opts = MountOpts::parse(m.options().as_deref().unwrap_or_default());
    let typ = m.typ().as_deref().unwrap_or("");
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());

    if opts.bind || typ == "bind" || typ == "cgroup" || typ == "cgroup2" {
        // cgroup: the container sees its own cgroup, whatever its namespaces.
        let source: PathBuf = if typ.starts_with("cgroup") {
            cgroup.into()
        } else {
            let src = m.source().clone().unwrap_or_default();
            check_lexical(&src)?;
            src
        };
        let is_dir = std::fs::metadata(&source)
            .map_err(io(format!("{what}: source")))?
            .is_dir();
        create_target(&dest, is_dir).map_err(io(format!("{what}: create the target")))?;
        let flags = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
        mount(Some(&source), &dest, NONE, flags, NONE).map_err(sys(&what))?;
        let rest = opts.flags - MsFlags::MS_BIND - MsFlags::MS_REC;
        let rest = if typ.starts_with("cgroup") {
            rest | MsFlags::MS_NOSUID
        } else {
            rest
        };
        if !rest.is_empty() {
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rest;
            mount(NONE, &dest, NONE, flags, NONE).map_err(sys(format!("{what}: remount")))?;
        }
    } else {
        create_target(&dest, true).map_err(io(format!("{what}: create the target")))?;
        let source = m.source().clone().unwrap_or_else(|| typ.into());
        mount(Some(&source), &dest, Some(typ), opts.flags, data).map_err(sys(&what))?;
    }
    if !opts.propagation.is_empty() {
        mount(NONE, &dest, NONE, opts.propagation, NONE)
            .map_err(sys(format!("{what}: propagation")))?;
    }
    Ok(())
}

fn create_target(dest: &Path, dir: bool) -> std::io::Result<()> {
    if dir {
        return std::fs::create_dir_all(dest);
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    if !dest.exists() {
        std::fs::File::create(dest)?;
    }
    Ok(())
}

/// A fresh /dev gets the usual nodes (bound from the guest's /dev), except those the spec
/// lists itself (`skip`), and links.
fn default_devices(rootfs: &Path, skip: &[&Path]) -> Result<(), SetupError> {
    let dev = rootfs.join("dev");
    for name in DEFAULT_DEVICES {
        if skip.contains(&Path::new("/dev").join(name).as_path()) {
            continue;
        }
        let target = dev.join(name);
        create_target(&target, false).map_err(io(format!("create /dev/{name}")))?;
        let source = Path::new("/dev").join(name);
        mount(Some(&source), &target, NONE, MsFlags::MS_BIND, NONE)
            .map_err(sys(format!("bind /dev/{name}")))?;
    }
    let links = [
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ];
    for (target, name) in links {
        let link = dev.join(name);
        if skip.contains(&Path::new("/dev").join(name).as_path()) {
            continue;
        }
        if link.symlink_metadata().is_err() {
            symlink(target, &link).map_err(io(format!("link /dev/{name}")))?;
        }
    }
    Ok(())
}

/// Hides a path: /dev/null over a file, an empty read-only tmpfs over a directory.
fn mask(path: &Path) -> Result<(), SetupError> {
    let what = format!("mask {}", path.display());
    match std::fs::metadata(path) {
        Err(_) => Ok(()),
        Ok(meta) if meta.is_dir() => {
            mount(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, NONE).map_err(sys(what))
        }
        Ok(_) => mount(Some("/dev/null"), path, NONE, MsFlags::MS_BIND, NONE).map_err(sys(what)),
    }
}

/// Makes `path` read-only, keeping the flags its mount already has.
fn readonly(path: &Path, rec: MsFlags) -> Result<(), SetupError> {
    let what = format!("make {} read-only", path.display());
    if !path.exists() {
        return Ok(());
    }
    if path != Path::new("/") {
        mount(Some(path), path, NONE, MsFlags::MS_BIND | rec, NONE).map_err(sys(&what))?;
    }
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    let current = statvfs(path).map_err(sys(&what))?.flags();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if current.contains(fs) {
            flags |= ms;
        }
    }
    mount(NONE, path, NONE, flags, NONE).map_err(sys(what))
}

/// Writes one `linux.sysctl` entry through the container's /proc/sys.
fn sysctl(key: &str, value: &str) -> Result<(), SetupError> {
    let rel = key.replace('.', "/");
    let path = Path::new("/proc/sys").join(&rel);
    if rel.is_empty() || key.contains('/') || key.split('.').any(|p| p.is_empty()) {
        return Err(SetupError::Unsupported(format!("invalid sysctl {key:?}")));
    }
    std::fs::write(&path, value).map_err(io(format!("sysctl {key}")))
}
