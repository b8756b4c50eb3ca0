//! A container's root filesystem on the host: containerd's mounts at
//! `<bundle>/rootfs`, bind-mounted into the pod's shared directory that
//! virtiofsd serves. Everything done is undone, on errors too.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

use crate::backend::SharedVolume;

/// File in the bundle naming the container's shared directory, so the `delete`
/// subcommand finds it after the shim died, whatever config the shim had.
pub const SHARE_MARKER: &str = "hull-shared";

/// Directory of the share holding the containers' volumes, `<VOLUMES_DIR>/<container_id>/<n>`
/// (container ids never start with a dot, so it cannot clash with a rootfs).
pub const VOLUMES_DIR: &str = ".volumes";

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
    #[error("write {path}")]
    Marker {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("volume source {0} does not exist")]
    MissingSource(PathBuf),
    #[error("create directory {path}")]
    Mkdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A bind mount of the OCI spec whose source is on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub source: PathBuf,
    pub destination: PathBuf,
    pub options: Vec<String>,
}

/// The spec's bind mounts with an absolute host source (volumes, CRI's
/// `/etc/hosts` and the like); other mounts (proc, tmpfs...) are the guest's.
pub fn bind_volumes(spec: &Spec) -> Vec<VolumeSpec> {
    spec.mounts()
        .iter()
        .flatten()
        .filter(|m| {
            let options = m.options().as_deref().unwrap_or_default();
            m.typ().as_deref() == Some("bind")
                || options.iter().any(|o| o == "bind" || o == "rbind")
        })
        .filter_map(|m| {
            let source = m.source().clone()?;
            source.is_absolute().then(|| VolumeSpec {
                source,
                destination: m.destination().clone(),
                options: m.options().clone().unwrap_or_default(),
            })
        })
        .collect()
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
    files: Vec<PathBuf>,
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
        for file in self.files.drain(..) {
            let _ = std::fs::remove_file(file);
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
        let marker = bundle.join(SHARE_MARKER);
        std::fs::write(&marker, shared.as_os_str().as_encoded_bytes()).map_err(|source| {
            RootfsError::Marker {
                path: marker.clone(),
                source,
            }
        })?;
        undo.files.push(marker);
        Ok(())
    }

    /// Binds each volume at `<dir>/<index>` (a directory Hull creates inside the share,
    /// so no path from the image is followed), read-only when its options say `ro`.
    /// Undone by [`ContainerRootfs::teardown`].
    pub fn share_volumes(
        &mut self,
        volumes: &[VolumeSpec],
        share_dir: &Path,
        dir_in_share: &str,
    ) -> Result<Vec<SharedVolume>, RootfsError> {
        let mut shared = Vec::new();
        for (index, volume) in volumes.iter().enumerate() {
            let rel = format!("{dir_in_share}/{index}");
            let target = share_dir.join(&rel);
            let meta = std::fs::metadata(&volume.source)
                .map_err(|_| RootfsError::MissingSource(volume.source.clone()))?;
            if meta.is_dir() {
                self.undo.mkdir_all(&target)?;
            } else {
                self.undo.mkdir_all(target.parent().unwrap_or(share_dir))?;
                std::fs::write(&target, b"").map_err(|source| RootfsError::Marker {
                    path: target.clone(),
                    source,
                })?;
                self.undo.files.push(target.clone());
            }
            let (flags, _) = split_options(&volume.options);
            let recursive = flags & MsFlags::MS_REC;
            do_mount(
                &volume.source.to_string_lossy(),
                &target,
                None,
                MsFlags::MS_BIND | recursive,
                "",
            )?;
            self.undo.mounts.push(target.clone());
            let readonly = flags.contains(MsFlags::MS_RDONLY);
            if readonly {
                let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                do_mount("", &target, None, remount, "")?;
            }
            shared.push(SharedVolume {
                destination: volume.destination.clone(),
                path_in_share: rel,
                readonly,
            });
        }
        Ok(shared)
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
        let marker = bundle.join(SHARE_MARKER);
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            shared.to_str().unwrap()
        );
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
        assert!(!bundle.join("rootfs").exists() && !marker.exists());
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

    #[test]
    fn only_host_bind_mounts_are_volumes() {
        let spec: Spec = serde_json::from_str(
            r#"{"ociVersion":"1.0.2","mounts":[
                {"destination":"/proc","type":"proc","source":"proc"},
                {"destination":"/data","type":"bind","source":"/srv/data","options":["rbind","ro"]},
                {"destination":"/etc/hosts","source":"/var/lib/hosts","options":["bind"]},
                {"destination":"/x","type":"bind","source":"relative"}]}"#,
        )
        .unwrap();
        let v = bind_volumes(&spec);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].destination, PathBuf::from("/data"));
        assert_eq!(v[1].source, PathBuf::from("/var/lib/hosts"));
    }

    #[test]
    fn volumes_are_shared_read_only_when_asked_and_undone() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("f"), "v").unwrap();
        let hosts = tmp.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 x\n").unwrap();
        let bundle = tmp.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        let share = tmp.path().join("share");
        let mut rootfs = ContainerRootfs::setup(&[], &bundle, &share.join("c1")).unwrap();
        let volumes = [
            VolumeSpec {
                source: data.clone(),
                destination: "/data".into(),
                options: vec!["rbind".into(), "ro".into()],
            },
            VolumeSpec {
                source: hosts,
                destination: "/etc/hosts".into(),
                options: vec!["bind".into()],
            },
        ];
        let shared = rootfs
            .share_volumes(&volumes, &share, ".volumes/c1")
            .unwrap();
        assert_eq!(shared[0].path_in_share, ".volumes/c1/0");
        assert!(shared[0].readonly && !shared[1].readonly);
        let v0 = share.join(".volumes/c1/0");
        assert_eq!(std::fs::read_to_string(v0.join("f")).unwrap(), "v");
        assert!(
            std::fs::write(v0.join("g"), "x").is_err(),
            "ro enforced on the host"
        );
        let v1 = share.join(".volumes/c1/1");
        assert!(std::fs::read_to_string(&v1)
            .unwrap()
            .starts_with("127.0.0.1"));
        let missing = [VolumeSpec {
            source: tmp.path().join("nope"),
            destination: "/n".into(),
            options: vec![],
        }];
        assert!(matches!(
            rootfs.share_volumes(&missing, &share, ".volumes/c1"),
            Err(RootfsError::MissingSource(_))
        ));
        rootfs.teardown().unwrap();
        assert!(!share.exists(), "everything under the share is gone");
        assert!(!is_mountpoint(&v0) && data.join("f").exists());
    }
}
