//! Fuzzes sequences of virtio-mmio register accesses (feature negotiation, queue setup, status
//! changes with resets anywhere, activation included, notifications, configuration space) on a
//! real virtio-blk or vsock device, processing its queues between accesses. Guest memory holds
//! the input too (accesses come from its first 4 KiB), so the rings the driver points at are
//! fuzzed as well.
#![no_main]

mod common;

use std::sync::{Arc, Mutex};

use hull_vmm::devices::bus::BusDevice;
use hull_vmm::devices::virtio::block::device::Block;
use hull_vmm::devices::virtio::mmio::MmioTransport;
use hull_vmm::devices::virtio::vsock::device::Vsock;
use hull_vmm::devices::virtio::{Interrupt, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// One access: `[kind, register / 4, value (4 bytes little-endian)]`.
const OP_LEN: usize = 6;
/// Accesses come from the input's first bytes only, so the rest is plain guest memory.
const OPS_END: usize = 0x1000;

fuzz_target!(|data: &[u8]| {
    let Some((&which, ops)) = data.split_first() else {
        return;
    };
    let pid = std::process::id();
    let dev: Arc<Mutex<dyn VirtioDevice>> = if which & 1 == 0 {
        let path = std::env::temp_dir().join(format!("hull-fuzz-mmio-blk-{pid}"));
        if !path.exists() {
            std::fs::write(&path, vec![0u8; 64 * 1024]).unwrap();
        }
        Arc::new(Mutex::new(Block::new(&path, which & 2 != 0, "hull-blk").unwrap()))
    } else {
        let uds = std::env::temp_dir().join(format!("hull-fuzz-mmio-vsock-{pid}"));
        let _ = std::fs::remove_file(&uds);
        Arc::new(Mutex::new(Vsock::new(3, &uds).unwrap()))
    };
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let mut t = MmioTransport::new(dev.clone(), common::memory(data), irq);
    for op in ops[..ops.len().min(OPS_END - 1)].chunks_exact(OP_LEN) {
        let offset = u64::from(op[1]) * 4;
        let value = [op[2], op[3], op[4], op[5]];
        match op[0] % 6 {
            0 => t.write(offset, &value),
            1 => t.read(offset, &mut [0u8; 4]),
            // Configuration space, any width and alignment.
            2 => t.write(0x100 + u64::from(op[1]), &value[..usize::from(op[2] % 5)]),
            3 => t.read(
                0x100 + u64::from(op[1]),
                &mut [0u8; 8][..usize::from(op[2] % 9)],
            ),
            // Misaligned or odd-sized register accesses.
            4 => t.write(
                offset + u64::from(op[2] % 4),
                &value[..usize::from(op[3] % 5)],
            ),
            _ => {
                let mut d = dev.lock().unwrap();
                d.process_queue(usize::from(op[2] % 3));
            }
        }
    }
});
