//! The container's writable layer in the guest: an overlay whose lower layer is the read-only
//! image in the share and whose upper layer is a tmpfs of its own, so the container's file
//! writes and metadata changes never cross virtio-fs. The tmpfs is bounded by the container's
//! memory limit (its pages are charged to the container's cgroup as it writes them), else by
//! half the guest's RAM; it is gone with the container.

use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where each container's layer lives: `<LAYERS_DIR>/<container-id>`.
pub const LAYERS_DIR: &str = "/run/hull/layers";

/// Errors of making a writable layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}")]
    Mount {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// A mounted writable layer; [`WritableLayer::remove`] (or drop) unmounts and deletes it.
#[derive(Debug)]
pub struct WritableLayer {
    dir: PathBuf,
    /// The merged root the container sees: the image with the tmpfs over it.
    pub root: PathBuf,
    mounted: Vec<PathBuf>,
}

impl WritableLayer {
    /// Mounts `<base>/<id>` (a tmpfs of `size` bytes) holding `upper`, `work` and `root`,
    /// the overlay of `image` (read-only) under `upper`. `id` is a checked container id.
    pub fn create(base: &Path, id: &str, image: &Path, size: u64) -> Result<Self, LayerError> {
        let dir = base.join(id);
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| LayerError::Io { what, path, source }
        };
        let mount_err = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| LayerError::Mount { what, path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let mut layer = WritableLayer {
            root: dir.join("root"),
            dir,
            mounted: Vec::new(),
        };
        let data = format!("size={size},mode=0700");
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        mount(
            Some("tmpfs"),
            &layer.dir,
            Some("tmpfs"),
            flags,
            Some(data.as_str()),
        )
        .map_err(mount_err("mount the layer's tmpfs on", &layer.dir))?;
        layer.mounted.push(layer.dir.clone());
        let (upper, work) = (layer.dir.join("upper"), layer.dir.join("work"));
        for d in [&upper, &work, &layer.root] {
            std::fs::create_dir(d).map_err(io("create", d))?;
        }
        // The image's root in the share is a virtio-fs submount (virtiofsd announces the
        // shim's bind mount), an automount point that overlayfs refuses as a layer: name
        // the directory inside it, which mounts the submount and resolves to its root.
        let image = image.join(".");
        // The merged root takes its owner and mode from the upper directory: the image's.
        let top = std::fs::metadata(&image).map_err(io("stat the image root", &image))?;
        chown(&upper, Some(top.uid()), Some(top.gid())).map_err(io("chown", &upper))?;
        let mode = std::fs::Permissions::from_mode(top.mode() & 0o7777);
        std::fs::set_permissions(&upper, mode).map_err(io("chmod", &upper))?;
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            image.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            &layer.root,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(mount_err("mount the image overlay on", &layer.root))?;
        layer.mounted.push(layer.root.clone());
        Ok(layer)
    }

    /// Unmounts the overlay and the tmpfs (lazily: the container's mount namespace may
    /// still hold them until its last process is reaped) and removes the directory.
    pub fn remove(&mut self) {
        while let Some(path) = self.mounted.pop() {
            if let Err(e) = umount2(&path, MntFlags::MNT_DETACH) {
                tracing::warn!(path = %path.display(), error = %e, "unmount the writable layer");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "remove the writable layer");
            }
        }
    }
}

impl Drop for WritableLayer {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The layer's size: the container's memory limit when it has one, else half the guest's RAM
/// (tmpfs's own default), never under 16 MiB.
pub fn size_for(memory_limit: Option<i64>) -> u64 {
    const FLOOR: u64 = 16 << 20;
    let limit = memory_limit.filter(|l| *l > 0).map(|l| l as u64);
    limit
        .unwrap_or_else(|| guest_ram().unwrap_or(512 << 20) / 2)
        .max(FLOOR)
}

/// The guest's RAM in bytes, from /proc/meminfo.
fn guest_ram() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kib| kib << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_follows_the_memory_limit_with_a_floor() {
        assert_eq!(size_for(Some(256 << 20)), 256 << 20);
        assert_eq!(size_for(Some(1 << 20)), 16 << 20);
        let default = size_for(None);
        assert_eq!(size_for(Some(-1)), default, "-1 means no limit");
        assert_eq!(size_for(Some(0)), default);
        assert!(default >= 16 << 20);
    }

    #[test]
    fn writes_land_in_the_layer_and_the_image_stays_untouched() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "host tier: mounting tmpfs and overlay needs root"
        );
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("image");
        std::fs::create_dir(&image).unwrap();
        std::fs::write(image.join("f"), "image").unwrap();
        std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o751)).unwrap();
        let base = tmp.path().join("layers");
        let mut layer = WritableLayer::create(&base, "c1", &image, 1 << 20).unwrap();
        assert_eq!(
            std::fs::read_to_string(layer.root.join("f")).unwrap(),
            "image"
        );
        std::fs::write(layer.root.join("f"), "changed").unwrap();
        std::fs::write(layer.root.join("new"), "new").unwrap();
        assert_eq!(std::fs::read_to_string(image.join("f")).unwrap(), "image");
        assert!(!image.join("new").exists());
        let mode = std::fs::metadata(&layer.root).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o751, "the merged root keeps the image root's mode");
        // The tmpfs bounds the layer.
        let big = vec![0u8; 2 << 20];
        let err = std::fs::write(layer.root.join("big"), big).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        layer.remove();
        assert!(!base.join("c1").exists());
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(!mounts.contains(base.to_str().unwrap()), "{mounts}");
        assert_eq!(std::fs::read_to_string(image.join("f")).unwrap(), "image");
    }
}
