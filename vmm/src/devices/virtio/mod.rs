//! The virtio device model shared by every device: the device trait the MMIO transport drives,
//! the interrupt line, and the constants of the virtio 1.x spec the devices use.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMem;

pub mod block;
pub mod fs;
pub mod mmio;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;

/// Feature bit: the device follows virtio 1.x (mandatory for MMIO version 2).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Device type of virtio-blk.
pub const TYPE_BLOCK: u32 = 2;
/// Device type of virtio-vsock.
pub const TYPE_VSOCK: u32 = 19;
/// Device type of virtio-fs.
pub const TYPE_FS: u32 = 26;

/// Interrupt status bit: a used ring changed.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

/// Errors while activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up fewer or invalid queues.
    #[error("invalid queue configuration")]
    BadQueues,
    /// The backend could not start.
    #[error("device backend failed to start: {0}")]
    Backend(String),
}

/// A device's interrupt: the ISR status bits plus the irqfd that raises the GSI.
pub struct Interrupt {
    status: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    /// An interrupt raised through `evt` (an irqfd).
    pub fn new(evt: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            evt,
        }
    }

    /// Sets `bits` in the status and raises the line.
    pub fn trigger(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::warn!(error = %e, "cannot raise a virtio interrupt");
        }
    }

    /// The pending status bits.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// Clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
}

/// A virtio device as the transport sees it. Queue processing happens on the event loop.
pub trait VirtioDevice: Send {
    /// Virtio device type.
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered feature bits.
    fn features(&self) -> u64;
    /// Records the features the driver accepted (a subset of `features()`).
    fn ack_features(&mut self, features: u64);
    /// Reads the device configuration space; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space; most devices ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Starts the device with the driver's queues.
    fn activate(
        &mut self,
        mem: GuestMem,
        queues: Vec<Queue>,
        interrupt: std::sync::Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// Stops the device after a driver reset; returns false if it cannot be reset (it then
    /// stays broken until the VM restarts).
    fn reset(&mut self) -> bool {
        false
    }
    /// One eventfd per queue, signalled when the driver notifies the queue.
    fn queue_events(&self) -> &[EventFd];
    /// Whether the event loop reads `queue_events` and calls `process_queue`. A device whose
    /// queues an external backend serves (vhost-user) answers false: the backend reads the
    /// eventfds itself, and a second reader would steal its notifications.
    fn polls_queue_events(&self) -> bool {
        true
    }
    /// Extra descriptors the event loop polls for this device (backend sockets). The loop asks
    /// again after each `process_backend(fd)`: a descriptor no longer listed is dropped from the
    /// poll set (a dead backend socket must not wake the loop forever).
    fn backend_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// Handles a notification of queue `index`.
    fn process_queue(&mut self, index: usize);
    /// Handles readiness of backend descriptor `fd`.
    fn process_backend(&mut self, _fd: RawFd) {}
}

/// The bytes of `config` at `offset`, zero-padded: the common `read_config` helper.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start < config.len() {
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn interrupt_status_and_ack() {
        let evt = EventFd::new(0).unwrap();
        let i = Interrupt::new(evt.try_clone().unwrap());
        i.trigger(INT_VRING);
        i.trigger(INT_CONFIG);
        assert_eq!(i.status(), INT_VRING | INT_CONFIG);
        i.ack(INT_VRING);
        assert_eq!(i.status(), INT_CONFIG);
        assert_eq!(evt.read().unwrap(), 2);
    }
}
