//! Unit tests of the virtio-balloon with real descriptor chains in memfd-backed guest memory.

use super::*;
use crate::devices::virtio::test_utils::TestQueue;
use crate::devices::virtio::{Interrupt, VIRTIO_F_VERSION_1};
use crate::memory::{GuestRam, PAGE_SIZE};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Where the three queues' rings live.
const RINGS: [u64; 3] = [0x10_0000, 0x11_0000, 0x12_0000];
/// A 2 MiB-aligned area the tests fill and report.
const AREA: u64 = 0x40_0000;
const AREA_LEN: u64 = 2 << 20;
const MIB: u64 = 1 << 20;

struct Rig {
    dev: Balloon,
    ram: GuestRam,
    /// Driver views of the inflate, deflate and reporting queues.
    q: Vec<TestQueue>,
    irq: EventFd,
}

/// A running balloon over `ram`, the driver having acked `features`.
fn rig_on(ram: GuestRam, features: u64, size: u16) -> Rig {
    let mut dev = Balloon::new().unwrap();
    let q: Vec<_> = RINGS
        .iter()
        .map(|&at| TestQueue::new(&ram.mem, at, size))
        .collect();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupt = Arc::new(Interrupt::new(irq.try_clone().unwrap()));
    dev.common_mut().ack_features(features).unwrap();
    dev.activate(
        ram.mem.clone(),
        q.iter().map(TestQueue::queue).collect(),
        interrupt,
    )
    .unwrap();
    Rig { dev, ram, q, irq }
}

fn rig() -> Rig {
    rig_on(
        crate::memory::create(16).unwrap(),
        F_REPORTING | VIRTIO_F_VERSION_1,
        QUEUE_SIZE,
    )
}

/// Fills `len` bytes at `addr` with `byte`, touching every page.
fn fill(rig: &Rig, addr: u64, len: u64, byte: u8) {
    rig.ram
        .mem
        .write_slice(&vec![byte; len as usize], GuestAddress(addr))
        .unwrap();
}

/// Whether every byte of `addr..addr + len` is `byte`.
fn all(rig: &Rig, addr: u64, len: u64, byte: u8) -> bool {
    let mut got = vec![!byte; len as usize];
    rig.ram
        .mem
        .read_slice(&mut got, GuestAddress(addr))
        .unwrap();
    got.iter().all(|b| *b == byte)
}

fn blocks(rig: &Rig) -> u64 {
    rig.ram.memfd.metadata().unwrap().blocks()
}

#[test]
fn offers_only_version_1_and_reporting() {
    let dev = Balloon::new().unwrap();
    assert_eq!(dev.common().offered(), VIRTIO_F_VERSION_1 | F_REPORTING);
    assert_eq!(dev.common().device_type().id(), 5);
    assert_eq!(dev.common().queue_sizes(), [QUEUE_SIZE; 3]);
    let mut dev = Balloon::new().unwrap();
    let stats_vq = 1 << 1;
    assert!(dev
        .common_mut()
        .ack_features(VIRTIO_F_VERSION_1 | F_REPORTING | stats_vq)
        .is_err());
    dev.common_mut()
        .ack_features(VIRTIO_F_VERSION_1 | F_REPORTING)
        .unwrap();
}

#[test]
fn config_space_num_pages_stays_zero_and_actual_is_kept() {
    let mut dev = Balloon::new().unwrap();
    let mut cfg = [0xffu8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(cfg, [0; 8]);
    dev.write_config(4, &7u32.to_le_bytes());
    // The driver cannot set the target, nor half of `actual`.
    dev.write_config(0, &9u32.to_le_bytes());
    dev.write_config(5, &[1, 1]);
    dev.write_config(u64::MAX, &[1]);
    let mut word = [0u8; 4];
    dev.read_config(0, &mut word);
    assert_eq!(u32::from_le_bytes(word), 0);
    dev.read_config(4, &mut word);
    assert_eq!(u32::from_le_bytes(word), 7);
    dev.read_config(8, &mut word);
    assert_eq!(word, [0; 4], "nothing beyond `actual`");
}

#[test]
fn a_reported_range_is_freed_and_reads_zero() {
    let mut r = rig();
    fill(&r, AREA - PAGE_SIZE, AREA_LEN + 2 * PAGE_SIZE, 0x5a);
    // Two ranges in one chain: the 2 MiB area in two halves (the chain is written first, so
    // its ring pages are counted in both figures).
    r.q[REPORTING].add_chain(&[
        (AREA, (AREA_LEN / 2) as u32, true),
        (AREA + AREA_LEN / 2, (AREA_LEN / 2) as u32, true),
    ]);
    let before = blocks(&r);
    assert_eq!(r.dev.process_reporting(), 1);
    // Before reading the range back: a read fault on a memfd hole allocates a page again.
    let after = blocks(&r);
    assert!(
        before.saturating_sub(after) >= AREA_LEN / 512,
        "st_blocks {before} -> {after}: the memfd did not shrink by 2 MiB"
    );
    assert!(all(&r, AREA, AREA_LEN, 0));
    assert!(
        all(&r, AREA - PAGE_SIZE, PAGE_SIZE, 0x5a),
        "the page before"
    );
    assert!(all(&r, AREA + AREA_LEN, PAGE_SIZE, 0x5a), "the page after");
    assert_eq!(r.q[REPORTING].used_idx(), 1);
    assert_eq!(r.q[REPORTING].used_elem(0).1, 0);
    assert_eq!(r.irq.read().unwrap(), 1, "the interrupt was raised");
    let s = r.dev.stats();
    assert_eq!(
        (s.ranges_freed, s.bytes_freed, s.ranges_refused),
        (2, AREA_LEN, 0)
    );
    let counted = r.dev.common().counters().snapshot(0).bytes.unwrap();
    assert_eq!(counted.tx, AREA_LEN);
    // The guest can use the pages again.
    fill(&r, AREA, PAGE_SIZE, 1);
    assert!(all(&r, AREA, PAGE_SIZE, 1));
}

#[test]
fn hostile_ranges_are_skipped_counted_and_touch_nothing() {
    let mut r = rig();
    fill(&r, AREA, AREA_LEN, 0x5a);
    let end = 16 * MIB;
    let bad: &[(u64, u32, bool)] = &[
        (AREA, 0, true),                                    // zero length
        (AREA + 0x800, PAGE_SIZE as u32, true),             // unaligned start
        (AREA, PAGE_SIZE as u32 + 1, true),                 // unaligned length
        (AREA, 0x800, true),                                // less than a page
        (end, PAGE_SIZE as u32, true),                      // outside RAM
        (end - PAGE_SIZE, 2 * PAGE_SIZE as u32, true),      // across the end of RAM
        (u64::MAX - PAGE_SIZE + 1, PAGE_SIZE as u32, true), // outside, at the top
        (AREA, PAGE_SIZE as u32, false),                    // not device-writable
    ];
    r.q[REPORTING].add_chain(bad);
    // And one range per chain, each returned.
    for &one in bad {
        r.q[REPORTING].add_chain(&[one]);
    }
    // Overflowing the address space (alone: virtio-queue ends a chain whose lengths add up to
    // more than 4 GiB before yielding the descriptor that overflows).
    r.q[REPORTING].add_chain(&[(!(PAGE_SIZE - 1), !0xfffu32, true)]);
    let chains = 2 + bad.len();
    assert_eq!(r.dev.process_reporting(), chains);
    assert_eq!(usize::from(r.q[REPORTING].used_idx()), chains);
    assert!(
        all(&r, AREA, AREA_LEN, 0x5a),
        "a refused range freed memory"
    );
    assert!(all(&r, end - PAGE_SIZE, PAGE_SIZE, 0));
    let s = r.dev.stats();
    assert_eq!(s.ranges_refused, 2 * bad.len() as u64 + 1);
    assert_eq!((s.ranges_freed, s.bytes_freed, s.discard_errors), (0, 0, 0));
    // Still working afterwards.
    r.q[REPORTING].add_chain(&[(AREA, PAGE_SIZE as u32, true)]);
    r.dev.process_reporting();
    assert!(all(&r, AREA, PAGE_SIZE, 0));
    assert_eq!(r.dev.stats().ranges_freed, 1);
}

#[test]
fn ranges_across_the_mmio_gap_are_refused() {
    // Two RAM regions with a hole between them, as around the 32-bit MMIO gap.
    let ram = crate::memory::from_ranges(&[
        (GuestAddress(0), 8 * MIB),
        (GuestAddress(16 * MIB), 8 * MIB),
    ])
    .unwrap();
    let mut r = rig_on(ram, F_REPORTING | VIRTIO_F_VERSION_1, QUEUE_SIZE);
    fill(&r, 8 * MIB - PAGE_SIZE, PAGE_SIZE, 0x5a);
    fill(&r, 16 * MIB, PAGE_SIZE, 0x5a);
    for (addr, len) in [
        (8 * MIB - PAGE_SIZE, 2 * PAGE_SIZE),  // from RAM into the gap
        (12 * MIB, PAGE_SIZE),                 // inside the gap
        (16 * MIB - PAGE_SIZE, 2 * PAGE_SIZE), // from the gap into RAM
        (8 * MIB - PAGE_SIZE, 8 * MIB + 2 * PAGE_SIZE), // over the whole gap
    ] {
        r.q[REPORTING].add_chain(&[(addr, len as u32, true)]);
    }
    assert_eq!(r.dev.process_reporting(), 4);
    assert!(all(&r, 8 * MIB - PAGE_SIZE, PAGE_SIZE, 0x5a));
    assert!(all(&r, 16 * MIB, PAGE_SIZE, 0x5a));
    assert_eq!(r.dev.stats().ranges_refused, 4);
    // A range in the upper region frees its own part of the file, not the lower region's.
    fill(&r, 0, PAGE_SIZE, 0x77);
    r.q[REPORTING].add_chain(&[(16 * MIB, PAGE_SIZE as u32, true)]);
    r.dev.process_reporting();
    assert!(all(&r, 16 * MIB, PAGE_SIZE, 0));
    assert!(all(&r, 0, PAGE_SIZE, 0x77));
}

#[test]
fn inflate_and_deflate_buffers_are_returned_untouched() {
    let mut r = rig();
    fill(&r, AREA, PAGE_SIZE, 0x5a);
    // PFN arrays naming the filled page: the device must not act on them.
    let pfn = (AREA / PAGE_SIZE) as u32;
    r.ram
        .mem
        .write_obj(pfn, GuestAddress(AREA + 2 * PAGE_SIZE))
        .unwrap();
    for index in [INFLATE, DEFLATE] {
        r.q[index].add_chain(&[(AREA + 2 * PAGE_SIZE, 4, false)]);
        r.dev.process_queue(index);
        assert_eq!(r.q[index].used_idx(), 1);
        assert_eq!(r.q[index].used_elem(0), (0, 0));
    }
    assert!(all(&r, AREA, PAGE_SIZE, 0x5a));
    let s = r.dev.stats();
    assert_eq!((s.returned_unread, s.ranges_freed), (2, 0));
    assert_eq!(r.dev.common().counters().snapshot(0).interrupts, 2);
}

#[test]
fn without_reporting_acked_reports_are_returned_unread() {
    let mut r = rig_on(
        crate::memory::create(16).unwrap(),
        VIRTIO_F_VERSION_1,
        QUEUE_SIZE,
    );
    fill(&r, AREA, PAGE_SIZE, 0x5a);
    r.q[REPORTING].add_chain(&[(AREA, PAGE_SIZE as u32, true)]);
    r.dev.process_queue(REPORTING);
    assert_eq!(r.q[REPORTING].used_idx(), 1);
    assert!(all(&r, AREA, PAGE_SIZE, 0x5a));
    let s = r.dev.stats();
    assert_eq!((s.ranges_freed, s.returned_unread), (0, 1));
}

#[test]
fn a_flood_is_served_in_bounded_batches() {
    let mut r = rig_on(
        crate::memory::create(16).unwrap(),
        F_REPORTING | VIRTIO_F_VERSION_1,
        256,
    );
    for i in 0..200 {
        r.q[REPORTING].add_chain(&[(AREA + i * PAGE_SIZE, PAGE_SIZE as u32, true)]);
        r.q[INFLATE].add_chain(&[(AREA, 4, false)]);
    }
    for index in [INFLATE, REPORTING] {
        r.dev.process_queue(index);
        assert_eq!(usize::from(r.q[index].used_idx()), EVENT_BUDGET);
        // The device kicked itself: the loop comes back for the rest, one batch per event.
        let mut events = 1;
        while r.dev.common().queue_events()[index].read().is_ok() {
            r.dev.process_queue(index);
            events += 1;
            assert!(events < 10, "the re-arming never stops");
        }
        assert_eq!(r.q[index].used_idx(), 200);
        assert_eq!(events, 200usize.div_ceil(EVENT_BUDGET));
    }
    assert_eq!(r.dev.stats().ranges_freed, 200);
}

#[test]
fn a_descriptor_loop_ends_within_the_queue_size() {
    let mut r = rig();
    let me = r.q[REPORTING].next_desc();
    // NEXT | WRITE, pointing at itself.
    r.q[REPORTING].add_raw(&[(AREA, PAGE_SIZE as u32, 3, me)]);
    assert_eq!(r.dev.process_reporting(), 1);
    assert_eq!(r.q[REPORTING].used_idx(), 1);
    let s = r.dev.stats();
    assert!(s.ranges_freed <= u64::from(QUEUE_SIZE), "{s:?}");
    assert!(s.ranges_freed >= 1);
}

#[test]
fn an_indirect_table_longer_than_the_queue_is_cut_short() {
    let mut r = rig();
    // An indirect table of 200 chained one-page reports: VIRTIO_F_INDIRECT_DESC is not
    // offered, but a hostile driver may use it anyway.
    let table = 0x20_0000u64;
    let n = 200u16;
    for i in 0..n {
        let at = GuestAddress(table + 16 * u64::from(i));
        let (flags, next) = if i + 1 < n { (3u16, i + 1) } else { (2, 0) };
        let mem = &r.ram.mem;
        mem.write_obj(AREA + u64::from(i) * PAGE_SIZE, at).unwrap();
        mem.write_obj(PAGE_SIZE as u32, at.unchecked_add(8))
            .unwrap();
        mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        mem.write_obj(next, at.unchecked_add(14)).unwrap();
    }
    r.q[REPORTING].add_raw(&[(table, 16 * u32::from(n), 4, 0)]);
    assert_eq!(r.dev.process_reporting(), 1);
    assert_eq!(r.q[REPORTING].used_idx(), 1);
    let s = r.dev.stats();
    assert_eq!(s.ranges_freed, u64::from(QUEUE_SIZE));
    assert_eq!(s.chains_truncated, 1);
}

#[test]
fn warnings_are_held_back_within_the_interval() {
    let mut w = WarnLimit::default();
    w.warn("first", 0, 0, &"logged");
    let first = w.last;
    assert!(first.is_some());
    for _ in 0..1000 {
        w.warn("again", 0, 0, &"held back");
    }
    assert_eq!((w.last, w.held), (first, 1000));
    w.last = Some(Instant::now() - WARN_INTERVAL);
    w.warn("later", 0, 0, &"logged");
    assert_eq!(w.held, 0);
}

#[test]
fn an_inactive_device_does_nothing() {
    let mut dev = Balloon::new().unwrap();
    for index in 0..4 {
        dev.process_queue(index);
    }
    assert_eq!(dev.stats(), Stats::default());
}
