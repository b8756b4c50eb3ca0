//! The state every virtio device shares: its type, the features it offers and the driver
//! acked, its queue notification eventfds, its counters, and whether it runs (with the driver's
//! queues, guest memory and interrupt) or waits for the driver. Devices keep only what is theirs.

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::counters::{DeviceCounters, Seen};
use super::{ActivateError, Interrupt, INT_CONFIG, INT_VRING, VIRTIO_F_VERSION_1};
use crate::memory::GuestMem;

/// Virtio device types (virtio 1.x, section 5) Hull implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum DeviceType {
    /// virtio-net.
    Net = 1,
    /// virtio-blk.
    Block = 2,
    /// virtio-balloon (free page reporting only).
    Balloon = 5,
    /// virtio-vsock.
    Vsock = 19,
    /// virtio-fs.
    Fs = 26,
}

impl DeviceType {
    /// The DeviceID register value.
    pub fn id(self) -> u32 {
        self as u32
    }
}

impl std::fmt::Display for DeviceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceType::Net => "virtio-net",
            DeviceType::Block => "virtio-blk",
            DeviceType::Balloon => "virtio-balloon",
            DeviceType::Vsock => "virtio-vsock",
            DeviceType::Fs => "virtio-fs",
        })
    }
}

/// Why the driver's feature selection was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FeatureError {
    /// The driver acked bits the device never offered.
    #[error("driver acked features the device does not offer: {0:#x}")]
    NotOffered(u64),
    /// The driver did not ack VIRTIO_F_VERSION_1 (a legacy driver).
    #[error("driver did not ack VIRTIO_F_VERSION_1")]
    NoVersion1,
    /// Features cannot change while the device runs.
    #[error("features cannot change while the device runs")]
    Active,
}

/// What a running device works with: the driver's queues in guest memory and its interrupt.
pub struct Activated {
    /// Guest memory the rings and buffers live in.
    pub mem: GuestMem,
    /// The queues, in the device's order.
    pub queues: Vec<Queue>,
    /// The device's interrupt line.
    pub interrupt: Arc<Interrupt>,
}

/// Where a device is in its life.
pub enum DeviceState {
    /// Not started, or reset by the driver.
    Inactive,
    /// Started by the driver.
    Activated(Activated),
}

/// The state every virtio device holds, with the rules of feature negotiation and activation.
pub struct VirtioCommon {
    device_type: DeviceType,
    offered: u64,
    acked: u64,
    queue_sizes: Vec<u16>,
    queue_events: Vec<EventFd>,
    counters: Arc<DeviceCounters>,
    state: DeviceState,
    /// The ConfigGeneration register: changes whenever the configuration space does, so a
    /// driver reading it in several accesses sees a torn read and reads again.
    config_generation: u32,
}

/// `word` placed in the 32-bit page `page` of `current` (pages above 1 do not exist: `current`
/// is returned unchanged), as the transport's feature-select registers address features.
pub fn set_feature_page(current: u64, page: u32, word: u32) -> u64 {
    match page {
        0 => (current & !0xffff_ffff) | u64::from(word),
        1 => (current & 0xffff_ffff) | (u64::from(word) << 32),
        _ => current,
    }
}

/// The 32-bit page `page` of `features`; zero beyond page 1.
pub fn feature_page(features: u64, page: u32) -> u32 {
    match page {
        0 => features as u32,
        1 => (features >> 32) as u32,
        _ => 0,
    }
}

impl VirtioCommon {
    /// An inactive device of `device_type` offering `offered` (VERSION_1 is always added), with
    /// one queue per entry of `queue_sizes` (powers of two) and a non-blocking queue
    /// notification eventfd for each.
    pub fn new(
        device_type: DeviceType,
        offered: u64,
        queue_sizes: &[u16],
    ) -> std::io::Result<Self> {
        let queue_events = queue_sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(VirtioCommon {
            device_type,
            offered: offered | VIRTIO_F_VERSION_1,
            acked: 0,
            queue_sizes: queue_sizes.to_vec(),
            queue_events,
            counters: Arc::new(DeviceCounters::new(
                device_type,
                queue_sizes.len(),
                Seen::Everything,
            )),
            state: DeviceState::Inactive,
            config_generation: 0,
        })
    }

    /// The same device, its queues served by another process (vhost-user): hull-vmm counts
    /// only the interrupts it raises for it.
    pub fn served_externally(mut self) -> Self {
        self.counters = Arc::new(DeviceCounters::new(
            self.device_type,
            self.queue_sizes.len(),
            Seen::InterruptsOnly,
        ));
        self
    }

    /// The device's counters, shared with the control socket.
    pub fn counters(&self) -> &Arc<DeviceCounters> {
        &self.counters
    }

    /// The device type.
    pub fn device_type(&self) -> DeviceType {
        self.device_type
    }

    /// Offered feature bits.
    pub fn offered(&self) -> u64 {
        self.offered
    }

    /// Page `page` of the offered features (the DeviceFeatures register).
    pub fn offered_page(&self, page: u32) -> u32 {
        feature_page(self.offered, page)
    }

    /// Feature bits the driver acked (zero until it did).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Whether the driver acked every bit of `feature`.
    pub fn has_acked(&self, feature: u64) -> bool {
        self.acked & feature == feature
    }

    /// Records the driver's features: a subset of the offered ones including VERSION_1, and
    /// only while the device does not run. A refused set leaves the acked features unchanged.
    pub fn ack_features(&mut self, features: u64) -> Result<(), FeatureError> {
        if self.is_activated() {
            return Err(FeatureError::Active);
        }
        let unknown = features & !self.offered;
        if unknown != 0 {
            return Err(FeatureError::NotOffered(unknown));
        }
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(FeatureError::NoVersion1);
        }
        self.acked = features;
        Ok(())
    }

    /// Maximum size of each queue.
    pub fn queue_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    /// One eventfd per queue, signalled (by a KVM ioeventfd) when the driver notifies it.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// Signals queue `index`'s own event, so the event loop comes back to a device that left
    /// work for later (its per-event budget ran out).
    pub fn rearm(&self, index: usize) {
        if let Some(evt) = self.queue_events.get(index) {
            match evt.write(1) {
                Ok(()) => self.counters.rearmed(index),
                Err(e) => tracing::warn!(device = %self.device_type, error = %e,
                    "cannot re-arm a virtio queue event"),
            }
        }
    }

    /// Reads queue `index`'s notification event (non-blocking: an empty counter is a spurious
    /// wakeup) and counts the guest's kicks it held.
    pub fn take_notifications(&self, index: usize) {
        if let Some(Ok(n)) = self.queue_events.get(index).map(EventFd::read) {
            self.counters.notified(index, n);
        }
    }

    /// Starts the device with the driver's queues: exactly one per queue size, and only once
    /// until a reset.
    pub fn activate(
        &mut self,
        mem: GuestMem,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        if self.is_activated() {
            return Err(ActivateError::AlreadyActive);
        }
        if queues.len() != self.queue_sizes.len() {
            return Err(ActivateError::BadQueues);
        }
        self.state = DeviceState::Activated(Activated {
            mem,
            queues,
            interrupt,
        });
        Ok(())
    }

    /// Back to inactive with nothing acked (driver reset, or a failed start).
    pub fn reset(&mut self) {
        self.state = DeviceState::Inactive;
        self.acked = 0;
    }

    /// Whether the driver started the device.
    pub fn is_activated(&self) -> bool {
        matches!(self.state, DeviceState::Activated(_))
    }

    /// The running device's queues, memory and interrupt.
    pub fn active(&self) -> Option<&Activated> {
        match &self.state {
            DeviceState::Activated(a) => Some(a),
            DeviceState::Inactive => None,
        }
    }

    /// The running device's queues, memory and interrupt, mutably.
    pub fn active_mut(&mut self) -> Option<&mut Activated> {
        match &mut self.state {
            DeviceState::Activated(a) => Some(a),
            DeviceState::Inactive => None,
        }
    }

    /// The ConfigGeneration register's value.
    pub fn config_generation(&self) -> u32 {
        self.config_generation
    }

    /// Records a change of the configuration space (by the driver or the device).
    pub fn bump_config_generation(&mut self) {
        self.config_generation = self.config_generation.wrapping_add(1);
    }

    /// The device changed its configuration space: bumps the generation and, on a running
    /// device, raises the configuration-change interrupt so the driver reads it again. An
    /// inactive device raises nothing (a driver reads the configuration when it probes).
    /// Returns whether the interrupt was raised.
    pub fn signal_config(&mut self) -> bool {
        self.bump_config_generation();
        match self.active() {
            Some(a) => {
                a.interrupt.trigger(INT_CONFIG);
                true
            }
            None => false,
        }
    }

    /// Raises the used-ring interrupt of a running device; nothing when inactive.
    pub fn signal_used(&self) {
        if let Some(a) = self.active() {
            a.interrupt.trigger(INT_VRING);
            self.counters.interrupted();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;

    const F_A: u64 = 1 << 5;
    const F_B: u64 = 1 << 9;

    fn common() -> VirtioCommon {
        VirtioCommon::new(DeviceType::Block, F_A, &[16, 8]).unwrap()
    }

    fn parts(n: usize) -> (GuestMem, Vec<Queue>, Arc<Interrupt>) {
        let mem = crate::memory::create(16).unwrap().mem;
        let queues = (0..n).map(|_| Queue::new(16).unwrap()).collect();
        let irq = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        (mem, queues, irq)
    }

    #[test]
    fn types_have_their_spec_ids() {
        assert_eq!(DeviceType::Net.id(), 1);
        assert_eq!(DeviceType::Block.id(), 2);
        assert_eq!(DeviceType::Balloon.id(), 5);
        assert_eq!(DeviceType::Vsock.id(), 19);
        assert_eq!(DeviceType::Fs.id(), 26);
        assert_eq!(DeviceType::Fs.to_string(), "virtio-fs");
    }

    #[test]
    fn acked_features_are_a_subset_of_the_offered_ones() {
        let mut c = common();
        assert_eq!(c.offered(), F_A | VIRTIO_F_VERSION_1);
        assert_eq!(
            c.ack_features(F_A | F_B | VIRTIO_F_VERSION_1),
            Err(FeatureError::NotOffered(F_B))
        );
        assert_eq!(c.acked(), 0, "a refused set changes nothing");
        assert_eq!(c.ack_features(F_A), Err(FeatureError::NoVersion1));
        c.ack_features(VIRTIO_F_VERSION_1).unwrap();
        assert!(!c.has_acked(F_A));
        c.ack_features(F_A | VIRTIO_F_VERSION_1).unwrap();
        assert!(c.has_acked(F_A) && c.has_acked(VIRTIO_F_VERSION_1));
    }

    #[test]
    fn feature_pages_select_32_bit_halves() {
        let c = common();
        assert_eq!(c.offered_page(0), F_A as u32);
        assert_eq!(c.offered_page(1), 1, "VERSION_1 is bit 32");
        assert_eq!(c.offered_page(2), 0);
        assert_eq!(c.offered_page(u32::MAX), 0);
        let f = set_feature_page(0, 1, 1);
        let f = set_feature_page(f, 0, 0xdead_beef);
        assert_eq!(f, VIRTIO_F_VERSION_1 | 0xdead_beef);
        assert_eq!(set_feature_page(f, 0, 0), VIRTIO_F_VERSION_1);
        assert_eq!(
            set_feature_page(f, 7, 0xffff_ffff),
            f,
            "page 7 does not exist"
        );
    }

    #[test]
    fn activation_takes_every_queue_and_happens_once() {
        let mut c = common();
        let (mem, queues, irq) = parts(1);
        assert!(matches!(
            c.activate(mem, queues, irq),
            Err(ActivateError::BadQueues)
        ));
        assert!(!c.is_activated());
        let (mem, queues, irq) = parts(2);
        c.activate(mem, queues, irq.clone()).unwrap();
        assert!(c.is_activated());
        assert_eq!(c.active().unwrap().queues.len(), 2);
        let (mem, queues, _) = parts(2);
        assert!(matches!(
            c.activate(mem, queues, irq.clone()),
            Err(ActivateError::AlreadyActive)
        ));
        assert_eq!(
            c.ack_features(VIRTIO_F_VERSION_1),
            Err(FeatureError::Active),
            "features are frozen while running"
        );
        c.signal_used();
        assert_eq!(irq.status(), INT_VRING);
        assert_eq!(c.counters().snapshot(0).interrupts, 1);
    }

    #[test]
    fn a_configuration_change_bumps_the_generation_and_interrupts_only_a_running_device() {
        let mut c = common();
        assert!(
            !c.signal_config(),
            "nothing to interrupt before the driver starts"
        );
        assert_eq!(c.config_generation(), 1);
        let (mem, queues, irq) = parts(2);
        c.activate(mem, queues, irq.clone()).unwrap();
        assert!(c.signal_config());
        assert_eq!((c.config_generation(), irq.status()), (2, INT_CONFIG));
        assert_eq!(
            c.counters().snapshot(0).interrupts,
            0,
            "the counter is of used-ring interrupts"
        );
    }

    #[test]
    fn reset_returns_to_inactive_with_nothing_acked() {
        let mut c = common();
        c.ack_features(F_A | VIRTIO_F_VERSION_1).unwrap();
        let (mem, queues, irq) = parts(2);
        c.activate(mem, queues, irq.clone()).unwrap();
        c.reset();
        assert!(!c.is_activated() && c.active().is_none());
        assert_eq!(c.acked(), 0);
        c.signal_used();
        assert_eq!(irq.status(), 0, "an inactive device raises nothing");
        assert_eq!(
            c.counters().snapshot(0).interrupts,
            0,
            "nor counts anything"
        );
        let (mem, queues, irq) = parts(2);
        c.activate(mem, queues, irq).unwrap();
        assert!(c.is_activated(), "a reset device can start again");
    }

    #[test]
    fn queue_events_exist_per_queue_and_rearm() {
        let c = common();
        assert_eq!(c.queue_sizes(), &[16, 8]);
        assert_eq!(c.queue_events().len(), 2);
        c.rearm(1);
        c.rearm(9);
        assert_eq!(c.queue_events()[1].read().unwrap(), 1);
        assert!(c.queue_events()[0].read().is_err(), "only the asked queue");
    }

    #[test]
    fn guest_kicks_are_counted_and_the_devices_own_rearms_are_not() {
        let c = common();
        c.queue_events()[0].write(3).unwrap();
        c.take_notifications(0);
        c.take_notifications(0);
        c.rearm(1);
        c.queue_events()[1].write(2).unwrap();
        c.take_notifications(1);
        c.take_notifications(7);
        assert_eq!(c.counters().snapshot(0).queue_notifications, [3, 2]);
        let external = common().served_externally();
        external.queue_events()[0].write(1).unwrap();
        external.take_notifications(0);
        let s = external.counters().snapshot(0);
        assert!(s.queue_notifications.is_empty() && s.bytes.is_none());
    }
}
