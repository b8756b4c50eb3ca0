//! Unit tests of virtio-net with real descriptor chains in guest memory and a datagram socket
//! standing in for the tap.

use super::*;
use crate::devices::virtio::test_utils::TestQueue;
use crate::devices::virtio::{Interrupt, VIRTIO_F_VERSION_1};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RXQ: u64 = 0x10_0000;
const TXQ: u64 = 0x20_0000;
const BUF: u64 = 0x40_0000;
const MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];

struct Rig {
    dev: Net,
    rx: TestQueue,
    tx: TestQueue,
    peer: UnixDatagram,
    mem: GuestMem,
}

fn rig(features: Option<u64>) -> Rig {
    let (a, peer) = UnixDatagram::pair().unwrap();
    peer.set_nonblocking(true).unwrap();
    let tap = Tap::from_socket(OwnedFd::from(a), "test0").unwrap();
    let mut dev = Net::with_tap(tap, MAC, 1400).unwrap();
    let mem = crate::memory::create(16).unwrap().mem;
    let rx = TestQueue::new(&mem, RXQ, QUEUE_SIZE);
    let tx = TestQueue::new(&mem, TXQ, QUEUE_SIZE);
    let offered = dev.common().offered();
    dev.common_mut()
        .ack_features(features.unwrap_or(offered))
        .unwrap();
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    dev.activate(mem.clone(), vec![rx.queue(), tx.queue()], irq)
        .unwrap();
    Rig {
        dev,
        rx,
        tx,
        peer,
        mem,
    }
}

/// A frame as the tap hands it over: a zeroed header, then `len` bytes of `fill`.
fn tap_frame(len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend(std::iter::repeat_n(fill, len));
    f
}

fn recv_all(peer: &UnixDatagram) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; BUF_LEN + 16];
    while let Ok(n) = peer.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

#[test]
fn features_and_config() {
    let r = rig(None);
    let offered = r.dev.common().offered();
    for f in [
        VIRTIO_F_VERSION_1,
        F_MAC,
        F_MTU,
        F_STATUS,
        F_MRG_RXBUF,
        F_CSUM,
        F_HOST_TSO4,
        F_HOST_TSO6,
    ] {
        assert_ne!(offered & f, 0, "{f:#x} offered");
    }
    assert_eq!(
        offered & (F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6),
        0,
        "a backend without offloads offers none to the guest"
    );
    let mut cfg = [0u8; 12];
    r.dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..6], &MAC);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), LINK_UP);
    assert_eq!(u16::from_le_bytes([cfg[8], cfg[9]]), 1);
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1400);
    assert!(r.dev.polls_tap(), "an activated device watches its tap");
    assert!(matches!(
        Net::new(1, "01:00:00:00:00:01", 1500),
        Err(Error::Mac(_))
    ));
}

#[test]
fn tx_frames_reach_the_tap_header_and_all() {
    let mut r = rig(None);
    let frame = tap_frame(100, 0xab);
    r.mem.write_slice(&frame, GuestAddress(BUF)).unwrap();
    // Header and payload split across two descriptors.
    r.tx.add_chain(&[(BUF, 12, false), (BUF + 12, 100, false)]);
    assert_eq!(r.dev.process_tx(), 1);
    assert_eq!(recv_all(&r.peer), vec![frame.clone()]);
    assert_eq!(r.tx.used_idx(), 1);
    assert_eq!(r.tx.used_elem(0).1, 0);
    assert_eq!(r.dev.stats().tx_frames, 1);
    let s = r.dev.common().counters().snapshot(0);
    assert_eq!(s.bytes.unwrap().tx as usize, frame.len() - VNET_HDR_LEN);
    assert_eq!(s.interrupts, 1);
}

#[test]
fn hostile_tx_chains_are_dropped_and_returned() {
    // The driver acks no checksum or TSO offload.
    let mut r = rig(Some(VIRTIO_F_VERSION_1 | F_MAC | F_MRG_RXBUF));
    let mut hdr = [0u8; 12];
    r.mem.write_slice(&hdr, GuestAddress(BUF)).unwrap();
    // Shorter than the header.
    r.tx.add_chain(&[(BUF, 11, false)]);
    // Larger than MAX_FRAME_LEN.
    r.tx.add_chain(&[(BUF, (BUF_LEN + 1) as u32, false)]);
    // Only device-writable buffers: nothing to send.
    r.tx.add_chain(&[(BUF, 64, true)]);
    // Outside guest memory.
    r.tx.add_chain(&[(0xffff_ffff_0000, 64, false)]);
    // A descriptor that chains to itself: the walk stops at the queue size (256 x 4 KiB,
    // beyond MAX_FRAME_LEN).
    let me = r.tx.next_desc();
    r.tx.add_raw(&[(BUF, 4096, 1, me)]);
    // Offloads the driver did not ack: TSO, then a partial checksum.
    hdr[1] = GSO_TCPV4;
    r.mem.write_slice(&hdr, GuestAddress(BUF + 0x1000)).unwrap();
    r.tx.add_chain(&[(BUF + 0x1000, 64, false)]);
    hdr[1] = 0;
    hdr[0] = HDR_F_NEEDS_CSUM;
    r.mem.write_slice(&hdr, GuestAddress(BUF + 0x2000)).unwrap();
    r.tx.add_chain(&[(BUF + 0x2000, 64, false)]);
    // An unknown GSO type.
    hdr[0] = 0;
    hdr[1] = 3;
    r.mem.write_slice(&hdr, GuestAddress(BUF + 0x3000)).unwrap();
    r.tx.add_chain(&[(BUF + 0x3000, 64, false)]);
    let posted = r.tx.avail_idx();
    r.dev.process_tx();
    let got = recv_all(&r.peer);
    assert!(
        got.is_empty(),
        "nothing reached the tap: {:?}",
        got.iter().map(|f| f.len()).collect::<Vec<_>>()
    );
    assert_eq!(r.tx.used_idx(), posted, "every chain went back");
    assert_eq!(r.dev.stats().tx_dropped, u64::from(posted));
    // A largest-allowed frame still goes through.
    r.mem.write_slice(&[0u8; 12], GuestAddress(BUF)).unwrap();
    r.tx.add_chain(&[(BUF, BUF_LEN as u32, false)]);
    r.dev.process_tx();
    assert_eq!(recv_all(&r.peer)[0].len(), BUF_LEN);
    let bytes = r.dev.common().counters().snapshot(0).bytes.unwrap();
    assert_eq!(
        bytes.tx, MAX_FRAME_LEN as u64,
        "dropped frames count no bytes"
    );
}

#[test]
fn acked_offloads_pass_through() {
    let mut r = rig(None);
    let mut hdr = [0u8; 12];
    hdr[0] = HDR_F_NEEDS_CSUM;
    hdr[1] = GSO_TCPV6 | GSO_ECN;
    r.mem.write_slice(&hdr, GuestAddress(BUF)).unwrap();
    r.tx.add_chain(&[(BUF, 200, false)]);
    r.dev.process_tx();
    assert_eq!(
        recv_all(&r.peer)[0][..2],
        [HDR_F_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN]
    );
}

#[test]
fn tx_flood_is_served_in_budgeted_rounds() {
    let mut r = rig(None);
    r.mem.write_slice(&[0u8; 12], GuestAddress(BUF)).unwrap();
    let frames = EVENT_BUDGET + 36;
    for _ in 0..frames {
        r.tx.add_chain(&[(BUF, 60, false)]);
    }
    assert_eq!(r.dev.process_tx(), EVENT_BUDGET);
    assert_eq!(
        r.dev.common().queue_events()[TX].read().unwrap(),
        1,
        "the device asks to come back"
    );
    assert_eq!(r.dev.process_tx(), 36);
    assert!(
        r.dev.common().queue_events()[TX].read().is_err(),
        "no re-arm once the queue is empty"
    );
    assert_eq!(recv_all(&r.peer).len(), frames);
}

#[test]
fn rx_frame_fills_one_chain() {
    let mut r = rig(None);
    r.rx.add_chain(&[(BUF, 2048, true)]);
    let frame = tap_frame(500, 0x5a);
    r.peer.send(&frame).unwrap();
    r.dev.process_backend(0);
    assert_eq!(r.rx.used_idx(), 1);
    assert_eq!(r.rx.used_elem(0).1 as usize, frame.len());
    let mut got = vec![0u8; frame.len()];
    r.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(got[12..], frame[12..]);
    assert_eq!(r.dev.stats().rx_frames, 1);
    let bytes = r.dev.common().counters().snapshot(0).bytes.unwrap();
    assert_eq!(
        (bytes.rx as usize, bytes.tx),
        (frame.len() - VNET_HDR_LEN, 0)
    );
}

#[test]
fn rx_frame_spans_mergeable_buffers() {
    let mut r = rig(None);
    for i in 0..3 {
        r.rx.add_chain(&[(BUF + i * 0x1000, 1500, true)]);
    }
    let frame = tap_frame(2500, 0x11);
    r.peer.send(&frame).unwrap();
    r.dev.process_rx();
    assert_eq!(r.rx.used_idx(), 2, "two buffers used, the third left");
    assert_eq!(r.rx.used_elem(0).1, 1500);
    assert_eq!(r.rx.used_elem(1).1 as usize, frame.len() - 1500);
    let n: u16 = r.mem.read_obj(GuestAddress(BUF + 10)).unwrap();
    assert_eq!(n, 2);
    let tail: u8 = r.mem.read_obj(GuestAddress(BUF + 0x1000)).unwrap();
    assert_eq!(tail, 0x11);
}

#[test]
fn without_mergeable_buffers_a_frame_too_big_for_one_chain_is_dropped() {
    let mut r = rig(Some(VIRTIO_F_VERSION_1 | F_MAC));
    r.rx.add_chain(&[(BUF, 100, true)]);
    r.peer.send(&tap_frame(500, 1)).unwrap();
    r.peer.send(&tap_frame(50, 2)).unwrap();
    r.dev.process_rx();
    assert_eq!(r.dev.stats().rx_dropped, 1);
    assert_eq!(r.rx.used_idx(), 1, "the chain stayed for the next frame");
    assert_eq!(r.rx.used_elem(0).1, 62);
}

#[test]
fn stalled_rx_holds_one_frame_and_stops_polling() {
    let mut r = rig(None);
    // The guest posts nothing while the host floods.
    let mut sent = 0;
    while sent < 2000 && r.peer.send(&tap_frame(1000, 3)).is_ok() {
        sent += 1;
    }
    assert_eq!(r.dev.process_rx(), 0);
    assert!(
        !r.dev.polls_tap(),
        "a full RX queue takes the tap out of the poll set"
    );
    assert_eq!(r.dev.rx_len, VNET_HDR_LEN + 1000, "exactly one frame waits");
    assert_eq!(r.dev.rx_buf.len(), BUF_LEN, "no buffer growth");
    // The guest posts two buffers and kicks RX.
    r.rx.add_chain(&[(BUF, 2048, true)]);
    r.rx.add_chain(&[(BUF + 0x1000, 2048, true)]);
    r.dev.process_queue(RX);
    assert_eq!(r.rx.used_idx(), 2);
    assert!(!r.dev.polls_tap(), "still more queued than posted");
    // A partial mergeable set is put back, not half-used.
    r.rx.add_chain(&[(BUF, 500, true)]);
    r.dev.process_queue(RX);
    assert_eq!(r.rx.used_idx(), 2);
    assert_eq!(r.dev.stats().rx_frames, 2);
}

#[test]
fn rx_is_budgeted_per_event() {
    let mut r = rig(None);
    for i in 0..100 {
        r.rx.add_chain(&[(BUF + i * 0x1000, 2048, true)]);
        r.peer.send(&tap_frame(60, i as u8)).unwrap();
    }
    assert_eq!(r.dev.process_rx(), EVENT_BUDGET);
    assert!(
        r.dev.polls_tap(),
        "the loop comes back through the readable tap"
    );
    assert_eq!(r.dev.process_rx(), 100 - EVENT_BUDGET);
}

#[test]
fn malformed_rx_chains_go_back_empty() {
    let mut r = rig(None);
    // A header-sized hole: too small for the virtio-net header.
    r.rx.add_chain(&[(BUF, 8, true)]);
    r.peer.send(&tap_frame(60, 9)).unwrap();
    r.dev.process_rx();
    assert_eq!((r.rx.used_idx(), r.rx.used_elem(0).1), (1, 0));
    // Outside guest memory.
    r.rx.add_chain(&[(0xffff_ffff_0000, 2048, true)]);
    r.peer.send(&tap_frame(60, 9)).unwrap();
    r.dev.process_rx();
    assert_eq!((r.rx.used_idx(), r.rx.used_elem(1).1), (2, 0));
    assert_eq!(r.dev.stats().rx_dropped, 2);
}

#[test]
fn reset_drops_the_waiting_frame_and_stops_polling() {
    let mut r = rig(None);
    r.peer.send(&tap_frame(60, 1)).unwrap();
    r.dev.process_rx();
    assert_ne!(r.dev.rx_len, 0);
    assert!(r.dev.reset());
    assert_eq!(r.dev.rx_len, 0);
    assert!(!r.dev.polls_tap());
    assert_eq!(r.dev.process_rx(), 0, "an inactive device reads nothing");
}
