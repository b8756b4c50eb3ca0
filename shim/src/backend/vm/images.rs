//! The pod VM's image slots: empty read-only virtio-blk disks it boots with, filled through
//! hull-vmm's control socket as containers come, one per image (see `task/image_disk.rs`).
//! A slot is filled once and never emptied or reused, so the guest never reads a cached
//! page of another image; containers of the same image share its slot, and images past
//! the last slot are read through the share.

use std::collections::HashMap;
use std::path::Path;

use hull_protocol::vm::DiskConfig;

use crate::backend::ImageDisk;
use crate::config::Config;

/// The slots' serials: `hull-image-<n>`, what the agent finds the disk by.
const SERIAL_PREFIX: &str = "hull-image-";

/// The empty slots a pod VM boots with under `config`: none unless its images go on disks.
pub fn slots(config: &Config) -> Vec<DiskConfig> {
    let count = if config.image_disks() {
        config.image_disk_slots
    } else {
        0
    };
    (0..count)
        .map(|i| DiskConfig::empty_slot(Some(format!("{SERIAL_PREFIX}{i}"))))
        .collect()
}

/// Which image fills which slot.
#[derive(Debug, Default)]
pub struct ImageSlots {
    /// The serials of the VM's slots, in disk order.
    serials: Vec<String>,
    /// The next slot never tried.
    next: usize,
    /// The slot of each image attached, by image key.
    filled: HashMap<String, usize>,
}

impl ImageSlots {
    /// The slots of a VM booted with `disks`.
    pub fn new(disks: &[DiskConfig]) -> Self {
        let serials = disks
            .iter()
            .filter(|d| d.path.is_none())
            .filter_map(|d| d.serial.clone())
            .filter(|s| s.starts_with(SERIAL_PREFIX))
            .collect();
        ImageSlots {
            serials,
            ..Default::default()
        }
    }

    /// The serial of the slot holding `image`, filling the next slot through `attach` (given the
    /// slot's index and the open image file) when the image has none yet; `None` when no slot
    /// is left or attaching failed (logged): the caller then reads the image through the share.
    pub fn serial_for(
        &mut self,
        image: &ImageDisk,
        container: &str,
        attach: impl FnOnce(usize, &std::fs::File) -> Result<(), String>,
    ) -> Option<String> {
        if let Some(&i) = self.filled.get(&image.key) {
            return Some(self.serials[i].clone());
        }
        let Some(serial) = self.serials.get(self.next).cloned() else {
            tracing::info!(
                container,
                slots = self.serials.len(),
                "every image slot is taken; the image is read through the share"
            );
            return None;
        };
        let index = self.next;
        // A failed attach may have left the slot in any state: never try it again.
        self.next += 1;
        let attached = open(&image.path).and_then(|file| attach(index, &file));
        match attached {
            Ok(()) => {
                self.filled.insert(image.key.clone(), index);
                Some(serial)
            }
            Err(error) => {
                tracing::warn!(container, slot = index, %error,
                    "image disk not attached; the image is read through the share");
                None
            }
        }
    }
}

fn open(path: &Path) -> Result<std::fs::File, String> {
    std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ImageLayers, WritableLayer};

    fn image(dir: &Path, key: &str) -> ImageDisk {
        let path = dir.join(format!("{key}.ext4"));
        std::fs::write(&path, [0u8; 512]).unwrap();
        ImageDisk {
            key: key.into(),
            path,
        }
    }

    #[test]
    fn slots_follow_the_config() {
        let mut config = Config::default();
        let disks = slots(&config);
        assert_eq!(disks.len(), 4, "the default: images on disks, 4 slots");
        assert!(disks.iter().all(|d| d.path.is_none() && d.read_only));
        assert_eq!(disks[3].serial.as_deref(), Some("hull-image-3"));
        config.image_layers = ImageLayers::Share;
        assert!(slots(&config).is_empty());
        config.image_layers = ImageLayers::Disk;
        config.writable_layer = WritableLayer::Host;
        assert!(
            slots(&config).is_empty(),
            "a writable root on the host has no image"
        );
    }

    #[test]
    fn each_image_fills_one_slot_once_until_none_is_left() {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config {
            image_disk_slots: 2,
            ..Config::default()
        };
        let mut s = ImageSlots::new(&slots(&config));
        let mut calls = Vec::new();
        let mut attach = |i: usize, _: &std::fs::File| {
            calls.push(i);
            Ok(())
        };
        let (a, b, c) = (
            image(tmp.path(), "a"),
            image(tmp.path(), "b"),
            image(tmp.path(), "c"),
        );
        assert_eq!(
            s.serial_for(&a, "c1", &mut attach).as_deref(),
            Some("hull-image-0")
        );
        assert_eq!(
            s.serial_for(&a, "c2", &mut attach).as_deref(),
            Some("hull-image-0")
        );
        assert_eq!(
            s.serial_for(&b, "c3", &mut attach).as_deref(),
            Some("hull-image-1")
        );
        assert_eq!(s.serial_for(&c, "c4", &mut attach), None, "no slot left");
        assert_eq!(calls, vec![0, 1], "one attach per image");
    }

    #[test]
    fn a_failed_attach_falls_back_and_spends_the_slot() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = ImageSlots::new(&slots(&Config::default()));
        let a = image(tmp.path(), "a");
        assert_eq!(s.serial_for(&a, "c1", |_, _| Err("refused".into())), None);
        assert_eq!(
            s.serial_for(&a, "c2", |_, _| Ok(())).as_deref(),
            Some("hull-image-1"),
            "the next slot, not the failed one"
        );
        let gone = ImageDisk {
            key: "gone".into(),
            path: tmp.path().join("missing.ext4"),
        };
        assert_eq!(s.serial_for(&gone, "c3", |_, _| Ok(())), None);
    }
}
