//! The container's image on a read-only ext4 disk that the shim put in one of the VM's empty
//! virtio-blk slots (see the shim's `task/image_disk.rs`): found by the slot's serial once the
//! guest sees its data, mounted once under [`IMAGES_DIR`] and shared by every container of
//! the pod that runs the same image, for as long as the VM lives (the slot is never reused,
//! so nothing the guest cached can go stale).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};

/// Where image disks are mounted: `<IMAGES_DIR>/<serial>`.
pub const IMAGES_DIR: &str = "/run/hull/images";
/// How long a slot may take to show its data after the shim filled it (the guest's driver
/// reads the new capacity on the configuration-change interrupt).
const APPEAR: Duration = Duration::from_secs(10);

/// Errors of finding or mounting an image disk.
#[derive(Debug, thiserror::Error)]
pub enum ImageDiskError {
    #[error("image disk")]
    BadSerial(#[from] hull_protocol::vm::VmConfigError),
    #[error("no disk with serial {0:?} and data appeared within {APPEAR:?}")]
    Missing(String),
    #[error("create {0}")]
    Dir(PathBuf, #[source] std::io::Error),
    #[error("mount the image disk {dev} on {target}")]
    Mount {
        dev: PathBuf,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// The serials mounted so far.
static MOUNTED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// The image on the disk with `serial`, mounted read-only (once per disk).
pub fn mount_image(serial: &str) -> Result<PathBuf, ImageDiskError> {
    hull_protocol::vm::check_disk_serial(serial)?;
    let target = Path::new(IMAGES_DIR).join(serial);
    let mut mounted = MOUNTED.lock().unwrap_or_else(|e| e.into_inner());
    if mounted.contains(serial) {
        return Ok(target);
    }
    let dev = wait_for(Path::new("/sys/block"), serial, APPEAR)
        .ok_or_else(|| ImageDiskError::Missing(serial.into()))?;
    std::fs::create_dir_all(&target).map_err(|e| ImageDiskError::Dir(target.clone(), e))?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    mount(Some(&dev), &target, Some("ext4"), flags, None::<&str>).map_err(|source| {
        ImageDiskError::Mount {
            dev: dev.clone(),
            target: target.clone(),
            source,
        }
    })?;
    tracing::info!(serial, dev = %dev.display(), "image disk mounted");
    mounted.insert(serial.into());
    Ok(target)
}

/// `/dev/<name>` of the virtio disk under `sys_block` whose serial is `serial` once its size
/// is not zero, polling until `within` has passed.
fn wait_for(sys_block: &Path, serial: &str, within: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(name) = find(sys_block, serial) {
            return Some(Path::new("/dev").join(name));
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn find(sys_block: &Path, serial: &str) -> Option<String> {
    std::fs::read_dir(sys_block).ok()?.flatten().find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        if !name.starts_with("vd") {
            return None;
        }
        let dir = e.path();
        let seen = std::fs::read_to_string(dir.join("serial")).ok()?;
        let size: u64 = std::fs::read_to_string(dir.join("size"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (seen.trim() == serial && size > 0).then_some(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(sys: &Path, name: &str, serial: &str, size: u64) {
        let dir = sys.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("serial"), format!("{serial}\n")).unwrap();
        std::fs::write(dir.join("size"), format!("{size}\n")).unwrap();
    }

    #[test]
    fn the_disk_is_found_by_serial_once_it_has_data() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path();
        disk(sys, "vda", "hull-image-0", 2048);
        disk(sys, "vdb", "hull-image-1", 0);
        disk(sys, "sda", "hull-image-2", 2048);
        let quick = Duration::from_millis(50);
        assert_eq!(
            wait_for(sys, "hull-image-0", quick),
            Some(PathBuf::from("/dev/vda"))
        );
        assert_eq!(wait_for(sys, "hull-image-1", quick), None, "still empty");
        assert_eq!(
            wait_for(sys, "hull-image-2", quick),
            None,
            "not a virtio disk"
        );
        assert_eq!(
            wait_for(sys, "hull-image", quick),
            None,
            "whole serials only"
        );
        disk(sys, "vdb", "hull-image-1", 4096);
        assert_eq!(
            wait_for(sys, "hull-image-1", quick),
            Some(PathBuf::from("/dev/vdb"))
        );
    }
}
