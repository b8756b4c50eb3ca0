//! Fuzzes virtio-blk request handling with arbitrary guest memory contents.
#![no_main]

mod common;

use std::sync::Arc;

use hull_vmm::devices::virtio::block::device::Block;
use hull_vmm::devices::virtio::{Interrupt, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("hull-fuzz-blk-{}", std::process::id()));
    if !path.exists() {
        std::fs::write(&path, vec![0u8; 64 * 1024]).unwrap();
    }
    let mut dev = Block::new(&path, false, "hull-blk").unwrap();
    let offered = dev.common().offered();
    dev.common_mut().ack_features(offered).unwrap();
    let mem = common::memory(data);
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    if dev.activate(mem, vec![common::queue(0x1000)], irq).is_ok() {
        dev.process_queue(0);
    }
});
