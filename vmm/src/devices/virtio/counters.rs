//! Per-device counters for the metrics: guest notifications per queue, used-ring interrupts
//! and payload bytes. Plain relaxed atomics written by the device code on the event loop and
//! read by the control socket through a shared handle, so a stats request never takes a
//! device's lock. Nothing here is read back from guest memory: the guest cannot set a figure,
//! only cause the device to count.

use std::sync::atomic::{AtomicU64, Ordering};

use hull_protocol::control::{DeviceBytes, DeviceKind, DeviceStats};

use super::DeviceType;

/// What hull-vmm sees of a device's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// hull-vmm serves the queues itself: kicks, interrupts and bytes.
    Everything,
    /// Another process serves the queues (vhost-user): only the interrupts it asks hull-vmm
    /// to raise.
    InterruptsOnly,
}

/// The counters of one device.
#[derive(Debug)]
pub struct DeviceCounters {
    kind: DeviceKind,
    seen: Seen,
    notifications: Vec<AtomicU64>,
    /// Self-notifications ([`super::VirtioCommon::rearm`]) not yet read back with the kicks.
    rearms: Vec<AtomicU64>,
    interrupts: AtomicU64,
    rx_bytes: AtomicU64,
    tx_bytes: AtomicU64,
}

impl DeviceCounters {
    /// Zeroed counters for a device of `device_type` with `queues` queues.
    pub fn new(device_type: DeviceType, queues: usize, seen: Seen) -> Self {
        let zeros = || (0..queues).map(|_| AtomicU64::new(0)).collect();
        DeviceCounters {
            kind: match device_type {
                DeviceType::Net => DeviceKind::Net,
                DeviceType::Block => DeviceKind::Block,
                DeviceType::Balloon => DeviceKind::Balloon,
                DeviceType::Vsock => DeviceKind::Vsock,
                DeviceType::Fs => DeviceKind::Fs,
            },
            seen,
            notifications: zeros(),
            rearms: zeros(),
            interrupts: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
        }
    }

    /// The device's kind.
    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// Notes that the device signalled queue `queue` itself (so the next read of its event
    /// holds one count that is not the guest's).
    pub fn rearmed(&self, queue: usize) {
        if let Some(r) = self.rearms.get(queue) {
            r.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `signalled`, the value read from queue `queue`'s event, minus the device's own
    /// re-arms since the last read.
    pub fn notified(&self, queue: usize, signalled: u64) {
        let (Some(n), Some(r)) = (self.notifications.get(queue), self.rearms.get(queue)) else {
            return;
        };
        let own = r.swap(0, Ordering::Relaxed);
        n.fetch_add(signalled.saturating_sub(own), Ordering::Relaxed);
    }

    /// Counts one used-ring interrupt raised.
    pub fn interrupted(&self) {
        self.interrupts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` payload bytes written into guest buffers.
    pub fn add_rx_bytes(&self, n: u64) {
        self.rx_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` payload bytes taken from guest buffers.
    pub fn add_tx_bytes(&self, n: u64) {
        self.tx_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// The figures now, for the device at place `index` among those of its kind.
    pub fn snapshot(&self, index: u32) -> DeviceStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let everything = self.seen == Seen::Everything;
        DeviceStats {
            kind: self.kind,
            index,
            queue_notifications: if everything {
                self.notifications.iter().map(load).collect()
            } else {
                Vec::new()
            },
            interrupts: load(&self.interrupts),
            bytes: everything.then(|| DeviceBytes {
                rx: load(&self.rx_bytes),
                tx: load(&self.tx_bytes),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rearms_are_not_counted_as_guest_kicks() {
        let c = DeviceCounters::new(DeviceType::Vsock, 3, Seen::Everything);
        c.notified(1, 4);
        c.rearmed(1);
        c.notified(1, 1);
        c.rearmed(1);
        c.notified(1, 3);
        c.notified(9, 5);
        c.rearmed(9);
        c.interrupted();
        c.add_rx_bytes(10);
        c.add_tx_bytes(7);
        let s = c.snapshot(0);
        assert_eq!(s.kind, DeviceKind::Vsock);
        assert_eq!(s.queue_notifications, [0, 6, 0]);
        assert_eq!(s.interrupts, 1);
        assert_eq!(s.bytes, Some(DeviceBytes { rx: 10, tx: 7 }));
    }

    #[test]
    fn an_external_backend_reports_interrupts_only() {
        let c = DeviceCounters::new(DeviceType::Fs, 2, Seen::InterruptsOnly);
        c.interrupted();
        c.interrupted();
        let s = c.snapshot(1);
        assert_eq!((s.kind, s.index, s.interrupts), (DeviceKind::Fs, 1, 2));
        assert!(s.queue_notifications.is_empty());
        assert_eq!(s.bytes, None);
    }
}
