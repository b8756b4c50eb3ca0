//! The pod share on the host, laid out so the guest cannot steer the shim:
//! `<pod>/share-root` is a host-only directory that only the shim writes;
//! virtiofsd serves `<pod>/shared`, a read-only, nosuid, nodev bind of it
//! (shared propagation: virtiofsd's own mount namespace receives what is
//! mounted below it later), so
//! the guest can create, rename or replace nothing in the share's own levels
//! (`.volumes`, `.volumes/<container>`, the mount points). Container roots and
//! volumes are separate mounts below `shared`. Every path is walked beneath the
//! pod directory's fd without following symlinks, and mounts are made and
//! removed through file descriptors.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Host-only directory of the pod holding the share's own levels.
pub const SHARE_ROOT: &str = "share-root";
/// The directory virtiofsd serves: a read-only bind of [`SHARE_ROOT`].
pub const SHARED: &str = "shared";
/// Directory of the share holding the containers' volumes, `<VOLUMES_DIR>/<container_id>/<n>`
/// (container ids never start with a dot, so it cannot clash with a rootfs).
pub const VOLUMES_DIR: &str = ".volumes";

/// Errors of laying out, mounting into or removing the pod share.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error(
        "{op} {path} beneath the pod directory {dir} (symlinks and paths leaving it are refused)"
    )]
    Beneath {
        op: &'static str,
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0:?} is not a single path component")]
    BadName(String),
    #[error("{path} is {problem}; make it a directory owned by root with mode 0700 or 0755")]
    UnsafeDir {
        path: PathBuf,
        problem: &'static str,
    },
    #[error("create pod directory {path}")]
    PodDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount {source_path} at {target}")]
    Mount {
        source_path: PathBuf,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("make the mount at {target} shared (mount propagation)")]
    Propagation {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unmount {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, ShareError>;

/// Whether `name` is one plain path component (not empty, `.`, `..`, no `/`).
pub fn one_component(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(parts.next(), Some(Component::Normal(_))) && parts.next().is_none()
}

/// The pod's state directory: `<run_dir>/<namespace>/<sandbox_id>`, so pods of
/// the same name in two containerd namespaces never meet.
pub fn pod_dir(run_dir: &Path, namespace: &str, sandbox_id: &str) -> Result<PathBuf> {
    for name in [namespace, sandbox_id] {
        if !one_component(name) || name.starts_with('.') {
            return Err(ShareError::BadName(name.to_string()));
        }
    }
    Ok(run_dir.join(namespace).join(sandbox_id))
}

/// Makes the pod's state directory (mode 0700) and its namespace directory;
/// refuses a `run_dir` that others can write.
pub fn create_pod_dir(run_dir: &Path, namespace: &str, sandbox_id: &str) -> Result<PathBuf> {
    let dir = pod_dir(run_dir, namespace, sandbox_id)?;
    let pod_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ShareError::PodDir { path, source }
    };
    let ns_dir = run_dir.join(namespace);
    // Another shim may remove an empty namespace directory between the mkdirs
    // (its pod ended): try again a few times.
    let mut tries = 0;
    loop {
        tries += 1;
        let made = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(run_dir)
            .and_then(|()| mkdir(&ns_dir, 0o700))
            .and_then(|()| mkdir(&dir, 0o700));
        match made {
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 5 => continue,
            Err(e) => return Err(pod_err(&dir)(e)),
            Ok(()) => break,
        }
    }
    check_host_only(run_dir)?;
    for d in [&ns_dir, &dir] {
        check_host_only(d)?;
    }
    // A leftover directory of a crashed shim keeps its content but not its mode.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(pod_err(&dir))?;
    Ok(dir)
}

/// Creates `path` with `mode`; an existing directory is fine.
fn mkdir(path: &Path, mode: u32) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// `dir` must be a real directory of this user that nobody else can write.
fn check_host_only(dir: &Path) -> Result<()> {
    let unsafe_dir = |problem| ShareError::UnsafeDir {
        path: dir.to_path_buf(),
        problem,
    };
    let meta = std::fs::metadata(dir).map_err(|source| ShareError::PodDir {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(unsafe_dir("not a directory"));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(unsafe_dir("owned by another user"));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir("writable by group or others"));
    }
    Ok(())
}

/// Removes the pod's state directory (only if empty) and its namespace
/// directory once no pod uses it; never recursively.
pub fn remove_pod_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), "remove pod directory: {e}");
        }
    }
    if let Some(ns_dir) = dir.parent() {
        let _ = std::fs::remove_dir(ns_dir);
    }
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))
}

/// Turns a raw syscall result into an fd or the error.
fn fd_result(ret: libc::c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(ret).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: the kernel just returned this new fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn unit_result(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Opens `rel` beneath `dir` without following any symlink (nor `..` out of
/// `dir`, nor magic links); crossing mount points is allowed.
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: i32) -> io::Result<OwnedFd> {
    let path = cstring(if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    })?;
    // SAFETY: open_how is plain integers; all-zero is valid and then filled in.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    // No O_NOFOLLOW: with O_PATH it would return a trailing symlink itself;
    // RESOLVE_NO_SYMLINKS refuses every symlink, the last one included (ELOOP).
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads the NUL-terminated path and `how` of the given size,
    // both alive for the call; the returned fd is owned by the result.
    fd_result(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    })
}

/// Opens an existing directory as an `O_PATH` anchor for `*at` calls; the path
/// itself is the host's own (configuration, bundle marker) and must not be a symlink.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    // SAFETY: plain open of a NUL-terminated path; the fd is owned by the result.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    fd_result(fd.into())
}

/// `/proc/self/fd/<fd>/<name>`: a path whose walk is pinned to an opened directory.
fn fd_path(dir: BorrowedFd<'_>, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
}

/// Splits a relative path into its parent and its last component, which must be plain.
fn split_last(rel: &Path) -> io::Result<(&Path, &str)> {
    let name = rel
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| one_component(n))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no last component"))?;
    Ok((rel.parent().unwrap_or(Path::new("")), name))
}

/// Unmounts what is mounted at `rel` beneath `dir`: the parent is opened without
/// following symlinks, the last component is unmounted with `UMOUNT_NOFOLLOW`
/// (lazily if busy, which also detaches mounts below it). `Ok(false)` when
/// nothing is mounted there.
pub fn unmount_beneath(dir: BorrowedFd<'_>, rel: &Path) -> io::Result<bool> {
    let (parent, name) = split_last(rel)?;
    let parent = open_beneath(dir, parent, libc::O_PATH | libc::O_DIRECTORY)?;
    let path = cstring(&fd_path(parent.as_fd(), name))?;
    let umount = |flags: i32| {
        // SAFETY: umount2 reads the NUL-terminated path, alive for the call.
        unit_result(unsafe { libc::umount2(path.as_ptr(), flags) }.into())
    };
    match umount(libc::UMOUNT_NOFOLLOW) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Ok(false),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            umount(libc::UMOUNT_NOFOLLOW | libc::MNT_DETACH).map(|()| true)
        }
        Err(e) => Err(e),
    }
}

/// What a bind into the share may carry: always nosuid and nodev.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindFlags {
    pub recursive: bool,
    pub readonly: bool,
}

/// Clones the mount tree at `source` (a host path the shim trusts), sets
/// nosuid, nodev (and ro) and private propagation on the detached copy, and
/// attaches it at `target` (an fd opened beneath the pod directory): no moment
/// where the mount is visible with suid or dev, no path walk at attach time.
fn bind_to_fd(
    source: &Path,
    flags: BindFlags,
    extra: u64,
    target: BorrowedFd<'_>,
) -> io::Result<()> {
    let src = cstring(source)?;
    let empty = c"";
    let mut tree_flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    let mut at_flags = libc::AT_EMPTY_PATH;
    if flags.recursive {
        tree_flags |= libc::AT_RECURSIVE as libc::c_uint;
        at_flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: open_tree reads the NUL-terminated path; the new fd is owned by the result.
    let tree = fd_result(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            tree_flags,
        )
    })?;
    // SAFETY: mount_attr is plain integers; all-zero is valid and then filled in.
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.attr_set = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | extra;
    if flags.readonly {
        attr.attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    attr.propagation = libc::MS_PRIVATE;
    // SAFETY: mount_setattr reads `attr` of the given size and an empty path,
    // both alive for the call, and acts on the detached tree we own.
    unit_result(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            at_flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })?;
    // SAFETY: move_mount with two fds and empty paths; both fds are alive.
    unit_result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
}

/// Gives the mount whose root `mount` is (an `O_PATH` fd) shared propagation.
fn make_shared(mount: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: mount_attr is plain integers; all-zero is valid and then filled in.
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.propagation = libc::MS_SHARED;
    // SAFETY: mount_setattr reads `attr` of the given size and an empty path, both
    // alive for the call, and acts on the mount of the fd we own.
    unit_result(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })
}

/// The kind of mount point to make in the share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// One pod's share, anchored at an fd of its state directory.
#[derive(Debug)]
pub struct PodShare {
    dir: PathBuf,
    fd: OwnedFd,
}

impl PodShare {
    /// Lays out the share in the (new, host-only) state directory `dir`:
    /// `share-root/.volumes`, and `shared` as a read-only, nosuid, nodev,
    /// noexec bind of `share-root`, with shared propagation.
    pub fn create(dir: &Path) -> Result<Self> {
        let share = Self::open(dir)?;
        for rel in [SHARE_ROOT, SHARED] {
            share.mkdir_at(share.fd.as_fd(), Path::new(""), rel)?;
        }
        let root = share.open_rel(SHARE_ROOT, libc::O_PATH | libc::O_DIRECTORY)?;
        share.mkdir_at(root.as_fd(), Path::new(SHARE_ROOT), VOLUMES_DIR)?;
        let target = share.open_rel(SHARED, libc::O_PATH | libc::O_DIRECTORY)?;
        if share.unmount(Path::new(""))? {
            tracing::warn!(dir = %dir.display(), "a leftover share mount was removed");
        }
        let ro = BindFlags {
            recursive: false,
            readonly: true,
        };
        bind_to_fd(
            &dir.join(SHARE_ROOT),
            ro,
            libc::MOUNT_ATTR_NOEXEC,
            target.as_fd(),
        )
        .map_err(|source| ShareError::Mount {
            source_path: dir.join(SHARE_ROOT),
            target: dir.join(SHARED),
            source,
        })?;
        // Shared propagation: virtiofsd serves from its own mount namespace, a slave of this
        // mount's peer group, so the container roots and volumes bound here later (and their
        // unmounts) reach it. A failure leaves the mount for the caller's `remove`.
        let served = share.open_rel(SHARED, libc::O_PATH | libc::O_DIRECTORY)?;
        make_shared(served.as_fd()).map_err(|source| ShareError::Propagation {
            target: dir.join(SHARED),
            source,
        })?;
        Ok(share)
    }

    /// Opens the share of an existing pod directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let fd = open_dir(dir).map_err(|source| ShareError::Beneath {
            op: "open",
            path: PathBuf::new(),
            dir: dir.to_path_buf(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            fd,
        })
    }

    /// The directory virtiofsd serves.
    pub fn served(&self) -> PathBuf {
        self.dir.join(SHARED)
    }

    fn beneath(&self, op: &'static str, rel: &Path) -> impl FnOnce(io::Error) -> ShareError {
        let (path, dir) = (rel.to_path_buf(), self.dir.clone());
        move |source| ShareError::Beneath {
            op,
            path,
            dir,
            source,
        }
    }

    fn open_rel(&self, rel: impl AsRef<Path>, flags: i32) -> Result<OwnedFd> {
        let rel = rel.as_ref();
        open_beneath(self.fd.as_fd(), rel, flags).map_err(self.beneath("open", rel))
    }

    /// mkdir `name` in the opened `parent` (at `parent_rel`); `Ok(false)` if a
    /// directory is already there (checked without following a symlink).
    fn mkdir_at(&self, parent: BorrowedFd<'_>, parent_rel: &Path, name: &str) -> Result<bool> {
        let rel = parent_rel.join(name);
        let c = cstring(Path::new(name)).map_err(self.beneath("mkdir", &rel))?;
        // SAFETY: mkdirat reads the NUL-terminated name, alive for the call.
        match unit_result(unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o755) }.into()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                open_beneath(parent, Path::new(name), libc::O_PATH | libc::O_DIRECTORY)
                    .map_err(self.beneath("mkdir", &rel))?;
                Ok(false)
            }
            Err(e) => Err(self.beneath("mkdir", &rel)(e)),
        }
    }

    /// Makes the directories of `rel` (a path inside the share) in the host-only
    /// root; returns the ones it created, outermost first.
    pub fn make_dirs(&self, rel: &Path) -> Result<Vec<PathBuf>> {
        let mut created = Vec::new();
        let mut at = PathBuf::from(SHARE_ROOT);
        let mut dir = self.open_rel(&at, libc::O_PATH | libc::O_DIRECTORY)?;
        let mut in_share = PathBuf::new();
        for c in rel.components() {
            let Component::Normal(name) = c else {
                return Err(ShareError::BadName(rel.display().to_string()));
            };
            let name = name
                .to_str()
                .ok_or_else(|| ShareError::BadName(rel.display().to_string()))?;
            if self.mkdir_at(dir.as_fd(), &at, name)? {
                created.push(in_share.join(name));
            }
            at.push(name);
            in_share.push(name);
            dir = self.open_rel(&at, libc::O_PATH | libc::O_DIRECTORY)?;
        }
        Ok(created)
    }

    /// Makes the mount point `rel` (a path inside the share, whose parent exists):
    /// a directory, or an empty file created with `O_CREAT|O_EXCL|O_NOFOLLOW`
    /// (never truncating anything). It must not exist yet.
    pub fn make_mount_point(&self, rel: &Path, kind: Kind) -> Result<()> {
        let (parent_rel, name) = split_last(rel).map_err(self.beneath("create", rel))?;
        let host_parent = Path::new(SHARE_ROOT).join(parent_rel);
        let parent = self.open_rel(&host_parent, libc::O_PATH | libc::O_DIRECTORY)?;
        let c = cstring(Path::new(name)).map_err(self.beneath("create", rel))?;
        let made = match kind {
            Kind::Dir => {
                // SAFETY: mkdirat reads the NUL-terminated name, alive for the call.
                let ret = unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o755) };
                unit_result(ret.into())
            }
            Kind::File => {
                let flags = libc::O_CREAT
                    | libc::O_EXCL
                    | libc::O_NOFOLLOW
                    | libc::O_WRONLY
                    | libc::O_CLOEXEC;
                // SAFETY: openat reads the NUL-terminated name; the fd is owned by the result.
                fd_result(
                    unsafe { libc::openat(parent.as_raw_fd(), c.as_ptr(), flags, 0o644) }.into(),
                )
                .map(drop)
            }
        };
        made.map_err(self.beneath("create", rel))
    }

    /// Removes the (unmounted) mount point or directory `rel` inside the share.
    pub fn remove_entry(&self, rel: &Path, kind: Kind) -> Result<()> {
        let (parent_rel, name) = split_last(rel).map_err(self.beneath("remove", rel))?;
        let parent = self.open_rel(
            Path::new(SHARE_ROOT).join(parent_rel),
            libc::O_PATH | libc::O_DIRECTORY,
        )?;
        let c = cstring(Path::new(name)).map_err(self.beneath("remove", rel))?;
        let flags = if kind == Kind::Dir {
            libc::AT_REMOVEDIR
        } else {
            0
        };
        // SAFETY: unlinkat reads the NUL-terminated name, alive for the call;
        // it never follows a symlink (it removes the link itself).
        unit_result(unsafe { libc::unlinkat(parent.as_raw_fd(), c.as_ptr(), flags) }.into())
            .map_err(self.beneath("remove", rel))
    }

    /// Binds `source` (a host path the shim trusts: the bundle's rootfs, a
    /// volume of the spec) at `rel` inside the served share, nosuid and nodev.
    pub fn bind(&self, source: &Path, rel: &Path, flags: BindFlags) -> Result<()> {
        let target_rel = Path::new(SHARED).join(rel);
        let target = self.open_rel(&target_rel, libc::O_PATH)?;
        bind_to_fd(source, flags, 0, target.as_fd()).map_err(|e| ShareError::Mount {
            source_path: source.to_path_buf(),
            target: self.dir.join(&target_rel),
            source: e,
        })
    }

    /// Unmounts what is mounted at `rel` inside the served share (`""`: the
    /// share itself); `Ok(false)` when nothing was.
    pub fn unmount(&self, rel: &Path) -> Result<bool> {
        let target = Path::new(SHARED).join(rel);
        unmount_beneath(self.fd.as_fd(), &target).map_err(|source| ShareError::Unmount {
            target: self.dir.join(&target),
            source,
        })
    }

    /// Unmounts the served share and removes its empty directories (never
    /// recursively, so nothing below a mount that stayed is touched).
    pub fn remove(&self) -> Result<()> {
        self.unmount(Path::new(""))?;
        let warn = |e: ShareError| tracing::warn!(dir = %self.dir.display(), "{e}");
        self.remove_entry(Path::new(VOLUMES_DIR), Kind::Dir)
            .unwrap_or_else(warn);
        for name in [SHARE_ROOT, SHARED] {
            let c = cstring(Path::new(name)).map_err(self.beneath("remove", Path::new(name)))?;
            // SAFETY: unlinkat reads the NUL-terminated name, alive for the call.
            let ret =
                unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) };
            unit_result(ret.into())
                .map_err(self.beneath("remove", Path::new(name)))
                .unwrap_or_else(warn);
        }
        Ok(())
    }
}

/// Helpers of the host-tier tests that lay out pods and read mount flags.
#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    pub fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "host tier: this test mounts and needs root"
        );
    }

    /// A pod share at `<tmp>/run/ns/<pod>`, as the sandbox makes it.
    pub fn pod(tmp: &Path, pod: &str) -> PodShare {
        let dir = create_pod_dir(&tmp.join("run"), "ns", pod).unwrap();
        PodShare::create(&dir).unwrap()
    }

    /// (mount point, per-mount options) of every mount, from /proc/self/mountinfo.
    pub fn mounts() -> Vec<(PathBuf, String)> {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let point = f.nth(4)?;
                Some((PathBuf::from(point), f.next()?.to_string()))
            })
            .collect()
    }

    /// The per-mount options of the mount at `path` (the topmost one).
    pub fn options(path: &Path) -> Option<String> {
        mounts()
            .into_iter()
            .rev()
            .find(|(p, _)| p == path)
            .map(|(_, o)| o)
    }

    /// Mount points below `tmp` (the test's own directory) but outside the pod
    /// directory `pod`: must stay the same through an attack.
    pub fn mounts_outside(tmp: &Path, pod: &Path) -> Vec<PathBuf> {
        mounts_below(tmp)
            .into_iter()
            .filter(|p| !p.starts_with(pod))
            .collect()
    }

    /// Mount points at or below `dir`.
    pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
        mounts()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.starts_with(dir))
            .collect()
    }

    /// A host file whose content and mtime an attack must not change.
    pub struct Canary {
        pub path: PathBuf,
        mtime: std::time::SystemTime,
    }

    impl Canary {
        pub fn new(path: PathBuf) -> Self {
            std::fs::write(&path, "canary\n").unwrap();
            let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
            Self { path, mtime }
        }

        pub fn assert_intact(&self, after: &str) {
            let meta = std::fs::symlink_metadata(&self.path).unwrap();
            assert!(meta.is_file(), "canary replaced after {after}");
            assert_eq!(
                std::fs::read_to_string(&self.path).unwrap(),
                "canary\n",
                "canary content after {after}"
            );
            assert_eq!(
                meta.modified().unwrap(),
                self.mtime,
                "canary mtime after {after}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn pod_dirs_are_keyed_by_namespace_and_private() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("run");
        let a = create_pod_dir(&run, "a", "web").unwrap();
        let b = create_pod_dir(&run, "b", "web").unwrap();
        assert_ne!(a, b, "ctr -n a / -n b run ... web do not collide");
        for d in [&run, &run.join("a"), &a, &b] {
            let mode = std::fs::metadata(d).unwrap().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }
        for bad in ["", ".", "..", "a/b", ".hidden"] {
            assert!(matches!(
                create_pod_dir(&run, bad, "p"),
                Err(ShareError::BadName(_))
            ));
            assert!(matches!(
                create_pod_dir(&run, "ns", bad),
                Err(ShareError::BadName(_))
            ));
        }
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = create_pod_dir(&open, "ns", "p").unwrap_err();
        assert!(matches!(err, ShareError::UnsafeDir { .. }), "{err}");
        remove_pod_dir(&a);
        assert!(
            !a.exists() && !run.join("a").exists(),
            "empty namespace dir goes"
        );
        assert!(b.exists());
    }

    #[test]
    fn the_served_share_is_read_only_and_its_mounts_nosuid_nodev() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let share = pod(tmp.path(), "p");
        let served = share.served();
        let opts = options(&served).expect("the share is a mount");
        for flag in ["ro", "nosuid", "nodev", "noexec"] {
            assert!(opts.split(',').any(|o| o == flag), "{flag} in {opts}");
        }
        // What a guest would do through virtiofsd: all refused by the read-only mount.
        let erofs = |r: io::Result<()>| r.unwrap_err().raw_os_error() == Some(libc::EROFS);
        assert!(erofs(symlink("/etc", served.join("c1"))));
        assert!(erofs(std::fs::remove_dir(served.join(VOLUMES_DIR))));
        assert!(erofs(std::fs::rename(
            served.join(VOLUMES_DIR),
            served.join("x")
        )));
        assert!(erofs(std::fs::write(served.join("f"), "x")));
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        share.make_dirs(Path::new("c1")).unwrap();
        share
            .bind(&src, Path::new("c1"), BindFlags::default())
            .unwrap();
        let opts = options(&served.join("c1")).unwrap();
        assert!(opts.contains("nosuid") && opts.contains("nodev") && opts.starts_with("rw"));
        std::fs::write(served.join("c1/f"), "w").unwrap();
        assert!(share.unmount(Path::new("c1")).unwrap());
        assert!(!share.unmount(Path::new("c1")).unwrap(), "already gone");
        share.remove_entry(Path::new("c1"), Kind::Dir).unwrap();
        share.remove().unwrap();
        remove_pod_dir(share.dir.as_path());
        assert!(mounts_below(tmp.path()).is_empty());
        assert_eq!(
            std::fs::read_dir(tmp.path().join("run")).unwrap().count(),
            0
        );
    }

    #[test]
    fn mounts_below_the_served_share_reach_a_slave_namespace_and_leave_it() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let share = pod(tmp.path(), "p");
        let served = share.served();
        // What virtiofsd's namespace sandbox makes: a mount namespace, slave of the host's.
        let mut slave = std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "slave", "sleep", "60"])
            .spawn()
            .unwrap();
        let in_slave = |path: &Path| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", slave.id()))
                    .unwrap_or_default();
                // unshare has made its namespace once the served share shows up as a slave.
                if info.contains(&format!(" {} ", served.display())) && info.contains("master:") {
                    let point = format!(" {} ", path.display());
                    return info.lines().any(|l| l.contains(&point));
                }
                assert!(std::time::Instant::now() < deadline, "no slave namespace");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        assert!(!in_slave(&served.join("c1")));
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        share.make_dirs(Path::new("c1")).unwrap();
        share
            .bind(&src, Path::new("c1"), BindFlags::default())
            .unwrap();
        let seen = in_slave(&served.join("c1"));
        assert!(share.unmount(Path::new("c1")).unwrap());
        let still = in_slave(&served.join("c1"));
        let _ = slave.kill();
        let _ = slave.wait();
        assert!(
            seen,
            "a container root bound later reaches the slave namespace"
        );
        assert!(!still, "and its unmount too");
        share.remove_entry(Path::new("c1"), Kind::Dir).unwrap();
        share.remove().unwrap();
        remove_pod_dir(share.dir.as_path());
        assert!(mounts_below(tmp.path()).is_empty());
    }

    #[test]
    fn walks_refuse_symlinks_planted_in_the_host_only_root() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let canary = Canary::new(outside.join("canary"));
        let share = pod(tmp.path(), "p");
        let root = share.dir.join(SHARE_ROOT);
        let before = mounts_outside(tmp.path(), &share.dir);
        // `.volumes` itself a symlink, `<container>` a symlink, and a mount point
        // that is a symlink to a host file or directory.
        std::fs::remove_dir(root.join(VOLUMES_DIR)).unwrap();
        symlink(&outside, root.join(VOLUMES_DIR)).unwrap();
        symlink(&outside, root.join("c1")).unwrap();
        assert!(share.make_dirs(Path::new(".volumes/c1")).is_err());
        assert!(share.make_dirs(Path::new("c1")).is_err());
        assert!(share
            .bind(&outside, Path::new("c1"), BindFlags::default())
            .is_err());
        std::fs::remove_file(root.join(VOLUMES_DIR)).unwrap();
        share.make_dirs(Path::new(".volumes/c1")).unwrap();
        symlink(&canary.path, root.join(".volumes/c1/0")).unwrap();
        symlink(&outside, root.join(".volumes/c1/1")).unwrap();
        for (n, kind) in [("0", Kind::File), ("1", Kind::Dir), ("0", Kind::Dir)] {
            let rel = Path::new(".volumes/c1").join(n);
            let err = share.make_mount_point(&rel, kind).unwrap_err();
            assert!(err.to_string().contains("symlinks"), "{err}");
            assert!(share.bind(&outside, &rel, BindFlags::default()).is_err());
            assert!(!share.unmount(&rel).unwrap_or(false));
        }
        assert!(
            std::fs::read_dir(&outside).unwrap().count() == 1,
            "nothing created outside"
        );
        canary.assert_intact("planted symlinks");
        assert_eq!(
            mounts_outside(tmp.path(), &share.dir),
            before,
            "nothing mounted outside"
        );
        share
            .remove_entry(Path::new(".volumes/c1/0"), Kind::File)
            .unwrap();
        assert!(
            canary.path.exists(),
            "unlinkat removes the link, not its target"
        );
        share.remove().unwrap();
        assert!(mounts_below(tmp.path()).is_empty());
    }

    #[test]
    fn unmount_beneath_never_follows_a_swapped_in_symlink() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let pod = tmp.path().join("pod");
        let outside = tmp.path().join("outside");
        for d in [pod.join("a/sub"), outside.join("sub")] {
            std::fs::create_dir_all(d).unwrap();
        }
        let tmpfs = |p: &Path| {
            nix::mount::mount(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .unwrap()
        };
        tmpfs(&pod.join("a/sub"));
        tmpfs(&outside.join("sub"));
        // A guest renames a directory above a mount and puts a symlink in its place.
        std::fs::rename(pod.join("a"), pod.join("b")).unwrap();
        symlink(&outside, pod.join("a")).unwrap();
        let dir = open_dir(&pod).unwrap();
        let err = unmount_beneath(dir.as_fd(), Path::new("a/sub")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        assert!(
            options(&outside.join("sub")).is_some(),
            "the outside mount stays"
        );
        assert!(unmount_beneath(dir.as_fd(), Path::new("b/sub")).unwrap());
        // The last component a symlink to a mount point: UMOUNT_NOFOLLOW.
        symlink(outside.join("sub"), pod.join("link")).unwrap();
        assert!(!unmount_beneath(dir.as_fd(), Path::new("link")).unwrap());
        assert!(
            options(&outside.join("sub")).is_some(),
            "the outside mount stays"
        );
        nix::mount::umount(&outside.join("sub")).unwrap();
    }
}
