//! The virtio-net device: one RX/TX queue pair moving frames between the guest and its tap.
//! Everything in the queues is hostile: chains are bounded by the queue, a TX frame above
//! [`MAX_FRAME_LEN`] is dropped, at most one received frame waits in hull-vmm (when the guest
//! posts no RX buffers the tap is no longer polled, so frames stay in, or are dropped by, the
//! host kernel), and each event serves a bounded number of frames so a flood cannot starve
//! the other devices.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use virtio_queue::{Queue, QueueOwnedT, QueueT, Reader, Writer};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::tap::{self, Tap, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, VNET_HDR_LEN};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, DeviceType, VirtioCommon, VirtioDevice,
};
use crate::memory::GuestMem;

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest frame (after the virtio-net header) either direction carries: a 64 KiB TSO
/// segment plus link headers. Larger TX frames are dropped.
pub const MAX_FRAME_LEN: usize = 65562;
/// Frames served per event and direction.
pub const EVENT_BUDGET: usize = 64;
const RX: usize = 0;
const TX: usize = 1;
const BUF_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;

/// Device handles checksums of guest frames (partial checksums on TX).
pub const F_CSUM: u64 = 1 << 0;
/// Guest handles partial checksums on RX.
pub const F_GUEST_CSUM: u64 = 1 << 1;
/// The device reports an MTU.
pub const F_MTU: u64 = 1 << 3;
/// The device reports a MAC.
pub const F_MAC: u64 = 1 << 5;
/// Guest takes TSO over IPv4 on RX.
pub const F_GUEST_TSO4: u64 = 1 << 7;
/// Guest takes TSO over IPv6 on RX.
pub const F_GUEST_TSO6: u64 = 1 << 8;
/// Device takes TSO over IPv4 on TX.
pub const F_HOST_TSO4: u64 = 1 << 11;
/// Device takes TSO over IPv6 on TX.
pub const F_HOST_TSO6: u64 = 1 << 12;
/// Received frames may span several buffers.
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// The configuration reports link status.
pub const F_STATUS: u64 = 1 << 16;

const HDR_F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;
const LINK_UP: u16 = 1;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The tap descriptor was refused.
    #[error(transparent)]
    Tap(#[from] tap::Error),
    /// The MAC is not a unicast address.
    #[error(transparent)]
    Mac(#[from] hull_protocol::vm::VmConfigError),
    /// An eventfd or the poll set could not be created.
    #[error("cannot create the network device's events")]
    Events(#[source] std::io::Error),
}

/// Frame counters, for tests and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Frames handed to the guest.
    pub rx_frames: u64,
    /// Frames read from the tap and not delivered (no room in one chain, bad chains).
    pub rx_dropped: u64,
    /// Frames written to the tap.
    pub tx_frames: u64,
    /// Guest frames dropped (malformed, too large, unacked offload, tap error).
    pub tx_dropped: u64,
}

/// A virtio-net device over a tap.
pub struct Net {
    common: VirtioCommon,
    tap: Tap,
    /// Holds the tap while the guest can take frames; its own descriptor is what the event
    /// loop polls, so a stalled RX queue takes the tap out of the loop's sight.
    poll: Epoll,
    polled: bool,
    config: [u8; 12],
    /// The received frame waiting for RX buffers: `rx_buf[..rx_len]` (0: none).
    rx_buf: Vec<u8>,
    rx_len: usize,
    tx_buf: Vec<u8>,
    stats: Stats,
}

impl Net {
    /// A device on inherited tap descriptor `tap_fd` with `mac` and `mtu`.
    pub fn new(tap_fd: RawFd, mac: &str, mtu: u16) -> Result<Self, Error> {
        let mac = hull_protocol::vm::parse_mac(mac)?;
        Self::with_tap(Tap::from_inherited(tap_fd)?, mac, mtu)
    }

    /// A device on `tap` (a real tap, or a socket stand-in for tests and fuzzing). Offers the
    /// guest offloads only where the tap accepts them.
    pub fn with_tap(tap: Tap, mac: [u8; 6], mtu: u16) -> Result<Self, Error> {
        let tun = tap.probe_offloads();
        let mut features = F_MAC | F_MTU | F_STATUS | F_MRG_RXBUF | F_CSUM;
        features |= F_HOST_TSO4 | F_HOST_TSO6;
        if tun & TUN_F_CSUM != 0 {
            features |= F_GUEST_CSUM;
        }
        if tun & TUN_F_TSO4 != 0 {
            features |= F_GUEST_TSO4;
        }
        if tun & TUN_F_TSO6 != 0 {
            features |= F_GUEST_TSO6;
        }
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&mtu.to_le_bytes());
        Ok(Net {
            common: VirtioCommon::new(DeviceType::Net, features, &[QUEUE_SIZE; 2])
                .map_err(Error::Events)?,
            tap,
            poll: Epoll::new().map_err(Error::Events)?,
            polled: false,
            config,
            rx_buf: vec![0; BUF_LEN],
            rx_len: 0,
            tx_buf: vec![0; BUF_LEN],
            stats: Stats::default(),
        })
    }

    /// Frame counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether the tap is being polled (false while the guest's RX queue is full).
    pub fn polls_tap(&self) -> bool {
        self.polled
    }

    fn set_polled(&mut self, on: bool) {
        if self.polled == on {
            return;
        }
        let op = if on {
            ControlOperation::Add
        } else {
            ControlOperation::Delete
        };
        let fd = self.tap.fd().as_raw_fd();
        match self.poll.ctl(op, fd, EpollEvent::new(EventSet::IN, 0)) {
            Ok(()) => self.polled = on,
            Err(e) => {
                tracing::warn!(tap = %self.tap.name(), error = %e, "cannot change tap polling")
            }
        }
    }

    /// Offloads the tap may use towards the guest, from the acked features.
    fn tun_offloads(&self) -> u32 {
        if !self.common.has_acked(F_GUEST_CSUM) {
            return 0;
        }
        let mut f = TUN_F_CSUM;
        if self.common.has_acked(F_GUEST_TSO4) {
            f |= TUN_F_TSO4;
        }
        if self.common.has_acked(F_GUEST_TSO6) {
            f |= TUN_F_TSO6;
        }
        f
    }

    /// Sends up to [`EVENT_BUDGET`] guest frames to the tap; when the budget runs out the
    /// device re-arms its TX event so the loop serves everything else first. Returns how many
    /// chains were taken.
    pub fn process_tx(&mut self) -> usize {
        let acked = self.common.acked();
        let counters = self.common.counters().clone();
        let Some(a) = self.common.active_mut() else {
            return 0;
        };
        let mut taken = 0;
        while taken < EVENT_BUDGET {
            let Some(chain) = a.queues[TX].pop_descriptor_chain(&a.mem) else {
                break;
            };
            taken += 1;
            let head = chain.head_index();
            let sent = read_tx_frame(&a.mem, chain, &mut self.tx_buf, acked)
                .map(|len| self.tap.write(&self.tx_buf[..len]).map(|_| len));
            match sent {
                Some(Ok(len)) => {
                    self.stats.tx_frames += 1;
                    counters.add_tx_bytes((len - VNET_HDR_LEN) as u64);
                }
                Some(Err(e)) => {
                    self.stats.tx_dropped += 1;
                    tracing::debug!(tap = %self.tap.name(), error = %e, "virtio-net: tap write failed");
                }
                None => self.stats.tx_dropped += 1,
            }
            if a.queues[TX].add_used(&a.mem, head, 0).is_err() {
                tracing::warn!(tap = %self.tap.name(), "virtio-net: cannot return a TX buffer");
            }
        }
        if taken == EVENT_BUDGET {
            self.common.rearm(TX);
        }
        if taken > 0 {
            self.common.signal_used();
        }
        taken
    }

    /// Moves up to [`EVENT_BUDGET`] frames from the tap to the guest. When the guest has no
    /// room for the next frame, it waits here (the only one) and the tap is no longer polled
    /// until the guest posts buffers. Returns how many frames were delivered or dropped.
    pub fn process_rx(&mut self) -> usize {
        let mrg = self.common.has_acked(F_MRG_RXBUF);
        let counters = self.common.counters().clone();
        let Some(a) = self.common.active_mut() else {
            return 0;
        };
        let mut done = 0;
        let mut used = false;
        let mut stalled = false;
        while done < EVENT_BUDGET {
            if self.rx_len == 0 {
                match self.tap.read(&mut self.rx_buf) {
                    Ok(n) if n >= VNET_HDR_LEN => self.rx_len = n,
                    Ok(_) => {
                        self.stats.rx_dropped += 1;
                        done += 1;
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        // A tap that keeps failing must not spin the loop: stop polling until
                        // the guest's next RX kick.
                        tracing::warn!(tap = %self.tap.name(), error = %e, "virtio-net: tap read failed");
                        stalled = true;
                        break;
                    }
                }
            }
            let frame = &mut self.rx_buf[..self.rx_len];
            match write_rx_frame(&a.mem, &mut a.queues[RX], frame, mrg) {
                Delivery::NoRoom => {
                    stalled = true;
                    break;
                }
                Delivery::Done { dropped, returned } => {
                    if dropped {
                        self.stats.rx_dropped += 1;
                    } else {
                        self.stats.rx_frames += 1;
                        counters.add_rx_bytes((self.rx_len - VNET_HDR_LEN) as u64);
                    }
                    used |= returned;
                    self.rx_len = 0;
                    done += 1;
                }
            }
        }
        if used {
            self.common.signal_used();
        }
        self.set_polled(!stalled);
        done
    }
}

/// Reads one TX frame (virtio-net header first) into `buf`; None for a chain that is
/// malformed, shorter than the header, larger than [`MAX_FRAME_LEN`], or asks for an offload
/// the driver did not ack.
fn read_tx_frame<M>(
    mem: &GuestMem,
    chain: virtio_queue::DescriptorChain<M>,
    buf: &mut [u8],
    acked: u64,
) -> Option<usize>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory + Sized,
{
    let mut reader = Reader::new(mem, chain).ok()?;
    let len = reader.available_bytes();
    if !(VNET_HDR_LEN..=buf.len()).contains(&len) {
        return None;
    }
    reader.read_exact(&mut buf[..len]).ok()?;
    let needs_csum = buf[0] & HDR_F_NEEDS_CSUM != 0;
    if needs_csum && acked & F_CSUM == 0 {
        return None;
    }
    let gso_ok = match buf[1] & !GSO_ECN {
        GSO_NONE => true,
        GSO_TCPV4 => acked & F_HOST_TSO4 != 0,
        GSO_TCPV6 => acked & F_HOST_TSO6 != 0,
        _ => false,
    };
    gso_ok.then_some(len)
}

/// What became of a received frame.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    /// Not enough buffers yet; nothing was taken from the queue.
    NoRoom,
    /// The frame is gone: delivered, or dropped (`dropped`); `returned` when buffers went to
    /// the used ring.
    Done { dropped: bool, returned: bool },
}

/// Writes `frame` (header first) into the guest's RX buffers: one chain, or with mergeable
/// buffers as many as it needs (at most the queue's size), their count in the header.
fn write_rx_frame(mem: &GuestMem, queue: &mut Queue, frame: &mut [u8], mrg: bool) -> Delivery {
    let mut chains: Vec<(u16, Writer<'_>)> = Vec::new();
    let mut room = 0usize;
    while room < frame.len() && (mrg || chains.is_empty()) {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            for _ in 0..chains.len() {
                queue.go_to_previous_position();
            }
            return Delivery::NoRoom;
        };
        let head = chain.head_index();
        let need = if chains.is_empty() { VNET_HDR_LEN } else { 1 };
        match Writer::new(mem, chain) {
            Ok(w) if w.available_bytes() >= need => {
                room = room.saturating_add(w.available_bytes());
                chains.push((head, w));
            }
            _ => {
                // A malformed or useless chain: it and the ones gathered so far go back empty
                // (the driver counts a length error) and the frame is dropped.
                for (h, _) in &chains {
                    let _ = queue.add_used(mem, *h, 0);
                }
                let _ = queue.add_used(mem, head, 0);
                return Delivery::Done {
                    dropped: true,
                    returned: true,
                };
            }
        }
    }
    if room < frame.len() {
        // Without mergeable buffers the frame must fit one chain: drop it, keep the chain.
        queue.go_to_previous_position();
        return Delivery::Done {
            dropped: true,
            returned: false,
        };
    }
    let count = chains.len() as u16;
    frame[10..12].copy_from_slice(&count.to_le_bytes());
    let mut off = 0;
    for (head, mut w) in chains {
        let n = w.available_bytes().min(frame.len() - off);
        let written = if w.write_all(&frame[off..off + n]).is_ok() {
            n
        } else {
            w.bytes_written()
        };
        off += n;
        let _ = queue.add_used(mem, head, written as u32);
    }
    Delivery::Done {
        dropped: false,
        returned: true,
    }
}

impl VirtioDevice for Net {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }
    fn on_activate(&mut self) -> Result<(), ActivateError> {
        let offloads = self.tun_offloads();
        self.tap.set_offloads(offloads).map_err(|e| {
            ActivateError::Backend(format!(
                "tap {}: TUNSETOFFLOAD {offloads:#x}: {e}",
                self.tap.name()
            ))
        })?;
        tracing::info!(tap = %self.tap.name(), features = format_args!("{:#x}", self.common.acked()),
            offloads = format_args!("{offloads:#x}"), "virtio-net: started");
        self.rx_len = 0;
        self.set_polled(true);
        Ok(())
    }
    fn on_reset(&mut self) -> bool {
        self.set_polled(false);
        self.rx_len = 0;
        if let Err(e) = self.tap.set_offloads(0) {
            tracing::warn!(tap = %self.tap.name(), error = %e, "cannot clear the tap's offloads");
        }
        true
    }
    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.poll.as_raw_fd()]
    }
    fn process_queue(&mut self, index: usize) {
        match index {
            RX => {
                // The guest posted buffers: deliver what waits, then watch the tap again.
                self.process_rx();
            }
            TX => {
                self.process_tx();
            }
            _ => {}
        }
    }
    fn process_backend(&mut self, _fd: RawFd) {
        self.process_rx();
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
