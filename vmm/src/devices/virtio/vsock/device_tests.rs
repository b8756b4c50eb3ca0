//! Unit tests of the vsock device with real descriptor chains in guest memory.

use super::*;
use crate::devices::virtio::test_utils::TestQueue;
use crate::devices::virtio::vsock::packet::*;
use crate::devices::virtio::Interrupt;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const CID: u64 = 3;
const BUF: u64 = 0x40_0000;

struct Rig {
    dev: Vsock,
    rx: TestQueue,
    tx: TestQueue,
    irq: EventFd,
    uds: std::path::PathBuf,
}

fn rig(name: &str) -> Rig {
    rig_sized(name, 16)
}

fn rig_sized(name: &str, size: u16) -> Rig {
    let mem = crate::memory::create(16).unwrap().mem;
    let uds = std::env::temp_dir().join(format!("hull-vsockdev-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&uds);
    let mut dev = Vsock::new(CID, &uds).unwrap();
    let rx = TestQueue::new(&mem, 0x10_0000, size);
    let tx = TestQueue::new(&mem, 0x20_0000, size);
    let ev = TestQueue::new(&mem, 0x30_0000, 16);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
    dev.activate(mem, vec![rx.queue(), tx.queue(), ev.queue()], interrupt)
        .unwrap();
    Rig {
        dev,
        rx,
        tx,
        irq,
        uds,
    }
}

fn hdr(op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 65536,
        ..Default::default()
    }
}

#[test]
fn config_space_holds_the_cid() {
    let r = rig("cfg");
    let mut b = [0u8; 8];
    r.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), CID);
    assert_eq!(r.dev.common().device_type(), DeviceType::Vsock);
}

#[test]
fn host_handshake_through_the_queues() {
    let mut r = rig("hs");
    let mem = r.rx.mem.clone();
    let mut host = UnixStream::connect(&r.uds).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    // Guest posts an RX buffer split in two descriptors (header, data).
    r.rx.add_chain(&[(BUF, HDR_LEN as u32, true), (BUF + 0x1000, 4096, true)]);
    r.dev.process_queue(RX);
    for _ in 0..50 {
        r.dev.process_backend(r.dev.muxer().poll_fd());
        if r.rx.used_idx() == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(r.rx.used_idx(), 1);
    assert_eq!(r.rx.used_elem(0).1, HDR_LEN as u32);
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, GuestAddress(BUF)).unwrap();
    let req = Header::parse(&raw);
    assert_eq!((req.op, req.dst_port, req.dst_cid), (OP_REQUEST, 1024, CID));
    assert!(r.irq.read().unwrap() >= 1);

    // Guest answers RESPONSE, then sends data split across descriptors.
    let resp = hdr(OP_RESPONSE, 1024, req.src_port, 0);
    mem.write_slice(&resp.bytes(), GuestAddress(BUF + 0x2000))
        .unwrap();
    r.tx.add_chain(&[(BUF + 0x2000, HDR_LEN as u32, false)]);
    let rw = hdr(OP_RW, 1024, req.src_port, 5);
    mem.write_slice(&rw.bytes(), GuestAddress(BUF + 0x3000))
        .unwrap();
    mem.write_slice(b"hello", GuestAddress(BUF + 0x3000 + HDR_LEN as u64))
        .unwrap();
    r.tx.add_chain(&[
        (BUF + 0x3000, HDR_LEN as u32 + 2, false),
        (BUF + 0x3000 + HDR_LEN as u64 + 2, 3, false),
    ]);
    r.dev.process_queue(TX);
    assert_eq!(r.tx.used_idx(), 2);
    host.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut got = vec![0u8; 14 + 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got[..14], format!("OK {}\n", req.src_port).as_bytes());
    assert_eq!(&got[14..], b"hello");

    // The host answers; the counters saw the guest's payload, then the host's.
    host.write_all(b"abc").unwrap();
    r.rx.add_chain(&[(BUF + 0x4000, HDR_LEN as u32 + 64, true)]);
    for _ in 0..50 {
        r.dev.process_backend(r.dev.muxer().poll_fd());
        if r.rx.used_idx() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let s = r.dev.common().counters().snapshot(0);
    assert_eq!(
        s.bytes,
        Some(hull_protocol::control::DeviceBytes { rx: 3, tx: 5 })
    );
    assert!(s.interrupts >= 3, "{s:?}");
    assert_eq!(s.queue_notifications, [0, 0, 0], "process_queue is no kick");
}

#[test]
fn malformed_chains_are_returned_unused() {
    let mut r = rig("bad");
    let mem = r.tx.mem.clone();
    // Header outside guest memory.
    r.tx.add_chain(&[(0xffff_0000, HDR_LEN as u32, false)]);
    // Header shorter than 44 bytes.
    r.tx.add_chain(&[(BUF, 10, false)]);
    // Header claims more payload than the chain holds.
    let h = hdr(OP_RW, 1, 2, 1000);
    mem.write_slice(&h.bytes(), GuestAddress(BUF + 0x100))
        .unwrap();
    r.tx.add_chain(&[(BUF + 0x100, HDR_LEN as u32 + 10, false)]);
    // A descriptor loop: next points back at itself.
    let me = r.tx.next_desc();
    r.tx.add_raw(&[(BUF + 0x200, 8, 1, me)]);
    // Length that wraps the address space.
    r.tx.add_chain(&[(u64::MAX - 4, 64, false)]);
    r.dev.process_queue(TX);
    assert_eq!(r.tx.used_idx(), 5);
    for i in 0..5 {
        assert_eq!(r.tx.used_elem(i).1, 0);
    }
    // None of these reached the muxer: nothing to send back.
    assert!(!r.dev.muxer().has_rx());

    // An RX buffer too small for a header is returned empty and the device keeps going.
    let h = hdr(OP_RW, 1, 2, 0);
    mem.write_slice(&h.bytes(), GuestAddress(BUF + 0x300))
        .unwrap();
    r.tx.add_chain(&[(BUF + 0x300, HDR_LEN as u32, false)]);
    r.rx.add_chain(&[(BUF + 0x400, 8, true)]);
    r.rx.add_chain(&[(BUF + 0x500, 0x100, false)]);
    r.rx.add_chain(&[(BUF + 0x600, 0x100, true)]);
    r.dev.process_queue(TX);
    assert_eq!(r.rx.used_idx(), 3);
    assert_eq!(r.rx.used_elem(0).1, 0);
    assert_eq!(r.rx.used_elem(1).1, 0);
    assert_eq!(r.rx.used_elem(2).1, HDR_LEN as u32);
    let mut raw = [0u8; HDR_LEN];
    mem.read_slice(&mut raw, GuestAddress(BUF + 0x600)).unwrap();
    assert_eq!(Header::parse(&raw).op, OP_RST);
}

#[test]
fn reset_drops_connections() {
    let mut r = rig("reset");
    assert!(r.dev.reset());
    assert_eq!(r.dev.muxer().connection_count(), 0);
    // Not active anymore: queue notifications do nothing.
    r.dev.process_queue(TX);
}

#[test]
fn one_event_moves_a_bounded_batch_and_re_arms() {
    let mut r = rig_sized("budget", 256);
    let mem = r.tx.mem.clone();
    // 200 packets that need no answer (RST for nothing).
    let h = hdr(OP_RST, 1, 2, 0);
    mem.write_slice(&h.bytes(), GuestAddress(BUF)).unwrap();
    for _ in 0..200 {
        r.tx.add_chain(&[(BUF, HDR_LEN as u32, false)]);
    }
    r.dev.process_queue(TX);
    assert_eq!(usize::from(r.tx.used_idx()), EVENT_BUDGET);
    let mut events = 1;
    while r.dev.common().queue_events()[TX].read().is_ok() {
        r.dev.process_queue(TX);
        events += 1;
        assert!(events < 10, "the re-arming never stops");
    }
    assert_eq!(r.tx.used_idx(), 200);
    assert_eq!(events, 200usize.div_ceil(EVENT_BUDGET));
}

#[test]
fn a_guest_dialing_cid_1_or_itself_is_reset_through_the_queue() {
    let mut r = rig("cid1");
    let mem = r.tx.mem.clone();
    for (i, dst) in [1u64, CID].into_iter().enumerate() {
        let mut h = hdr(OP_REQUEST, 4000 + i as u32, 1024, 0);
        h.dst_cid = dst;
        let at = BUF + 0x100 * i as u64;
        mem.write_slice(&h.bytes(), GuestAddress(at)).unwrap();
        r.tx.add_chain(&[(at, HDR_LEN as u32, false)]);
        r.rx.add_chain(&[(BUF + 0x1000 + 0x100 * i as u64, 0x100, true)]);
    }
    r.dev.process_queue(TX);
    assert_eq!(r.rx.used_idx(), 2);
    for (i, dst) in [1u64, CID].into_iter().enumerate() {
        let mut raw = [0u8; HDR_LEN];
        mem.read_slice(&mut raw, GuestAddress(BUF + 0x1000 + 0x100 * i as u64))
            .unwrap();
        let h = Header::parse(&raw);
        assert_eq!(
            (h.op, h.src_cid, h.dst_cid, h.dst_port),
            (OP_RST, dst, CID, 4000 + i as u32)
        );
    }
}

/// Why packets are not parsed with the `virtio-vsock` crate: virtio 1.x (2.7.4, message framing)
/// lets a driver split a packet over descriptors as it likes, and Linux does (a MSG_ZEROCOPY
/// send puts each page of payload in a descriptor of its own). `VsockPacket::from_tx_virtq_chain`
/// takes only a header inside the head descriptor and the payload in one more descriptor; this
/// device takes any split. If a crate upgrade makes this test fail, the crate takes any layout:
/// switch to it.
#[test]
fn any_descriptor_layout_is_parsed_where_the_virtio_vsock_crate_refuses_it() {
    use virtio_vsock::packet::VsockPacket;

    let mut r = rig("layout");
    let mem = r.tx.mem.clone();
    let at = |i: u64| BUF + 0x1000 * i;
    // A REQUEST whose header spans two descriptors, and 5 bytes of data in two descriptors
    // after a whole header. Neither connection exists: each, once parsed, is answered by RST.
    mem.write_slice(&hdr(OP_REQUEST, 4321, 77, 0).bytes(), GuestAddress(at(0)))
        .unwrap();
    mem.write_slice(&hdr(OP_RW, 4322, 78, 5).bytes(), GuestAddress(at(2)))
        .unwrap();
    let layouts: [&[(u64, u32, bool)]; 2] = [
        &[(at(0), 20, false), (at(0) + 20, 24, false)],
        &[
            (at(2), HDR_LEN as u32, false),
            (at(3), 2, false),
            (at(4), 3, false),
        ],
    ];
    for (i, layout) in (8..).zip(layouts) {
        let mut probe = TestQueue::new(&mem, 0x50_0000, 16);
        probe.add_chain(layout);
        let mut q = probe.queue();
        let mut chain = q.pop_descriptor_chain(&mem).unwrap();
        let parsed = VsockPacket::from_tx_virtq_chain(&mem, &mut chain, muxer::TX_BUF_SIZE);
        assert!(parsed.is_err(), "the crate now takes {layout:?}");
        r.tx.add_chain(layout);
        r.rx.add_chain(&[(at(i), 0x100, true)]);
    }
    r.dev.process_queue(TX);
    assert_eq!(r.rx.used_idx(), 2);
    for (i, port) in [(8, 4321), (9, 4322)] {
        let mut raw = [0u8; HDR_LEN];
        mem.read_slice(&mut raw, GuestAddress(at(i))).unwrap();
        let h = Header::parse(&raw);
        assert_eq!((h.op, h.dst_port), (OP_RST, port));
    }
}

/// The fuzz target's setup (`vmm/fuzz/fuzz_targets/vsock_queue.rs`), shared through its
/// `common.rs`.
#[path = "../../../../fuzz/fuzz_targets/common.rs"]
mod fuzz_common;

/// The fuzz target's run with seeded random guest memory, so its ground is covered where
/// cargo-fuzz is not installed.
#[test]
fn random_rings_and_buffers_never_panic() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let uds = std::env::temp_dir().join(format!("hull-vsockdev-rand-{}", std::process::id()));
    for _ in 0..300 {
        let mut bytes = vec![0u8; 0x10000];
        for chunk in bytes.chunks_mut(8) {
            let v = next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        let mem = fuzz_common::memory(&bytes);
        // Mostly in-memory descriptors, small available indexes, and some packets that get
        // past the CID check, so the muxer's paths run too.
        for base in [0x1000u64, 0x2000, 0x3000] {
            for i in 0..16 {
                let d = base + 16 * i;
                mem.write_obj(0x4000 + next() % 0xb000, GuestAddress(d))
                    .unwrap();
                mem.write_obj((next() % 0x300) as u32, GuestAddress(d + 8))
                    .unwrap();
                mem.write_obj((next() % 4) as u16, GuestAddress(d + 12))
                    .unwrap();
                mem.write_obj((next() % 18) as u16, GuestAddress(d + 14))
                    .unwrap();
            }
            mem.write_obj((next() % 20) as u16, GuestAddress(base + 0x102))
                .unwrap();
            mem.write_obj(0u16, GuestAddress(base + 0x202)).unwrap();
        }
        for _ in 0..8 {
            let at = 0x4000 + next() % 0xb000;
            let mut h = hdr((next() % 9) as u16, (next() % 4) as u32, 1024, 0);
            h.len = (next() % 0x100) as u32;
            h.buf_alloc = (next() % 0x10000) as u32;
            let _ = mem.write_slice(&h.bytes(), GuestAddress(at));
        }
        let _ = std::fs::remove_file(&uds);
        let mut dev = Vsock::new(CID, &uds).unwrap();
        let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let queues = Vec::from([0x1000, 0x2000, 0x3000].map(fuzz_common::queue));
        if dev.activate(mem, queues, irq).is_ok() {
            dev.process_queue(TX);
            dev.process_queue(RX);
        }
    }
    let _ = std::fs::remove_file(&uds);
}
