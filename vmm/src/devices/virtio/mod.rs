//! The virtio device model shared by every device: the device trait the MMIO transport drives
//! (its shared state lives in `common.rs`), the interrupt line, and the constants of the virtio
//! 1.x spec the devices use.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub use common::{DeviceType, FeatureError, VirtioCommon};

use crate::memory::GuestMem;

pub mod balloon;
pub mod block;
pub mod common;
pub mod counters;
pub mod fs;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;

/// Feature bit: the device follows virtio 1.x (mandatory for MMIO version 2).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

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
    /// The device already runs (the driver must reset it first).
    #[error("the device is already running")]
    AlreadyActive,
    /// The backend could not start.
    #[error("device backend failed to start: {0}")]
    Backend(String),
}

/// A device's interrupt: the ISR status bits plus the irqfd that raises the GSI.
pub struct Interrupt {
    status: AtomicU32,
    /// Bits that read as pending whatever the driver acknowledged: those of a
    /// backend that raises the line through the irqfd itself (vhost-user),
    /// which cannot set `status`.
    always: AtomicU32,
    evt: EventFd,
}

impl Interrupt {
    /// An interrupt raised through `evt` (an irqfd).
    pub fn new(evt: EventFd) -> Self {
        Interrupt {
            status: AtomicU32::new(0),
            always: AtomicU32::new(0),
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
        self.status.load(Ordering::SeqCst) | self.always.load(Ordering::SeqCst)
    }

    /// Clears the acknowledged bits (never those of [`Interrupt::set_always`]).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Makes `bits` read as pending until set again (0 ends it).
    pub fn set_always(&self, bits: u32) {
        self.always.store(bits, Ordering::SeqCst);
    }

    /// The irqfd, for a backend that raises the line itself.
    pub fn irqfd(&self) -> &EventFd {
        &self.evt
    }
}

/// A virtio device as the transport sees it: its shared state in a [`VirtioCommon`] plus what
/// is its own (configuration space, queue processing, backend). Queue processing happens on the
/// event loop.
pub trait VirtioDevice: Send {
    /// The shared state.
    fn common(&self) -> &VirtioCommon;
    /// The shared state, mutably.
    fn common_mut(&mut self) -> &mut VirtioCommon;
    /// Reads the device configuration space; out-of-range bytes read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space; most devices ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Device-specific start, called once the shared state holds the driver's queues. An error
    /// returns the device to inactive.
    fn on_activate(&mut self) -> Result<(), ActivateError> {
        Ok(())
    }
    /// Device-specific stop after a driver reset of a running device; false if the device
    /// cannot start again (it then stays stopped until the VM restarts).
    fn on_reset(&mut self) -> bool {
        true
    }
    /// Whether the event loop reads the queue events and calls `process_queue`. A device whose
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

    /// Starts the device with the driver's queues (the shared rules, then `on_activate`).
    fn activate(
        &mut self,
        mem: GuestMem,
        queues: Vec<Queue>,
        interrupt: std::sync::Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        self.common_mut().activate(mem, queues, interrupt)?;
        let started = self.on_activate();
        if started.is_err() {
            self.common_mut().reset();
        }
        started
    }
    /// Stops the device after a driver reset and returns it to inactive; false if it cannot
    /// start again.
    fn reset(&mut self) -> bool {
        let restartable = !self.common().is_activated() || self.on_reset();
        self.common_mut().reset();
        restartable
    }
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
        i.set_always(INT_VRING);
        i.ack(u32::MAX);
        assert_eq!(i.status(), INT_VRING, "an acknowledgement leaves it");
        i.set_always(0);
        assert_eq!(i.status(), 0);
    }
}
