//! Address buses: map a port or MMIO address to the device that owns it.

use std::sync::{Arc, Mutex};

/// A device reachable through port I/O or MMIO. Offsets are relative to the device's base.
pub trait BusDevice: Send {
    /// Handles a guest read; `data` holds zeros on entry.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest write.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors while building a bus.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two devices claim the same addresses.
    #[error("device range {0:#x}+{1:#x} overlaps another device")]
    Overlap(u64, u64),
    /// Zero-length or wrapping range.
    #[error("invalid device range {0:#x}+{1:#x}")]
    Range(u64, u64),
}

struct Entry {
    base: u64,
    len: u64,
    dev: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping device ranges.
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Bus::default()
    }

    /// Adds `dev` at `base..base+len`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        dev: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), Error> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(Error::Range(base, len))?;
        if self
            .entries
            .iter()
            .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(Error::Overlap(base, len));
        }
        self.entries.push(Entry { base, len, dev });
        self.entries.sort_by_key(|e| e.base);
        Ok(())
    }

    fn find(&self, addr: u64, len: usize) -> Option<(&Entry, u64)> {
        let idx = self
            .entries
            .partition_point(|e| e.base <= addr)
            .checked_sub(1)?;
        let e = &self.entries[idx];
        let offset = addr - e.base;
        (offset.checked_add(len as u64)? <= e.len).then_some((e, offset))
    }

    /// Routes a read; returns false (and leaves `data` zeroed) when no device owns the range.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0);
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                e.dev
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Routes a write; returns false when no device owns the range.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((e, offset)) => {
                e.dev
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Scratch(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Scratch {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_rejects_overlaps() {
        let dev = Arc::new(Mutex::new(Scratch::default()));
        let mut bus = Bus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        bus.insert(0x60, 5, Arc::new(Mutex::new(Scratch::default())))
            .unwrap();
        assert!(bus.insert(0x3fc, 8, dev.clone()).is_err());
        assert!(bus.insert(0x0, 0, dev.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, dev.clone()).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b[0], 3);
        assert!(!bus.read(0x400, &mut b));
        assert_eq!(b[0], 0);
        // An access straddling the end of a device goes nowhere.
        assert!(!bus.write(0x3ff, &[1, 2]));
        assert!(bus.write(0x3ff, &[7]));
        assert_eq!(dev.lock().unwrap().0, vec![(7, vec![7])]);
        assert!(!bus.read(0x10, &mut b));
    }
}
