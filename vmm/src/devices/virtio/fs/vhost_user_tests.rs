//! Tests of the vhost-user logic: config space, feature negotiation, memory table, vring
//! addresses, and the handshake against a fake backend.

use super::*;
use crate::devices::virtio::fs::test_backend::{codes, pair, Behaviour, FEATURES};
use crate::devices::virtio::test_utils::TestQueue;
use crate::memory::{self, MMIO_GAP_END, MMIO_GAP_START};
use std::os::fd::AsRawFd;
use vhost::vhost_user::message::FrontendReq;

const PROTOCOL_BIT: u64 = 1 << 30;

#[test]
fn config_space_is_tag_then_one_request_queue() {
    let cfg = config_space("hullshare");
    assert_eq!(&cfg[..9], b"hullshare");
    assert!(cfg[9..TAG_LEN].iter().all(|&b| b == 0));
    assert_eq!(&cfg[TAG_LEN..], &1u32.to_le_bytes());
    let full = "x".repeat(TAG_LEN);
    assert_eq!(&config_space(&full)[..TAG_LEN], full.as_bytes());
    assert_eq!(config_space(&"y".repeat(50))[TAG_LEN - 1], b'y');
}

#[test]
fn guest_sees_version_1_and_ring_features_only() {
    assert_eq!(
        guest_features(FEATURES),
        VIRTIO_F_VERSION_1 | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX
    );
    assert_eq!(guest_features(0), VIRTIO_F_VERSION_1);
    assert_eq!(guest_features(u64::MAX), PASSTHROUGH_FEATURES);
}

#[test]
fn backend_gets_the_common_features_and_protocol_bit() {
    let acked = VIRTIO_F_VERSION_1 | F_RING_EVENT_IDX;
    assert_eq!(backend_features(FEATURES, acked), acked | PROTOCOL_BIT);
    // Bits the backend lacks, or the guest may not have, never reach the backend.
    let backend = VIRTIO_F_VERSION_1 | PROTOCOL_BIT;
    assert_eq!(
        backend_features(backend, VIRTIO_F_VERSION_1 | F_RING_EVENT_IDX),
        VIRTIO_F_VERSION_1 | PROTOCOL_BIT
    );
    assert_eq!(backend_features(u64::MAX, 1 << 34), PROTOCOL_BIT);
    assert_eq!(
        backend_features(VIRTIO_F_VERSION_1, VIRTIO_F_VERSION_1),
        VIRTIO_F_VERSION_1
    );
}

#[test]
fn memory_table_of_a_small_guest() {
    let ram = memory::create(16).unwrap();
    let table = memory_table(&ram.mem).unwrap();
    assert_eq!(table.len(), 1);
    let r = &table[0];
    assert_eq!(
        (r.guest_phys_addr, r.memory_size, r.mmap_offset),
        (0, 16 << 20, 0)
    );
    assert_eq!(r.mmap_handle, ram.memfd.as_raw_fd());
    assert_eq!(
        r.userspace_addr,
        ram.mem.get_host_address(GuestAddress(0)).unwrap() as u64
    );
}

#[test]
fn memory_table_splits_around_the_mmio_gap() {
    // 3.5 GiB: the memfd is sparse and the mapping MAP_NORESERVE, so this costs no RAM.
    let ram = memory::create(3584).unwrap();
    let table = memory_table(&ram.mem).unwrap();
    assert_eq!(table.len(), 2);
    let (low, high) = (&table[0], &table[1]);
    assert_eq!((low.guest_phys_addr, low.memory_size), (0, MMIO_GAP_START));
    assert_eq!(low.mmap_offset, 0);
    assert_eq!(high.guest_phys_addr, MMIO_GAP_END);
    assert_eq!(high.memory_size, (3584 << 20) - MMIO_GAP_START);
    // The high region is the memfd's continuation: its file offset is the low region's size.
    assert_eq!(high.mmap_offset, MMIO_GAP_START);
    assert_eq!(high.mmap_handle, ram.memfd.as_raw_fd());
    assert_eq!(
        high.userspace_addr,
        ram.mem
            .get_host_address(GuestAddress(MMIO_GAP_END))
            .unwrap() as u64
    );
}

#[test]
fn memory_without_a_file_is_refused() {
    let anon: GuestMem =
        vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    assert!(matches!(memory_table(&anon), Err(Error::NotShared(0))));
}

#[test]
fn vring_addresses_are_host_addresses() {
    let ram = memory::create(16).unwrap();
    let tq = TestQueue::new(&ram.mem, 0x10_0000, 16);
    let q = tq.queue();
    let c = vring_config(&ram.mem, 1, &q).unwrap();
    let host = |gpa: u64| ram.mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
    assert_eq!(c.desc_table_addr, host(q.desc_table()));
    assert_eq!(c.avail_ring_addr, host(q.avail_ring()));
    assert_eq!(c.used_ring_addr, host(q.used_ring()));
    assert_eq!((c.queue_size, c.queue_max_size, c.flags), (16, 16, 0));
    assert!(c.log_addr.is_none());
}

#[test]
fn vring_outside_guest_ram_is_an_error() {
    let ram = memory::create(16).unwrap();
    let end = 16u64 << 20;
    for (desc, avail, used) in [
        (0xff00_0000u64, 0x1000, 0x2000),
        (0x1000, end - 8, 0x2000),
        (0x1000, 0x2000, end - 4),
        (0x1000, 0x2000, !3),
    ] {
        let mut q = TestQueue::new(&ram.mem, 0x1000, 16).queue();
        q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
        q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        let Err(e) = vring_config(&ram.mem, 0, &q) else {
            panic!("ring at {desc:#x}/{avail:#x}/{used:#x} accepted");
        };
        assert!(matches!(e, Error::BadRing { queue: 0, .. }), "{e}");
    }
    assert_eq!(host_address(&ram.mem, end - 4, 8), None);
    assert_eq!(host_address(&ram.mem, u64::MAX, 1), None);
}

#[test]
fn connect_to_a_missing_socket_says_to_start_virtiofsd() {
    let path = std::env::temp_dir().join(format!("hull-no-virtiofsd-{}.sock", std::process::id()));
    let Err(e) = connect(&path) else {
        panic!("connected to nothing");
    };
    let text = e.to_string();
    assert!(matches!(e, Error::Connect(..)));
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("start virtiofsd"), "{text}");
}

#[test]
fn init_negotiates_reply_ack_mq_and_reset_only() {
    let (frontend, backend) = pair(Behaviour::default());
    let n = init(frontend).unwrap();
    assert_eq!(n.features, FEATURES);
    assert_eq!(n.protocol, wanted_protocol_features());
    let log = backend.join().unwrap();
    let expect = [
        FrontendReq::SET_OWNER,
        FrontendReq::GET_FEATURES,
        FrontendReq::GET_PROTOCOL_FEATURES,
        FrontendReq::SET_PROTOCOL_FEATURES,
        FrontendReq::GET_QUEUE_NUM,
    ];
    assert_eq!(codes(&log), expect.map(|r| r as u32));
    let wanted = VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::RESET_DEVICE;
    assert_eq!(log[3].u64_at(0), wanted.bits());
}

#[test]
fn init_refuses_unusable_backends() {
    let (frontend, backend) = pair(Behaviour {
        features: FEATURES & !VIRTIO_F_VERSION_1,
        ..Behaviour::default()
    });
    assert!(matches!(init(frontend), Err(Error::NoVersion1(_))));
    backend.join().unwrap();
    let (frontend, backend) = pair(Behaviour {
        queues: 1,
        ..Behaviour::default()
    });
    assert!(matches!(init(frontend), Err(Error::TooFewQueues(1))));
    backend.join().unwrap();
    let (frontend, backend) = pair(Behaviour {
        hang_up_after: Some(1),
        ..Behaviour::default()
    });
    assert!(matches!(
        init(frontend),
        Err(Error::Request("GET_FEATURES", _))
    ));
    backend.join().unwrap();
}

struct Started {
    ram: crate::memory::GuestRam,
    queues: Vec<Queue>,
    call: EventFd,
    kicks: Vec<EventFd>,
}

fn started() -> Started {
    let ram = memory::create(16).unwrap();
    let queues = vec![
        TestQueue::new(&ram.mem, 0x10_0000, 16).queue(),
        TestQueue::new(&ram.mem, 0x20_0000, 16).queue(),
    ];
    Started {
        ram,
        queues,
        call: EventFd::new(0).unwrap(),
        kicks: vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
    }
}

fn start_with(s: &Started, frontend: Frontend) -> Result<(), Error> {
    start(
        frontend,
        &StartParams {
            mem: &s.ram.mem,
            queues: &s.queues,
            backend_features: FEATURES,
            acked: VIRTIO_F_VERSION_1 | F_RING_EVENT_IDX,
            call: &s.call,
            kicks: &s.kicks,
        },
    )
}

#[test]
fn start_sends_features_memory_and_every_ring() {
    let s = started();
    let (frontend, backend) = pair(Behaviour::default());
    let n = init(frontend.clone()).unwrap();
    start_with(&s, frontend.clone()).unwrap();
    assert!(reset(frontend, n.protocol).unwrap());
    let log = backend.join().unwrap();
    let log = &log[5..];
    let per_queue = [
        FrontendReq::SET_VRING_NUM,
        FrontendReq::SET_VRING_ADDR,
        FrontendReq::SET_VRING_BASE,
        FrontendReq::SET_VRING_CALL,
        FrontendReq::SET_VRING_KICK,
        FrontendReq::SET_VRING_ENABLE,
    ];
    let mut expect = vec![FrontendReq::SET_FEATURES, FrontendReq::SET_MEM_TABLE];
    expect.extend(per_queue);
    expect.extend(per_queue);
    expect.extend([
        FrontendReq::GET_VRING_BASE,
        FrontendReq::GET_VRING_BASE,
        FrontendReq::RESET_DEVICE,
    ]);
    assert_eq!(
        codes(log),
        expect.iter().map(|&r| r as u32).collect::<Vec<_>>()
    );
    assert_eq!(
        log[0].u64_at(0),
        VIRTIO_F_VERSION_1 | F_RING_EVENT_IDX | PROTOCOL_BIT
    );
    // SET_MEM_TABLE: num_regions, padding, then guest address, size, user address, offset.
    let mt = &log[1];
    assert_eq!(mt.u32_at(0), 1);
    assert_eq!(
        (mt.u64_at(8), mt.u64_at(16), mt.u64_at(32)),
        (0, 16 << 20, 0)
    );
    let host = |gpa: u64| s.ram.mem.get_host_address(GuestAddress(gpa)).unwrap() as u64;
    assert_eq!(mt.u64_at(24), host(0));
    // The second queue: size 16, addresses in the VMM's address space, base 0, enabled.
    let q1 = &log[8..14];
    assert_eq!((q1[0].u32_at(0), q1[0].u32_at(4)), (1, 16));
    let addr = &q1[1];
    assert_eq!(addr.u32_at(0), 1);
    assert_eq!(addr.u64_at(8), host(s.queues[1].desc_table()));
    assert_eq!(addr.u64_at(16), host(s.queues[1].used_ring()));
    assert_eq!(addr.u64_at(24), host(s.queues[1].avail_ring()));
    assert_eq!((q1[2].u32_at(0), q1[2].u32_at(4)), (1, 0));
    assert_eq!(q1[3].u64_at(0), 1);
    assert_eq!((q1[5].u32_at(0), q1[5].u32_at(4)), (1, 1));
}

#[test]
fn reset_without_reset_device_only_stops_the_rings() {
    let (frontend, backend) = pair(Behaviour {
        protocol: VhostUserProtocolFeatures::REPLY_ACK,
        ..Behaviour::default()
    });
    let n = init(frontend.clone()).unwrap();
    assert_eq!(n.protocol, VhostUserProtocolFeatures::REPLY_ACK);
    assert!(!reset(frontend, n.protocol).unwrap());
    let log = backend.join().unwrap();
    let stop = FrontendReq::GET_VRING_BASE as u32;
    assert_eq!(codes(&log)[log.len() - 2..], [stop, stop]);
}

#[test]
fn a_refused_request_fails_the_start() {
    let s = started();
    let (frontend, backend) = pair(Behaviour {
        refuse: Some(FrontendReq::SET_MEM_TABLE),
        ..Behaviour::default()
    });
    init(frontend.clone()).unwrap();
    let e = start_with(&s, frontend).unwrap_err();
    assert!(matches!(e, Error::Request("SET_MEM_TABLE", _)), "{e}");
    backend.join().unwrap();
}

#[test]
fn a_bad_ring_fails_before_anything_is_sent() {
    let mut s = started();
    s.queues[1].set_used_ring_address(Some(0xff00_0000), Some(0));
    let (frontend, backend) = pair(Behaviour::default());
    init(frontend.clone()).unwrap();
    let e = start_with(&s, frontend).unwrap_err();
    assert!(matches!(e, Error::BadRing { queue: 1, .. }), "{e}");
    assert_eq!(backend.join().unwrap().len(), 5, "only the init requests");
}
