//! Fuzzes the vsock device's TX and RX queue handling with arbitrary guest memory contents.
#![no_main]

mod common;

use std::sync::Arc;

use hull_vmm::devices::virtio::vsock::device::Vsock;
use hull_vmm::devices::virtio::{Interrupt, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fuzz_target!(|data: &[u8]| {
    let uds = std::env::temp_dir().join(format!("hull-fuzz-vsock-{}", std::process::id()));
    let _ = std::fs::remove_file(&uds);
    let mut dev = Vsock::new(3, &uds).unwrap();
    let mem = common::memory(data);
    let queues = vec![
        common::queue(0x1000),
        common::queue(0x2000),
        common::queue(0x3000),
    ];
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    if dev.activate(mem, queues, irq).is_ok() {
        dev.process_queue(1);
        dev.process_queue(0);
    }
    drop(dev);
});
