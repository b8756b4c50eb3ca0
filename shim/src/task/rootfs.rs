//! A container's root filesystem on the host: containerd's mounts at
//! `<bundle>/rootfs`, bind-mounted into the pod's shared directory that
//! virtiofsd serves (see `share.rs` for why nothing there follows a symlink).
//! Everything done is undone, on errors too.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

use super::share::{self, BindFlags, Kind, PodShare, ShareError};
use crate::backend::SharedVolume;

/// File in the bundle naming the container's shared directory, so the `delete`
/// subcommand finds it after the shim died, whatever config the shim had.
pub const SHARE_MARKER: &str = "hull-shared";

pub use super::share::VOLUMES_DIR;

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
    #[error("{0} is not <pod>/shared/<container> of a pod share")]
    NotInShare(PathBuf),
    #[error(transparent)]
    Share(#[from] ShareError),
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

/// containerd's rootfs mounts without their writable part, all read-only: an overlay loses
/// `upperdir` and `workdir` (a single lower layer becomes a bind mount of it, since an
/// overlay without an upper layer needs two), a bind mount gains `ro`.
pub(super) fn image_layers(mounts: &[MountSpec]) -> Vec<MountSpec> {
    let read_only = |options: Vec<String>| {
        let mut options: Vec<String> = options.into_iter().filter(|o| o != "rw").collect();
        if !options.iter().any(|o| o == "ro") {
            options.push("ro".into());
        }
        options
    };
    mounts
        .iter()
        .map(|m| {
            if m.kind != "overlay" {
                return MountSpec {
                    options: read_only(m.options.clone()),
                    ..m.clone()
                };
            }
            let options: Vec<String> = m
                .options
                .iter()
                .filter(|o| !o.starts_with("upperdir=") && !o.starts_with("workdir="))
                .cloned()
                .collect();
            let lowers: Vec<&str> = options
                .iter()
                .find_map(|o| o.strip_prefix("lowerdir="))
                .map(|l| l.split(':').collect())
                .unwrap_or_default();
            match lowers.as_slice() {
                [only] => MountSpec {
                    kind: "bind".into(),
                    source: (*only).into(),
                    options: vec!["rbind".into(), "ro".into()],
                },
                _ => MountSpec {
                    options: read_only(options),
                    ..m.clone()
                },
            }
        })
        .collect()
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

/// One step to undo, in reverse order of creation.
#[derive(Debug)]
enum Step {
    /// A mount at a host path the shim owns (the bundle's rootfs).
    HostMount(PathBuf),
    HostDir(PathBuf),
    HostFile(PathBuf),
    /// A mount at a path inside the served share.
    ShareMount(PathBuf),
    /// A directory or mount point made in the share's host-only root.
    ShareEntry(PathBuf, Kind),
}

/// Undoes mounts and creations in reverse order.
#[derive(Debug, Default)]
struct Undo {
    steps: Vec<Step>,
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
            self.steps.push(Step::HostDir(dir));
        }
        Ok(())
    }

    fn run(&mut self, share: &PodShare) -> Result<(), RootfsError> {
        let mut first_err = None;
        while let Some(step) = self.steps.pop() {
            let result = match step {
                Step::HostMount(target) => unmount(&target),
                Step::ShareMount(rel) => share.unmount(&rel).map(drop).map_err(Into::into),
                Step::HostFile(file) => {
                    let _ = std::fs::remove_file(file);
                    Ok(())
                }
                Step::HostDir(dir) => {
                    if let Err(e) = std::fs::remove_dir(&dir) {
                        tracing::warn!(dir = %dir.display(), "remove: {e}");
                    }
                    Ok(())
                }
                Step::ShareEntry(rel, kind) => {
                    if let Err(e) = share.remove_entry(&rel, kind) {
                        tracing::warn!("{e}");
                    }
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::warn!("{e}");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Unmounts `target` (a host path the shim owns, never inside the share),
/// lazily if it is busy; a target that is not mounted is fine.
pub fn unmount(target: &Path) -> Result<(), RootfsError> {
    let err = |source| RootfsError::Unmount {
        target: target.to_path_buf(),
        source,
    };
    match umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(nix::Error::EBUSY) => {
            umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).map_err(err)
        }
        Err(source) => Err(err(source)),
    }
}

/// The mounted root of one container; call [`ContainerRootfs::teardown`] to undo it.
#[derive(Debug)]
pub struct ContainerRootfs {
    /// `<pod>/shared/<container_id>`, the directory served to the guest.
    pub shared: PathBuf,
    share: PodShare,
    undo: Undo,
}

impl ContainerRootfs {
    /// Mounts `mounts` at `<bundle>/rootfs` (or uses it as is when `mounts` is empty)
    /// and binds the result, nosuid and nodev, at `shared`: `<pod>/shared/<container_id>`
    /// of a pod share made by [`PodShare::create`]. With `image_only` (the writable layer
    /// lives in the guest), only the image's layers are mounted and everything is read-only.
    pub fn setup(
        mounts: &[MountSpec],
        bundle: &Path,
        shared: &Path,
        image_only: bool,
    ) -> Result<Self, RootfsError> {
        let bad = || RootfsError::NotInShare(shared.to_path_buf());
        let id = shared
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| share::one_component(n))
            .ok_or_else(bad)?;
        let served = shared.parent().ok_or_else(bad)?;
        if served.file_name() != Some(std::ffi::OsStr::new(share::SHARED)) {
            return Err(bad());
        }
        let share = PodShare::open(served.parent().ok_or_else(bad)?)?;
        let mut rootfs = Self {
            shared: shared.to_path_buf(),
            share,
            undo: Undo::default(),
        };
        let image;
        let mounts = match image_only {
            true => {
                image = image_layers(mounts);
                &image
            }
            false => mounts,
        };
        match rootfs.mount_all(mounts, bundle, id, image_only) {
            Ok(()) => Ok(rootfs),
            Err(e) => {
                let _ = rootfs.teardown();
                Err(e)
            }
        }
    }

    fn mount_all(
        &mut self,
        mounts: &[MountSpec],
        bundle: &Path,
        id: &str,
        readonly: bool,
    ) -> Result<(), RootfsError> {
        let undo = &mut self.undo;
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
            undo.steps.push(Step::HostMount(rootfs.clone()));
            if flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY) {
                // A bind mount only becomes read-only through a remount.
                do_mount("", &rootfs, None, flags | MsFlags::MS_REMOUNT, "")?;
            }
        }
        for dir in self.share.make_dirs(Path::new(id))? {
            undo.steps.push(Step::ShareEntry(dir, Kind::Dir));
        }
        let flags = BindFlags {
            recursive: true,
            readonly,
        };
        self.share.bind(&rootfs, Path::new(id), flags)?;
        undo.steps.push(Step::ShareMount(id.into()));
        let marker = bundle.join(SHARE_MARKER);
        std::fs::write(&marker, self.shared.as_os_str().as_encoded_bytes()).map_err(|source| {
            RootfsError::Marker {
                path: marker.clone(),
                source,
            }
        })?;
        undo.steps.push(Step::HostFile(marker));
        Ok(())
    }

    /// Binds each volume, nosuid and nodev, at `<dir_in_share>/<index>` of the
    /// served `share_dir` (a mount point Hull creates in the share's host-only
    /// root, so no path from the image or the guest is followed), read-only when
    /// its options say `ro`. Undone by [`ContainerRootfs::teardown`].
    pub fn share_volumes(
        &mut self,
        volumes: &[VolumeSpec],
        share_dir: &Path,
        dir_in_share: &str,
    ) -> Result<Vec<SharedVolume>, RootfsError> {
        if share_dir != self.share.served() {
            return Err(RootfsError::NotInShare(share_dir.to_path_buf()));
        }
        let mut shared = Vec::new();
        if volumes.is_empty() {
            return Ok(shared);
        }
        for dir in self.share.make_dirs(Path::new(dir_in_share))? {
            self.undo.steps.push(Step::ShareEntry(dir, Kind::Dir));
        }
        for (index, volume) in volumes.iter().enumerate() {
            let rel = format!("{dir_in_share}/{index}");
            let meta = std::fs::metadata(&volume.source)
                .map_err(|_| RootfsError::MissingSource(volume.source.clone()))?;
            let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
            self.share.make_mount_point(Path::new(&rel), kind)?;
            self.undo
                .steps
                .push(Step::ShareEntry(rel.clone().into(), kind));
            let (flags, _) = split_options(&volume.options);
            let bind = BindFlags {
                recursive: flags.contains(MsFlags::MS_REC),
                readonly: flags.contains(MsFlags::MS_RDONLY),
            };
            self.share.bind(&volume.source, Path::new(&rel), bind)?;
            self.undo.steps.push(Step::ShareMount(rel.clone().into()));
            shared.push(SharedVolume {
                destination: volume.destination.clone(),
                path_in_share: rel,
                readonly: bind.readonly,
            });
        }
        Ok(shared)
    }

    /// Unmounts the shared bind and containerd's mounts, and removes what this
    /// created. Safe to call again after an error.
    pub fn teardown(&mut self) -> Result<(), RootfsError> {
        self.undo.run(&self.share)
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
    use super::share::test_util::*;
    use super::*;
    use std::os::unix::fs::symlink;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn is_mountpoint(p: &Path) -> bool {
        options(p).is_some()
    }

    /// A pod share and a bundle (with `rootfs` holding `hello`) in `tmp`.
    fn fixture(tmp: &Path) -> (PodShare, PathBuf) {
        let share = pod(tmp, "pod");
        let bundle = tmp.join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::write(bundle.join("rootfs/hello"), "hi").unwrap();
        (share, bundle)
    }

    /// Removes the share and asserts the pod left nothing: no mount, no file.
    fn assert_pod_gone(tmp: &Path, share: PodShare) {
        let dir = share.served().parent().unwrap().to_path_buf();
        share.remove().unwrap();
        share::remove_pod_dir(&dir);
        assert_eq!(mounts_below(tmp), Vec::<PathBuf>::new(), "mounts left");
        assert!(!tmp.join("run/ns").exists(), "pod directories left");
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
    fn bind_rootfs_is_shared_nosuid_nodev_and_fully_undone() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("image");
        std::fs::create_dir(&image).unwrap();
        std::fs::write(image.join("hello"), "hi").unwrap();
        let (share, _) = fixture(tmp.path());
        let bundle = tmp.path().join("bundle2");
        std::fs::create_dir(&bundle).unwrap();
        let shared = share.served().join("c1");
        let mounts = [MountSpec {
            kind: "bind".into(),
            source: image.to_string_lossy().into(),
            options: vec!["rbind".into(), "ro".into()],
        }];
        let mut rootfs = ContainerRootfs::setup(&mounts, &bundle, &shared, false).unwrap();
        assert_eq!(std::fs::read_to_string(shared.join("hello")).unwrap(), "hi");
        let opts = options(&shared).unwrap();
        for flag in ["ro", "nosuid", "nodev"] {
            assert!(opts.split(',').any(|o| o == flag), "{flag} in {opts}");
        }
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
        assert!(!shared.exists(), "the mount point is removed");
        assert!(!bundle.join("rootfs").exists() && !marker.exists());
        assert!(image.join("hello").exists(), "the source is untouched");
        assert_pod_gone(tmp.path(), share);
    }

    #[test]
    fn overlay_rootfs_mounts() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        for d in ["lower", "upper", "work", "b"] {
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
        let (share, _) = fixture(tmp.path());
        let shared = share.served().join("c");
        let rootfs =
            ContainerRootfs::setup(&mounts, &tmp.path().join("b"), &shared, false).unwrap();
        std::fs::write(shared.join("g"), "new").unwrap();
        assert_eq!(std::fs::read_to_string(shared.join("f")).unwrap(), "lower");
        drop(rootfs);
        assert!(!shared.exists());
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("upper/g")).unwrap(),
            "new"
        );
        assert_pod_gone(tmp.path(), share);
    }

    #[test]
    fn image_layers_drop_the_writable_part() {
        let opts = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let overlay = |o: &[&str]| MountSpec {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: opts(o),
        };
        let two = image_layers(&[overlay(&[
            "index=off",
            "workdir=/s/9/work",
            "upperdir=/s/9/fs",
            "lowerdir=/s/2/fs:/s/1/fs",
        ])]);
        assert_eq!(
            two,
            [overlay(&["index=off", "lowerdir=/s/2/fs:/s/1/fs", "ro"])]
        );
        let one = image_layers(&[overlay(&["workdir=/w", "upperdir=/u", "lowerdir=/s/1/fs"])]);
        assert_eq!(
            one,
            [MountSpec {
                kind: "bind".into(),
                source: "/s/1/fs".into(),
                options: opts(&["rbind", "ro"]),
            }]
        );
        let bind = MountSpec {
            kind: "bind".into(),
            source: "/snap".into(),
            options: opts(&["rbind", "rw"]),
        };
        assert_eq!(image_layers(&[bind])[0].options, opts(&["rbind", "ro"]));
    }

    #[test]
    fn image_only_overlay_serves_the_layers_read_only_and_leaves_the_upper_alone() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        for d in ["l1", "l2", "upper", "work", "b", "b1"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        std::fs::write(tmp.path().join("l1/f"), "l1").unwrap();
        std::fs::write(tmp.path().join("l2/g"), "l2").unwrap();
        std::fs::write(tmp.path().join("upper/old"), "upper").unwrap();
        let p = |d: &str| tmp.path().join(d).to_string_lossy().into_owned();
        let (share, _) = fixture(tmp.path());
        for (lowers, bundle, id) in [
            (format!("{}:{}", p("l2"), p("l1")), "b", "c"),
            (p("l1"), "b1", "c1"),
        ] {
            let mounts = [MountSpec {
                kind: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    format!("lowerdir={lowers}"),
                    format!("upperdir={}", p("upper")),
                    format!("workdir={}", p("work")),
                ],
            }];
            let shared = share.served().join(id);
            let rootfs =
                ContainerRootfs::setup(&mounts, &tmp.path().join(bundle), &shared, true).unwrap();
            assert_eq!(std::fs::read_to_string(shared.join("f")).unwrap(), "l1");
            assert_eq!(shared.join("g").exists(), lowers.contains(':'), "{lowers}");
            assert!(
                !shared.join("old").exists(),
                "the upper layer is not served"
            );
            let err = std::fs::write(shared.join("new"), "x").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
            assert!(options(&shared).unwrap().starts_with("ro"));
            drop(rootfs);
            assert!(!shared.exists());
        }
        assert_eq!(
            std::fs::read_dir(tmp.path().join("upper")).unwrap().count(),
            1
        );
        assert_pod_gone(tmp.path(), share);
    }

    #[test]
    fn failure_leaves_nothing_behind() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let (share, bundle) = fixture(tmp.path());
        let mounts = [
            MountSpec {
                kind: "bind".into(),
                source: tmp.path().join("bundle/rootfs").to_string_lossy().into(),
                options: vec!["rbind".into()],
            },
            MountSpec {
                kind: "nfs".into(),
                source: "server:/x".into(),
                options: vec![],
            },
        ];
        let b2 = tmp.path().join("b2");
        let err =
            ContainerRootfs::setup(&mounts, &b2, &share.served().join("c"), false).unwrap_err();
        assert!(matches!(err, RootfsError::UnsupportedType(_)), "{err}");
        assert!(!b2.join("rootfs").exists());
        for bad in [tmp.path().join("elsewhere/c"), share.served().join("..")] {
            let err = ContainerRootfs::setup(&[], &bundle, &bad, false).unwrap_err();
            assert!(matches!(err, RootfsError::NotInShare(_)), "{err}");
        }
        assert_pod_gone(tmp.path(), share);
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
    fn volumes_are_shared_nosuid_nodev_read_only_when_asked_and_undone() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("f"), "v").unwrap();
        // A block device node and a setuid file in the volume's source.
        nix::sys::stat::mknod(
            &data.join("blk"),
            nix::sys::stat::SFlag::S_IFBLK,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(7, 0),
        )
        .unwrap();
        let hosts = tmp.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 x\n").unwrap();
        let (share, bundle) = fixture(tmp.path());
        let served = share.served();
        let mut rootfs = ContainerRootfs::setup(&[], &bundle, &served.join("c1"), false).unwrap();
        let volumes = [
            VolumeSpec {
                source: data.clone(),
                destination: "/data".into(),
                options: vec!["rbind".into(), "ro".into()],
            },
            VolumeSpec {
                source: hosts.clone(),
                destination: "/etc/hosts".into(),
                options: vec!["bind".into()],
            },
        ];
        let shared = rootfs
            .share_volumes(&volumes, &served, ".volumes/c1")
            .unwrap();
        assert_eq!(shared[0].path_in_share, ".volumes/c1/0");
        assert!(shared[0].readonly && !shared[1].readonly);
        let v0 = served.join(".volumes/c1/0");
        assert_eq!(std::fs::read_to_string(v0.join("f")).unwrap(), "v");
        assert!(
            std::fs::write(v0.join("g"), "x").is_err(),
            "ro enforced on the host"
        );
        let err = std::fs::File::open(v0.join("blk")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "nodev: {err}");
        let v1 = served.join(".volumes/c1/1");
        assert!(std::fs::read_to_string(&v1)
            .unwrap()
            .starts_with("127.0.0.1"));
        for (v, ro) in [(&v0, true), (&v1, false)] {
            let opts = options(v).unwrap();
            assert!(opts.contains("nosuid") && opts.contains("nodev"), "{opts}");
            assert_eq!(opts.starts_with("ro"), ro, "{opts}");
        }
        let missing = [VolumeSpec {
            source: tmp.path().join("nope"),
            destination: "/n".into(),
            options: vec![],
        }];
        assert!(matches!(
            rootfs.share_volumes(&missing, &served, ".volumes/c1"),
            Err(RootfsError::MissingSource(_))
        ));
        rootfs.teardown().unwrap();
        assert!(!is_mountpoint(&v0) && data.join("f").exists());
        assert!(!served.join(".volumes/c1").exists() && !served.join("c1").exists());
        assert_eq!(std::fs::read_to_string(&hosts).unwrap(), "127.0.0.1 x\n");
        assert_pod_gone(tmp.path(), share);
    }

    /// Plants `link` -> `target` in the host-only root, as a guest could if it
    /// ever reached it (the layout keeps it out; this checks the walk as well).
    fn plant(share: &PodShare, rel: &str, target: &Path) {
        let root = share.served().with_file_name(share::SHARE_ROOT);
        let link = root.join(rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        symlink(target, link).unwrap();
    }

    #[test]
    fn planted_symlinks_make_the_shim_touch_nothing_outside_the_pod() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let canary = Canary::new(outside.join("canary"));
        let file_vol = tmp.path().join("vol-file");
        std::fs::write(&file_vol, "volume\n").unwrap();
        let dir_vol = tmp.path().join("vol-dir");
        std::fs::create_dir(&dir_vol).unwrap();
        let volumes = [
            VolumeSpec {
                source: file_vol.clone(),
                destination: "/f".into(),
                options: vec!["bind".into()],
            },
            VolumeSpec {
                source: dir_vol,
                destination: "/d".into(),
                options: vec!["rbind".into()],
            },
        ];
        let cases: [(&str, &Path); 6] = [
            (".volumes/c1", &outside),
            (".volumes/c1/0", &canary.path),
            (".volumes/c1/0", &outside),
            (".volumes/c1/1", &outside),
            (".volumes/c1/1", &canary.path),
            ("c1", &outside),
        ];
        for (rel, target) in cases {
            let (share, bundle) = fixture(tmp.path());
            let before = mounts_outside(tmp.path(), share.served().parent().unwrap());
            plant(&share, rel, target);
            let served = share.served();
            let result = ContainerRootfs::setup(&[], &bundle, &served.join("c1"), false).and_then(
                |mut r| {
                    let v = r.share_volumes(&volumes, &served, ".volumes/c1");
                    r.teardown()?;
                    v
                },
            );
            let err = result.expect_err("a planted symlink is refused");
            assert!(format!("{err}").contains("symlinks"), "{rel}: {err}");
            canary.assert_intact(rel);
            assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "{rel}");
            assert_eq!(
                mounts_outside(tmp.path(), share.served().parent().unwrap()),
                before,
                "{rel}"
            );
            assert_eq!(std::fs::read_to_string(&file_vol).unwrap(), "volume\n");
            let link = served.with_file_name(share::SHARE_ROOT).join(rel);
            std::fs::remove_file(link).unwrap();
            let _ =
                std::fs::remove_dir(served.with_file_name(share::SHARE_ROOT).join(".volumes/c1"));
            assert_pod_gone(tmp.path(), share);
            std::fs::remove_dir_all(&bundle).unwrap();
        }
    }

    #[test]
    fn a_racing_swap_of_directory_and_symlink_never_escapes() {
        require_root();
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let canary = Canary::new(outside.join("canary"));
        let file_vol = tmp.path().join("vol-file");
        std::fs::write(&file_vol, "volume\n").unwrap();
        let volumes = [VolumeSpec {
            source: file_vol.clone(),
            destination: "/f".into(),
            options: vec!["bind".into()],
        }];
        let (share, bundle) = fixture(tmp.path());
        let served = share.served();
        let pod_dir = served.parent().unwrap().to_path_buf();
        let before = mounts_outside(tmp.path(), &pod_dir);
        let mut rootfs = ContainerRootfs::setup(&[], &bundle, &served.join("c1"), false).unwrap();
        // The swapper flips `.volumes/c2` (and `c2/0`) between a directory and
        // a symlink out of the pod as fast as it can.
        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let root = served.with_file_name(share::SHARE_ROOT);
        let swapper = {
            let (stop, swaps, root, outside, canary) = (
                stop.clone(),
                swaps.clone(),
                root.clone(),
                outside.clone(),
                canary.path.clone(),
            );
            std::thread::spawn(move || {
                let dir = root.join(".volumes/c2");
                let (tmp_dir, tmp_link) = (root.join(".volumes/d"), root.join(".volumes/l"));
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::fs::create_dir(&tmp_dir);
                    let _ = symlink(&canary, tmp_dir.join("0"));
                    let _ = symlink(&outside, &tmp_link);
                    let _ = std::fs::rename(&tmp_dir, &dir);
                    let _ = std::fs::rename(&tmp_link, &dir);
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        // 300 attempts at least, and on a loaded machine (the swapper starved of CPU) more,
        // until the race has happened or a minute has passed.
        let (mut ok, mut refused, mut attempts) = (0, 0, 0);
        let started = Instant::now();
        while attempts < 300
            || ((swaps.load(Ordering::Relaxed) <= 100 || refused == 0)
                && started.elapsed() < Duration::from_secs(60))
        {
            attempts += 1;
            match rootfs.share_volumes(&volumes, &served, ".volumes/c2") {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert!(matches!(e, RootfsError::Share(_)), "{e}");
                    refused += 1;
                }
            }
            let _ = rootfs.teardown();
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        let swaps = swaps.load(Ordering::Relaxed);
        println!("race: {ok} volume binds made, {refused} refused, {swaps} swaps");
        assert!(swaps > 100 && refused > 0, "the race happened");
        canary.assert_intact("the race");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
        assert_eq!(
            mounts_outside(tmp.path(), &pod_dir),
            before,
            "nothing mounted outside"
        );
        assert_eq!(std::fs::read_to_string(&file_vol).unwrap(), "volume\n");
        rootfs.teardown().unwrap();
        drop(rootfs);
        let _ = std::fs::remove_dir_all(root.join(".volumes"));
        std::fs::create_dir(root.join(".volumes")).unwrap();
        assert_pod_gone(tmp.path(), share);
    }
}
