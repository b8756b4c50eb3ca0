//! Test helper: a split virtqueue laid out by hand in guest memory, as a driver would.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMem;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// A driver-side view of one queue.
pub struct TestQueue {
    /// Guest memory.
    pub mem: GuestMem,
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl TestQueue {
    /// A queue of `size` entries with its rings at `base`.
    pub fn new(mem: &GuestMem, base: u64, size: u16) -> Self {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        TestQueue {
            mem: mem.clone(),
            desc,
            avail,
            used,
            size,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    /// The device-side queue, configured and ready.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Index of the next descriptor `add_raw` or `add_chain` will use.
    pub fn next_desc(&self) -> u16 {
        self.next_desc
    }

    /// Adds raw descriptors `(addr, len, flags, next)` and makes the first one available.
    pub fn add_raw(&mut self, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let at = self.desc + 16 * u64::from((head + i as u16) % self.size);
            self.mem.write_obj(addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        self.next_desc = (self.next_desc + descs.len() as u16) % self.size;
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// Adds a well-formed chain of `(addr, len, device_writable)` buffers.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        let descs: Vec<_> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let last = i + 1 == bufs.len();
                let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
                (addr, len, flags, (head + i as u16 + 1) % self.size)
            })
            .collect();
        self.add_raw(&descs)
    }

    /// The available ring's index (requests made so far).
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used element `i`: (descriptor head, bytes written).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }
}
