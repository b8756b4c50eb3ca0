//! Fuzzes virtio-net's TX and RX queue handling with arbitrary guest memory contents and
//! host frames, a datagram socket standing in for the tap. Byte 0 picks the driver's features
//! (bit 0: mergeable RX buffers, bit 1: checksum and TSO) and how many host frames wait
//! (bits 2-3); bytes 1-2 size them.
#![no_main]

mod common;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use hull_vmm::devices::virtio::net::device::{
    Net, F_CSUM, F_HOST_TSO4, F_HOST_TSO6, F_MAC, F_MRG_RXBUF,
};
use hull_vmm::devices::virtio::net::tap::Tap;
use hull_vmm::devices::virtio::{Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fuzz_target!(|data: &[u8]| {
    let sel = data.first().copied().unwrap_or(0);
    let (a, peer) = UnixDatagram::pair().unwrap();
    peer.set_nonblocking(true).unwrap();
    let tap = Tap::from_socket(OwnedFd::from(a), "fuzz0").unwrap();
    let mut dev = Net::with_tap(tap, [2, 0, 0, 0, 0, 1], 1500).unwrap();
    let mut features = VIRTIO_F_VERSION_1 | F_MAC;
    if sel & 1 != 0 {
        features |= F_MRG_RXBUF;
    }
    if sel & 2 != 0 {
        features |= F_CSUM | F_HOST_TSO4 | F_HOST_TSO6;
    }
    dev.common_mut().ack_features(features).unwrap();
    let len = data
        .get(1..3)
        .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
        .unwrap_or(0);
    let frame = vec![0x5au8; len.max(1)];
    for _ in 0..(sel >> 2) & 3 {
        let _ = peer.send(&frame);
    }
    let mem = common::memory(data);
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let queues = vec![common::queue(0x1000), common::queue(0x2000)];
    if dev.activate(mem, queues, irq).is_ok() {
        dev.process_queue(1);
        dev.process_backend(0);
        dev.process_queue(0);
    }
});
