//! Shared setup: guest memory filled from the fuzz input, and queues whose rings live in it.
//! Also compiled into hull-vmm's vsock unit tests (`#[path]`), which run the same setup on
//! seeded random memory where cargo-fuzz is not installed: so it names no hull-vmm item. Each
//! target uses part of it.
#![allow(dead_code)]

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Size of the fuzzed guest memory.
pub const MEM_SIZE: usize = 1 << 20;

/// Guest memory whose first bytes are the fuzz input (descriptor tables, rings, buffers).
pub fn memory(data: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let n = data.len().min(MEM_SIZE);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    mem
}

/// A ready queue of 16 entries with its rings at `base` (descriptor table), `base + 0x100`
/// (available ring) and `base + 0x200` (used ring).
pub fn queue(base: u64) -> Queue {
    let mut q = Queue::new(16).unwrap();
    q.set_size(16);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + 0x100) as u32), Some(0));
    q.set_used_ring_address(Some((base + 0x200) as u32), Some(0));
    q.set_ready(true);
    q
}
