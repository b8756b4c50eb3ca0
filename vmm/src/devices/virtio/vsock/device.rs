//! The virtio-vsock device: moves packets between the guest's RX/TX queues and the muxer.
//! Every descriptor chain is checked; a malformed one is returned unused, never followed
//! outside guest memory.

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::path::Path;

use virtio_queue::{QueueOwnedT, QueueT, Reader, Writer};

use super::muxer::{self, Muxer, MAX_RX_PAYLOAD};
use super::packet::{Header, Packet, HDR_LEN, OP_RW};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, DeviceType, VirtioCommon, VirtioDevice,
};
use crate::memory::GuestMem;

/// Queue size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const EVT: usize = 2;
/// Descriptor chains handled per event, both queues together.
pub const EVENT_BUDGET: usize = 64;

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend socket could not be created.
    #[error(transparent)]
    Backend(#[from] muxer::Error),
    /// An eventfd could not be created.
    #[error("cannot create vsock queue events")]
    EventFd(#[source] std::io::Error),
}

/// A vsock device with guest CID `cid`.
pub struct Vsock {
    common: VirtioCommon,
    cid: u64,
    muxer: Muxer,
}

impl Vsock {
    /// Creates the device and its listening socket at `uds`.
    pub fn new(cid: u64, uds: &Path) -> Result<Self, Error> {
        let common =
            VirtioCommon::new(DeviceType::Vsock, 0, &[QUEUE_SIZE; 3]).map_err(Error::EventFd)?;
        Ok(Vsock {
            common,
            cid,
            muxer: Muxer::new(cid, uds)?,
        })
    }

    /// The muxer, for tests and statistics.
    pub fn muxer(&self) -> &Muxer {
        &self.muxer
    }

    /// Takes the packets the guest queued on TX, at most `budget` chains (each one taken
    /// counts down `budget`). Returns how many chains were used.
    pub fn process_tx(&mut self, budget: &mut usize) -> usize {
        let counters = self.common.counters().clone();
        let Some(a) = self.common.active_mut() else {
            return 0;
        };
        let mut used = 0;
        while *budget > 0 && !self.muxer.control_full() {
            let Some(chain) = a.queues[TX].pop_descriptor_chain(&a.mem) else {
                break;
            };
            *budget -= 1;
            let head = chain.head_index();
            if let Some(pkt) = read_packet(&a.mem, chain) {
                counters.add_tx_bytes(pkt.data.len() as u64);
                self.muxer.handle_guest_packet(pkt);
            }
            if a.queues[TX].add_used(&a.mem, head, 0).is_err() {
                tracing::warn!("vsock: cannot return a TX buffer");
            }
            used += 1;
        }
        used
    }

    /// Fills guest RX buffers with whatever the muxer has, at most `budget` chains. Returns
    /// how many chains were used.
    pub fn process_rx(&mut self, budget: &mut usize) -> usize {
        let counters = self.common.counters().clone();
        let Some(a) = self.common.active_mut() else {
            return 0;
        };
        let mut used = 0;
        while *budget > 0 && self.muxer.has_rx() {
            let Some(chain) = a.queues[RX].pop_descriptor_chain(&a.mem) else {
                break;
            };
            *budget -= 1;
            used += 1;
            let head = chain.head_index();
            let mut writer = match Writer::new(&a.mem, chain) {
                Ok(w) if w.available_bytes() >= HDR_LEN => w,
                _ => {
                    // Malformed or too small: hand it back empty.
                    let _ = a.queues[RX].add_used(&a.mem, head, 0);
                    continue;
                }
            };
            let room = (writer.available_bytes() - HDR_LEN).min(MAX_RX_PAYLOAD);
            let Some(pkt) = self.muxer.next_rx_packet(room) else {
                // Nothing to send after all: the chain goes back, and so does its share.
                a.queues[RX].go_to_previous_position();
                used -= 1;
                *budget += 1;
                break;
            };
            let mut hdr = pkt.hdr;
            hdr.len = pkt.data.len() as u32;
            tracing::debug!(
                op = hdr.op,
                src = hdr.src_port,
                dst = hdr.dst_port,
                len = hdr.len,
                flags = hdr.flags,
                "vsock: rx"
            );
            let ok = writer.write_all(&hdr.bytes()).is_ok() && writer.write_all(&pkt.data).is_ok();
            let len = if ok {
                counters.add_rx_bytes(pkt.data.len() as u64);
                writer.bytes_written() as u32
            } else {
                0
            };
            let _ = a.queues[RX].add_used(&a.mem, head, len);
        }
        used
    }

    /// Moves packets both ways, at most [`EVENT_BUDGET`] chains in all. When the budget runs
    /// out with work left, the device kicks its own TX event so the event loop comes back after
    /// serving everything else that is ready (other devices, signals, the control socket).
    fn pump(&mut self) {
        let mut budget = EVENT_BUDGET;
        let mut used = 0;
        loop {
            let was_full = self.muxer.control_full();
            let tx = self.process_tx(&mut budget);
            let rx = self.process_rx(&mut budget);
            used += tx + rx;
            // Go round again while TX moves, or while RX made room for a stalled TX.
            if budget == 0 || (tx == 0 && !(was_full && rx > 0)) {
                break;
            }
        }
        if budget == 0 {
            self.common.rearm(TX);
        }
        if used > 0 {
            self.common.signal_used();
        }
    }
}

/// Reads one TX packet; None for a malformed chain or header.
fn read_packet<M>(mem: &GuestMem, chain: virtio_queue::DescriptorChain<M>) -> Option<Packet>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory + Sized,
{
    let mut reader = Reader::new(mem, chain).ok()?;
    let mut raw = [0u8; HDR_LEN];
    reader.read_exact(&mut raw).ok()?;
    let hdr = Header::parse(&raw);
    let len = hdr.len as usize;
    if hdr.op != OP_RW && len != 0 {
        return None;
    }
    if len > muxer::TX_BUF_SIZE as usize || len > reader.available_bytes() {
        return None;
    }
    let mut data = vec![0u8; len];
    reader.read_exact(&mut data).ok()?;
    Some(Packet { hdr, data })
}

impl VirtioDevice for Vsock {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.cid.to_le_bytes(), offset, data)
    }
    fn on_activate(&mut self) -> Result<(), ActivateError> {
        self.pump();
        Ok(())
    }
    fn on_reset(&mut self) -> bool {
        self.muxer.reset_all();
        true
    }
    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.muxer.poll_fd()]
    }
    fn process_queue(&mut self, index: usize) {
        if index != EVT {
            self.pump();
        }
    }
    fn process_backend(&mut self, _fd: RawFd) {
        self.muxer.process_events();
        self.pump();
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;
