//! A container's root filesystem on the host: containerd's mounts at
//! `<bundle>/rootfs`, bind-mounted into the pod's shared directory that
//! virtiofsd serves. Everything done is undone, on errors too.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Errors of mounting or unmounting a root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mount type {0:?} is not supported (overlay and bind are)")]
    UnsupportedType(String),
    #[error("mount {kind} {source_path} on {target}")]
    Mount {
        kind: String,
        source_path: String,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("unmount {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("create directory {path}")]
    Mkdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One mount containerd passes in `CreateTaskRequest.rootfs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Splits mount options into flags and filesystem data, as mount(8) does.
fn split_options(options: &[String]) -> (MsFlags, Vec<&str>) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for opt in options {
        match opt.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            other => data.push(other),
        }
    }
    (flags, data)
}

/// Undoes mounts and directory creations in reverse order, unless disarmed.
#[derive(Debug, Default)]
struct Undo {
    mounts: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

impl Undo {
    fn mkdir_all(&mut self, path: &Path) -> Result<(), RootfsError> {
        let mut missing = Vec::new();
        let mut cur = Some(path);
        while let Some(p) = cur {
            if p.exists() {
                break;
            }
            missing.push(p.to_path_buf());
            cur = p.parent();
        }
        for dir in missing.into_iter().rev() {
            std::fs::create_dir(&dir).map_err(|source| RootfsError::Mkdir {
                path: dir.clone(),
                source,
            })?;
            self.dirs.push(dir);
        }
        Ok(())
    }

    fn run(&mut self) -> Result<(), RootfsError> {
        let mut first_err = None;
        while let Some(target) = self.mounts.pop() {
            if let Err(e) = unmount(&target) {
                tracing::warn!("{e}");
                first_err.get_or_insert(e);
            }
        }
        while let Some(dir) = self.dirs.pop() {
            if let Err(e) = std::fs::remove_dir(&dir) {
                tracing::warn!(dir = %dir.display(), "remove: {e}");
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Unmounts `target`, lazily if it is busy; a target that is not mounted is fine.
pub fn unmount(target: &Path) -> Result<(), RootfsError> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(nix::Error::EBUSY) => {
            umount2(target, MntFlags::MNT_DETACH).map_err(|source| RootfsError::Unmount {
                target: target.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(RootfsError::Unmount {
            target: target.to_path_buf(),
            source,
        }),
    }
}

/// The mounted root of one container; call [`ContainerRootfs::teardown`] to undo it.
#[derive(Debug)]
pub struct ContainerRootfs {
    /// `<share_dir>/<container_id>`, the directory served to the guest.
    pub shared: PathBuf,
    undo: Undo,
}

impl ContainerRootfs {
    /// Mounts `mounts` at `<bundle>/rootfs` (or uses it as is when `mounts` is empty)
    /// and bind-mounts the result at `shared`.
    pub fn setup(mounts: &[MountSpec], bundle: &Path, shared: &Path) -> Result<Self, RootfsError> {
        let mut undo = Undo::default();
        match Self::mount_all(&mut undo, mounts, bundle, shared) {
            Ok(()) => Ok(Self {
                shared: shared.to_path_buf(),
                undo,
            }),
            Err(e) => {
                let _ = undo.run();
                Err(e)
            }
        }
    }

    fn mount_all(
        undo: &mut Undo,
        mounts: &[MountSpec],
        bundle: &Path,
        shared: &Path,
    ) -> Result<(), RootfsError> {
        let rootfs = bundle.join("rootfs");
        undo.mkdir_all(&rootfs)?;
        for m in mounts {
            let (mut flags, data) = split_options(&m.options);
            let kind = match m.kind.as_str() {
                "bind" | "rbind" => {
                    flags |= MsFlags::MS_BIND;
                    None
                }
                "overlay" | "tmpfs" => Some(m.kind.as_str()),
                _ if flags.contains(MsFlags::MS_BIND) => None,
                other => return Err(RootfsError::UnsupportedType(other.to_string())),
            };
            do_mount(&m.source, &rootfs, kind, flags, &data.join(","))?;
            undo.mounts.push(rootfs.clone());
            if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
                // A bind mount only becomes read-only through a remount.
                do_mount("", &rootfs, None, flags | MsFlags::MS_REMOUNT, "")?;
            }
        }
        undo.mkdir_all(shared)?;
        do_mount(
            &rootfs.to_string_lossy(),
            shared,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            "",
        )?;
        undo.mounts.push(shared.to_path_buf());
        Ok(())
    }

    /// Unmounts the shared bind and containerd's mounts, and removes the directories
    /// this created. Safe to call again after an error.
    pub fn teardown(&mut self) -> Result<(), RootfsError> {
        self.undo.run()
    }
}

impl Drop for ContainerRootfs {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(shared = %self.shared.display(), "rootfs teardown on drop: {e}");
        }
    }
}

fn do_mount(
    source: &str,
    target: &Path,
    kind: Option<&str>,
    flags: MsFlags,
    data: &str,
) -> Result<(), RootfsError> {
    let data = (!data.is_empty()).then_some(data);
    let src = (!source.is_empty()).then_some(source);
    mount(src, target, kind, flags, data).map_err(|source_err| RootfsError::Mount {
        kind: kind.unwrap_or("bind").to_string(),
        source_path: source.to_string(),
        target: target.to_path_buf(),
        source: source_err,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_mountpoint(p: &Path) -> bool {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let p = p.to_string_lossy();
        mounts.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
    }

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "host tier: this test mounts and needs root"
        );
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["ro", "rbind", "nosuid", "lowerdir=/a:/b", "index=off"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = split_options(&opts);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC));
        assert!(flags.contains(MsFlags::MS_NOSUID));
        assert_eq!(data, vec!["lowerdir=/a:/b", "index=off"]);
    }

    #[test]
    fn bind_rootfs_is_shared_and_fully_undone() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("image");
        std::fs::create_dir(&image).unwrap();
        std::fs::write(image.join("hello"), "hi").unwrap();
        let bundle = tmp.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        let shared = tmp.path().join("pod/shared/c1");
        let mounts = [MountSpec {
            kind: "bind".into(),
            source: image.to_string_lossy().into(),
            options: vec!["rbind".into(), "ro".into()],
        }];
        let mut rootfs = ContainerRootfs::setup(&mounts, &bundle, &shared).unwrap();
        assert_eq!(std::fs::read_to_string(shared.join("hello")).unwrap(), "hi");
        assert!(
            std::fs::write(shared.join("new"), "x").is_err(),
            "ro must be enforced"
        );
        rootfs.teardown().unwrap();
        assert!(!is_mountpoint(&shared) && !is_mountpoint(&bundle.join("rootfs")));
        assert!(
            !tmp.path().join("pod").exists(),
            "created directories are removed"
        );
        assert!(!bundle.join("rootfs").exists());
        assert!(image.join("hello").exists(), "the source is untouched");
    }

    #[test]
    fn overlay_rootfs_mounts() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        for d in ["lower", "upper", "work", "bundle"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        std::fs::write(tmp.path().join("lower/f"), "lower").unwrap();
        let p = |d: &str| tmp.path().join(d).to_string_lossy().into_owned();
        let mounts = [MountSpec {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}", p("lower")),
                format!("upperdir={}", p("upper")),
                format!("workdir={}", p("work")),
            ],
        }];
        let shared = tmp.path().join("shared/c");
        let rootfs = ContainerRootfs::setup(&mounts, &tmp.path().join("bundle"), &shared).unwrap();
        std::fs::write(shared.join("g"), "new").unwrap();
        assert_eq!(std::fs::read_to_string(shared.join("f")).unwrap(), "lower");
        drop(rootfs);
        assert!(!shared.exists());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("upper/g")).unwrap(),
            "new"
        );
    }

    #[test]
    fn failure_leaves_nothing_behind() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let bundle = tmp.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        let mounts = [
            MountSpec {
                kind: "bind".into(),
                source: tmp.path().to_string_lossy().into(),
                options: vec!["rbind".into()],
            },
            MountSpec {
                kind: "nfs".into(),
                source: "server:/x".into(),
                options: vec![],
            },
        ];
        let err = ContainerRootfs::setup(&mounts, &bundle, &tmp.path().join("s/c")).unwrap_err();
        assert!(matches!(err, RootfsError::UnsupportedType(_)), "{err}");
        assert!(!is_mountpoint(&bundle.join("rootfs")));
        assert!(!bundle.join("rootfs").exists() && !tmp.path().join("s").exists());
    }
}
