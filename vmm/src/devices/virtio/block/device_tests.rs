//! Unit tests of virtio-blk with real descriptor chains in guest memory.

use super::*;
use crate::devices::virtio::test_utils::TestQueue;
use crate::devices::virtio::{Interrupt, INT_CONFIG};
use std::sync::Arc;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const HDR: u64 = 0x40_0000;
const DATA: u64 = 0x41_0000;
const STATUS: u64 = 0x42_0000;

struct Rig {
    dev: Block,
    q: TestQueue,
    path: std::path::PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn rig(name: &str, read_only: bool) -> Rig {
    rig_sized(name, read_only, 16)
}

fn rig_sized(name: &str, read_only: bool, size: u16) -> Rig {
    let path = std::env::temp_dir().join(format!("hull-blk-{name}-{}", std::process::id()));
    let mut content = vec![0u8; 8 * 512];
    content[..11].copy_from_slice(b"hello disk\n");
    content[512..520].copy_from_slice(b"sector 1");
    std::fs::write(&path, &content).unwrap();
    let mut dev = Block::new(&path, read_only, "hull-blk").unwrap();
    let mem = crate::memory::create(16).unwrap().mem;
    let q = TestQueue::new(&mem, 0x10_0000, size);
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let offered = dev.common().offered();
    dev.common_mut().ack_features(offered).unwrap();
    dev.activate(mem, vec![q.queue()], irq).unwrap();
    Rig { dev, q, path }
}

fn header(mem: &GuestMem, kind: u32, sector: u64) {
    mem.write_obj(kind, GuestAddress(HDR)).unwrap();
    mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
    mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
}

fn status(mem: &GuestMem) -> u8 {
    mem.read_obj(GuestAddress(STATUS)).unwrap()
}

#[test]
fn config_and_features() {
    let r = rig("cfg", true);
    let mut b = [0u8; 8];
    r.dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 8);
    assert_ne!(r.dev.common().offered() & F_RO, 0);
    assert_ne!(r.dev.common().offered() & F_FLUSH, 0);
}

#[test]
fn read_write_flush_id() {
    let mut r = rig("rw", false);
    let mem = r.q.mem.clone();
    // Read sector 1.
    header(&mem, T_IN, 1);
    r.q.add_chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    assert!(r.dev.process_requests() > 0);
    assert_eq!(status(&mem), S_OK);
    assert_eq!(r.q.used_elem(0).1, 513);
    let mut got = [0u8; 8];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got, b"sector 1");

    // Write sector 2 from two descriptors, then flush.
    mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    header(&mem, T_OUT, 2);
    r.q.add_chain(&[
        (HDR, 16, false),
        (DATA, 256, false),
        (DATA + 256, 256, false),
        (STATUS, 1, true),
    ]);
    r.dev.process_requests();
    assert_eq!(status(&mem), S_OK);
    assert_eq!(std::fs::read(&r.path).unwrap()[1024..1536], [0xab; 512]);
    header(&mem, T_FLUSH, 0);
    r.q.add_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
    r.dev.process_requests();
    assert_eq!(status(&mem), S_OK);

    header(&mem, T_GET_ID, 0);
    r.q.add_chain(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    r.dev.process_requests();
    assert_eq!(status(&mem), S_OK);
    let mut id = [0u8; 8];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"hull-blk");

    header(&mem, 99, 0);
    r.q.add_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
    r.dev.process_requests();
    assert_eq!(status(&mem), S_UNSUPP);

    // One sector each way; the flush, the id and the refused request move no disk bytes.
    let s = r.dev.common().counters().snapshot(0);
    assert_eq!(
        s.bytes,
        Some(hull_protocol::control::DeviceBytes { rx: 512, tx: 512 })
    );
    assert_eq!(s.interrupts, 5);
}

#[test]
fn read_only_disk_refuses_writes() {
    let mut r = rig("ro", true);
    let mem = r.q.mem.clone();
    header(&mem, T_OUT, 0);
    r.q.add_chain(&[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)]);
    r.dev.process_requests();
    assert_eq!(status(&mem), S_IOERR);
    assert_eq!(&std::fs::read(&r.path).unwrap()[..5], b"hello");
    let bytes = r.dev.common().counters().snapshot(0).bytes.unwrap();
    assert_eq!(
        (bytes.rx, bytes.tx),
        (0, 0),
        "a refused write moved nothing"
    );
}

#[test]
fn hostile_requests() {
    let mut r = rig("hostile", false);
    let mem = r.q.mem.clone();
    // Past the end of the disk, and a sector number that overflows when scaled.
    for sector in [8, u64::MAX / 256] {
        header(&mem, T_IN, sector);
        r.q.add_chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
        r.dev.process_requests();
        assert_eq!(status(&mem), S_IOERR);
    }
    // Not a whole sector.
    header(&mem, T_IN, 0);
    r.q.add_chain(&[(HDR, 16, false), (DATA, 100, true), (STATUS, 1, true)]);
    r.dev.process_requests();
    assert_eq!(status(&mem), S_IOERR);
    // Short header.
    header(&mem, T_IN, 0);
    r.q.add_chain(&[(HDR, 8, false), (STATUS, 1, true)]);
    r.dev.process_requests();
    assert_eq!(status(&mem), S_IOERR);
    // Data buffer outside guest memory: the whole chain is refused, returned unused.
    let before = r.q.used_idx();
    header(&mem, T_IN, 0);
    r.q.add_chain(&[
        (HDR, 16, false),
        (0xfff0_0000, 512, true),
        (STATUS, 1, true),
    ]);
    // No writable descriptor at all: nowhere to put a status.
    r.q.add_chain(&[(HDR, 16, false)]);
    // A self-referencing descriptor loop.
    let me = r.q.next_desc();
    r.q.add_raw(&[(HDR, 16, 1, me)]);
    r.dev.process_requests();
    assert_eq!(r.q.used_idx(), before.wrapping_add(3));
    for i in 0..3 {
        assert_eq!(r.q.used_elem(before.wrapping_add(i)).1, 0);
    }
    // Still working afterwards.
    header(&mem, T_IN, 0);
    r.q.add_chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    r.dev.process_requests();
    assert_eq!(status(&mem), S_OK);
}

#[test]
fn missing_file_is_an_error() {
    assert!(matches!(
        Block::new(Path::new("/nonexistent/disk"), true, "hull-blk"),
        Err(Error::Open(..))
    ));
}

#[test]
fn one_event_serves_a_bounded_batch_and_re_arms() {
    let mut r = rig_sized("budget", false, 256);
    let mem = r.q.mem.clone();
    header(&mem, T_GET_ID, 0);
    for _ in 0..100 {
        r.q.add_chain(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    }
    r.dev.process_queue(0);
    assert_eq!(usize::from(r.q.used_idx()), EVENT_BUDGET);
    // The device kicked itself: the loop comes back for the rest, one batch per event.
    let mut events = 1;
    while r.dev.common().queue_events()[0].read().is_ok() {
        r.dev.process_queue(0);
        events += 1;
        assert!(events < 10, "the re-arming never stops");
    }
    assert_eq!(r.q.used_idx(), 100);
    assert_eq!(events, 100usize.div_ceil(EVENT_BUDGET));
}

#[test]
fn a_queue_storm_does_not_starve_the_event_loop() {
    use crate::event_loop::EventLoop;
    use crate::exit::{ExitNotifier, ExitReason};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    let mut r = rig_sized("storm", false, 256);
    let mem = r.q.mem.clone();
    header(&mem, T_IN, 0);
    let kick = r.dev.common().queue_events()[0].try_clone().unwrap();
    // The rig keeps the disk file (removed on drop); the loop and the "vCPU" get the rest.
    let mut q = std::mem::replace(&mut r.q, TestQueue::new(&mem, 0x20_0000, 16));
    let dev = std::mem::replace(&mut r.dev, Block::new(&r.path, false, "hull-blk").unwrap());
    let dev = Arc::new(Mutex::new(dev));
    let exit = Arc::new(ExitNotifier::new().unwrap());
    let mut el = EventLoop::new(exit.clone()).unwrap();
    el.add_device(dev.clone()).unwrap();
    // A "vCPU" that keeps the queue full (80 requests of 3 descriptors in a 256-entry table)
    // and notifies without pause.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let storm = std::thread::spawn(move || {
        let mut added: u64 = 0;
        while !stop2.load(Ordering::Relaxed) {
            while q.avail_idx().wrapping_sub(q.used_idx()) < 80 {
                q.add_chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
                added += 1;
            }
            let _ = kick.write(1);
        }
        added
    });
    let looping = std::thread::spawn(move || el.run());
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    exit.notify(ExitReason::Stopped);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !looping.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = asked.elapsed();
    stop.store(true, Ordering::Relaxed);
    let added = storm.join().unwrap();
    assert!(
        looping.is_finished(),
        "the event loop never saw the exit during the storm"
    );
    assert_eq!(looping.join().unwrap(), ExitReason::Stopped);
    assert!(added as usize > EVENT_BUDGET, "no storm: {added} requests");
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
}

/// Starts `dev` as a driver would (all features acked); its queue and interrupt.
fn start(dev: &mut Block) -> (TestQueue, Arc<Interrupt>) {
    let mem = crate::memory::create(16).unwrap().mem;
    let q = TestQueue::new(&mem, 0x10_0000, 16);
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let offered = dev.common().offered();
    dev.common_mut().ack_features(offered).unwrap();
    dev.activate(mem, vec![q.queue()], irq.clone()).unwrap();
    (q, irq)
}

/// A scratch directory, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hull-blk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A temporary image of `sectors` sectors, sector `i` starting with `sector i`.
fn image(name: &str, sectors: usize) -> (Scratch, std::path::PathBuf) {
    let dir = Scratch::new(name);
    let path = dir.0.join("image");
    let mut content = vec![0u8; sectors * 512];
    for i in 0..sectors {
        let tag = format!("sector {i}");
        content[i * 512..i * 512 + tag.len()].copy_from_slice(tag.as_bytes());
    }
    std::fs::write(&path, content).unwrap();
    (dir, path)
}

fn capacity(dev: &Block) -> u64 {
    let mut b = [0u8; 8];
    dev.read_config(0, &mut b);
    u64::from_le_bytes(b)
}

#[test]
fn an_empty_slot_fails_reads_and_answers_its_serial() {
    let mut dev = Block::empty("ctr-7.img").unwrap();
    assert!(dev.is_empty_slot());
    assert_eq!(capacity(&dev), 0);
    assert_ne!(
        dev.common().offered() & F_RO,
        0,
        "an empty slot is read-only"
    );
    let (mut q, irq) = start(&mut dev);
    let mem = q.mem.clone();
    for kind in [T_IN, T_OUT] {
        header(&mem, kind, 0);
        q.add_chain(&[
            (HDR, 16, false),
            (DATA, 512, kind == T_IN),
            (STATUS, 1, true),
        ]);
        dev.process_requests();
        assert_eq!(status(&mem), S_IOERR, "request type {kind}");
    }
    header(&mem, T_FLUSH, 0);
    q.add_chain(&[(HDR, 16, false), (STATUS, 1, true)]);
    dev.process_requests();
    assert_eq!(status(&mem), S_OK, "nothing to flush on a read-only disk");
    mem.write_slice(&[0xff; ID_LEN], GuestAddress(DATA))
        .unwrap();
    header(&mem, T_GET_ID, 0);
    q.add_chain(&[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
    dev.process_requests();
    assert_eq!(status(&mem), S_OK);
    let mut id = [0u8; ID_LEN];
    mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"ctr-7.img\0\0\0\0\0\0\0\0\0\0\0");
    assert_eq!(irq.status() & INT_CONFIG, 0, "no configuration change yet");
}

#[test]
fn attach_sets_the_capacity_and_tells_a_running_driver() {
    let mut dev = Block::empty("slot").unwrap();
    let (mut q, irq) = start(&mut dev);
    let mem = q.mem.clone();
    irq.irqfd().read().unwrap_or(0);
    let generation = dev.common().config_generation();
    let (_dir, path) = image("attach-img", 3);
    dev.attach(std::fs::File::open(&path).unwrap()).unwrap();
    assert!(!dev.is_empty_slot());
    assert_eq!((dev.capacity_sectors(), capacity(&dev)), (3, 3));
    assert_eq!(dev.common().config_generation(), generation.wrapping_add(1));
    assert_eq!(irq.status() & INT_CONFIG, INT_CONFIG);
    assert_eq!(irq.irqfd().read().unwrap(), 1, "the line was raised");
    header(&mem, T_IN, 2);
    q.add_chain(&[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
    dev.process_requests();
    assert_eq!(status(&mem), S_OK);
    let mut got = [0u8; 8];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got, b"sector 2");
    // Past the image's end still fails, and a write to the image is refused.
    for (kind, sector) in [(T_IN, 3), (T_OUT, 0)] {
        header(&mem, kind, sector);
        q.add_chain(&[
            (HDR, 16, false),
            (DATA, 512, kind == T_IN),
            (STATUS, 1, true),
        ]);
        dev.process_requests();
        assert_eq!(status(&mem), S_IOERR);
    }
    // A filled slot stays as it is.
    let (_dir2, other) = image("attach-other", 5);
    let err = dev
        .attach(std::fs::File::open(&other).unwrap())
        .unwrap_err();
    assert!(matches!(err, AttachError::Occupied), "{err}");
    assert_eq!(capacity(&dev), 3);
}

#[test]
fn attach_before_the_driver_starts_signals_when_it_does() {
    let mut dev = Block::empty("slot").unwrap();
    let (_dir, path) = image("early-img", 2);
    dev.attach(std::fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(capacity(&dev), 2);
    assert_eq!(dev.common().config_generation(), 1);
    let (_q, irq) = start(&mut dev);
    assert_eq!(irq.status() & INT_CONFIG, INT_CONFIG);
}

#[test]
fn attach_refuses_configured_disks_and_what_is_not_an_image() {
    let mut r = rig("occupied", true);
    let (_dir, path) = image("refuse-img", 1);
    assert!(matches!(
        r.dev.attach(std::fs::File::open(&path).unwrap()),
        Err(AttachError::Occupied)
    ));
    let mut dev = Block::empty("slot").unwrap();
    let (_q, irq) = start(&mut dev);
    let dir = Scratch::new("refuse-dir");
    let small = dir.0.join("small");
    std::fs::write(&small, [1u8; 511]).unwrap();
    let refused = [
        (std::fs::File::open(&dir.0).unwrap(), "directory"),
        (
            std::fs::File::open("/dev/null").unwrap(),
            "character device",
        ),
        (std::fs::File::open(&small).unwrap(), "511 bytes"),
    ];
    for (file, why) in refused {
        let err = dev.attach(file).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
    let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let err = dev.attach(std::fs::File::from(std::os::fd::OwnedFd::from(sock)));
    assert!(
        matches!(err, Err(AttachError::NotRegular("socket"))),
        "{err:?}"
    );
    assert!(dev.is_empty_slot());
    assert_eq!((capacity(&dev), irq.status() & INT_CONFIG), (0, 0));
    assert_eq!(dev.common().config_generation(), 0);
    dev.attach(std::fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(capacity(&dev), 1);
}
