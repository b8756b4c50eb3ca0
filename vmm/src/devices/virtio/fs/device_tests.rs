//! Tests of the virtio-fs device against a fake vhost-user backend: what the transport sees,
//! activation, interrupts from the call eventfd, reset, and backend death.

use super::*;
use crate::devices::virtio::fs::test_backend::{codes, pair, Behaviour, FEATURES};
use crate::devices::virtio::fs::vhost_user::{init, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC};
use crate::devices::virtio::test_utils::TestQueue;
use crate::devices::virtio::Interrupt;
use crate::devices::virtio::{INT_VRING, VIRTIO_F_VERSION_1};
use crate::memory;
use crate::memory::GuestMem;
use std::sync::Arc;
use vhost::vhost_user::message::{FrontendReq, VhostUserProtocolFeatures};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fn device(
    b: Behaviour,
) -> (
    Fs,
    std::thread::JoinHandle<Vec<super::super::test_backend::Request>>,
) {
    let (frontend, backend) = pair(b);
    let negotiated = init(frontend.clone()).unwrap();
    let fs = Fs::with_frontend("hullshare", Path::new("/fake.sock"), frontend, negotiated).unwrap();
    (fs, backend)
}

fn activate(fs: &mut Fs) -> (Result<(), ActivateError>, Arc<Interrupt>, GuestMem) {
    let mem = memory::create(16).unwrap().mem;
    let queues = vec![
        TestQueue::new(&mem, 0x10_0000, 16).queue(),
        TestQueue::new(&mem, 0x20_0000, 16).queue(),
    ];
    let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    fs.common_mut()
        .ack_features(VIRTIO_F_VERSION_1 | F_RING_EVENT_IDX)
        .unwrap();
    (fs.activate(mem.clone(), queues, irq.clone()), irq, mem)
}

#[test]
fn transport_view() {
    let (fs, backend) = device(Behaviour::default());
    assert_eq!(fs.common().device_type(), DeviceType::Fs);
    assert_eq!(fs.common().queue_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(
        fs.common().offered(),
        VIRTIO_F_VERSION_1 | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX
    );
    assert_ne!(
        FEATURES,
        fs.common().offered(),
        "vhost-user bits stay hidden"
    );
    let mut tag = [0u8; 12];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag[..10], b"hullshare\0");
    let mut queues = [0u8; 4];
    fs.read_config(36, &mut queues);
    assert_eq!(u32::from_le_bytes(queues), 1);
    assert_eq!(fs.common().queue_events().len(), NUM_QUEUES);
    assert!(!fs.polls_queue_events(), "virtiofsd reads the kicks");
    assert_eq!(
        fs.backend_fds().len(),
        1,
        "the socket; virtiofsd raises the line itself"
    );
    drop(fs);
    backend.join().unwrap();
}

#[test]
fn virtiofsd_raises_the_line_and_the_vring_bit_reads_as_pending() {
    let (mut fs, backend) = device(Behaviour::default());
    let (result, irq, _mem) = activate(&mut fs);
    result.unwrap();
    // virtiofsd got the irqfd as its call eventfd: the event loop polls only the socket.
    assert_eq!(fs.backend_fds(), vec![fs.frontend.as_raw_fd()]);
    assert_eq!(irq.status(), INT_VRING);
    irq.ack(u32::MAX);
    assert_eq!(
        irq.status(),
        INT_VRING,
        "the driver's acknowledgement keeps it"
    );
    // virtiofsd's kicks, bytes and interrupts never pass through hull-vmm.
    let s = fs.common().counters().snapshot(0);
    assert_eq!(s.interrupts, 0);
    assert!(s.queue_notifications.is_empty() && s.bytes.is_none());
    // The socket is idle while the backend lives.
    fs.process_backend(fs.frontend.as_raw_fd());
    assert!(!fs.is_broken());
    assert!(fs.reset());
    assert_eq!(irq.status(), 0, "a reset device raises nothing");
    drop(fs);
    let log = codes(&backend.join().unwrap());
    let calls = log
        .iter()
        .filter(|&&c| c == FrontendReq::SET_VRING_CALL as u32)
        .count();
    assert_eq!(calls, NUM_QUEUES);
}

#[test]
fn reset_restarts_the_backend_when_it_can_reset() {
    let (mut fs, backend) = device(Behaviour::default());
    assert!(fs.reset(), "a device never started resets trivially");
    activate(&mut fs).0.unwrap();
    assert!(fs.reset());
    let (again, irq, _mem) = activate(&mut fs);
    again.unwrap();
    assert_eq!(irq.status(), INT_VRING);
    drop(fs);
    let log = codes(&backend.join().unwrap());
    let count = |r: FrontendReq| log.iter().filter(|&&c| c == r as u32).count();
    assert_eq!(count(FrontendReq::GET_VRING_BASE), NUM_QUEUES);
    assert_eq!(count(FrontendReq::RESET_DEVICE), 1);
    assert_eq!(count(FrontendReq::SET_MEM_TABLE), 2, "started twice");
}

#[test]
fn reset_without_reset_device_stops_the_rings_and_declines_a_restart() {
    let (mut fs, backend) = device(Behaviour {
        protocol: VhostUserProtocolFeatures::REPLY_ACK,
        ..Behaviour::default()
    });
    activate(&mut fs).0.unwrap();
    assert!(!fs.reset(), "the backend cannot reset its state");
    let (again, _, _) = activate(&mut fs);
    assert!(matches!(again, Err(ActivateError::Backend(_))));
    drop(fs);
    let log = codes(&backend.join().unwrap());
    let stops = log
        .iter()
        .filter(|&&c| c == FrontendReq::GET_VRING_BASE as u32)
        .count();
    assert_eq!(stops, NUM_QUEUES);
}

#[test]
fn backend_hang_up_breaks_the_device_without_panic() {
    // The fake hangs up after the 5 setup requests.
    let (mut fs, backend) = device(Behaviour {
        hang_up_after: Some(5),
        ..Behaviour::default()
    });
    backend.join().unwrap();
    let sock = fs.frontend.as_raw_fd();
    assert!(fs.backend_fds().contains(&sock));
    fs.process_backend(sock);
    assert!(fs.is_broken());
    assert!(
        fs.backend_fds().is_empty(),
        "a dead socket is no longer polled"
    );
    let (result, _, _) = activate(&mut fs);
    assert!(matches!(result, Err(ActivateError::Backend(_))));
}

#[test]
fn backend_refusal_at_activation_breaks_the_device() {
    let (mut fs, backend) = device(Behaviour {
        refuse: Some(FrontendReq::SET_VRING_KICK),
        ..Behaviour::default()
    });
    let (result, _, _) = activate(&mut fs);
    let Err(ActivateError::Backend(why)) = result else {
        panic!("activation must fail");
    };
    assert!(why.contains("SET_VRING_KICK"), "{why}");
    assert!(fs.is_broken());
    drop(fs);
    backend.join().unwrap();
}

#[test]
fn bad_ring_address_fails_activation_but_not_the_device() {
    let (mut fs, backend) = device(Behaviour::default());
    let mem = memory::create(16).unwrap().mem;
    let mut bad = TestQueue::new(&mem, 0x10_0000, 16).queue();
    virtio_queue::QueueT::set_desc_table_address(&mut bad, Some(0xff00_0000), Some(0));
    let queues = vec![bad, TestQueue::new(&mem, 0x20_0000, 16).queue()];
    let irq = Arc::new(Interrupt::new(EventFd::new(0).unwrap()));
    let r = fs.activate(mem, queues, irq);
    assert!(matches!(r, Err(ActivateError::Backend(_))));
    assert!(!fs.is_broken());
    let (ok, _, _) = activate(&mut fs);
    ok.unwrap();
    drop(fs);
    backend.join().unwrap();
}
