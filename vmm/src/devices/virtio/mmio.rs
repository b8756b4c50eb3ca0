//! virtio-mmio transport, version 2 (virtio 1.x, section 4.2): the register window the driver
//! uses to negotiate features, set up queues and start the device.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};

use super::common::set_feature_page;
use super::{Interrupt, VirtioDevice};
use crate::devices::bus::BusDevice;
use crate::memory::GuestMem;

/// Size of one device's MMIO window.
pub const MMIO_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (for ioeventfds).
pub const NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4c4c_5548; // "HULL"
const CONFIG_OFFSET: u64 = 0x100;

const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_NEEDS_RESET: u32 = 0x40;
const STATUS_FAILED: u32 = 0x80;

/// One virtio device behind an MMIO window. The transport holds only the driver's registers
/// (selectors, queues being set up, status); features and activation live in the device's
/// [`super::VirtioCommon`].
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMem,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
}

impl MmioTransport {
    /// A transport for `device`, interrupting through `interrupt`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMem,
        interrupt: Arc<Interrupt>,
    ) -> Self {
        let queues = Self::fresh_queues(&device);
        MmioTransport {
            device,
            mem,
            interrupt,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
        }
    }

    fn fresh_queues(device: &Arc<Mutex<dyn VirtioDevice>>) -> Vec<Queue> {
        let dev = device.lock().unwrap_or_else(|e| e.into_inner());
        dev.common()
            .queue_sizes()
            .iter()
            .map(|&max| Queue::new(max).expect("device queue sizes are powers of two"))
            .collect()
    }

    fn dev(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device's driver status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn activated(&self) -> bool {
        self.dev().common().is_activated()
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        let can_configure = !self.activated() && self.status & STATUS_FEATURES_OK != 0;
        let q = self.queues.get_mut(self.queue_sel as usize)?;
        can_configure.then_some(q)
    }

    fn reset(&mut self) {
        let device_type = self.dev().common().device_type();
        if !self.dev().reset() {
            tracing::warn!(device = %device_type, "virtio device cannot be reset; it stays stopped");
        }
        self.queues = Self::fresh_queues(&self.device);
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.status = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (virtio 1.x, 3.1.1); anything else is ignored.
        if value & self.status != self.status {
            return;
        }
        let added = value & !self.status;
        if added & STATUS_FEATURES_OK != 0 {
            let acked = self.driver_features;
            let negotiated = self.dev().common_mut().ack_features(acked);
            if let Err(e) = negotiated {
                tracing::debug!(error = %e, "virtio feature negotiation refused");
                self.status = value & !STATUS_FEATURES_OK;
                return;
            }
        }
        self.status = value;
        if added & STATUS_DRIVER_OK != 0 && self.status & STATUS_FEATURES_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let valid = self
            .queues
            .iter()
            .all(|q| q.ready() && q.is_valid(&self.mem));
        let result = if valid {
            let queues = std::mem::replace(&mut self.queues, Self::fresh_queues(&self.device));
            let mem = self.mem.clone();
            let interrupt = self.interrupt.clone();
            self.dev()
                .activate(mem, queues, interrupt)
                .map_err(|e| e.to_string())
        } else {
            Err("driver set up invalid or too few queues".to_string())
        };
        match result {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "virtio device activation failed");
                self.status |= STATUS_NEEDS_RESET;
                self.interrupt.trigger(super::INT_CONFIG);
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.dev().common().device_type().id(),
            0x0c => VENDOR,
            0x10 => self.dev().common().offered_page(self.device_features_sel),
            0x34 => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            0x44 => {
                // Running queues were all ready at activation (the device now owns them).
                let idx = self.queue_sel as usize;
                let activated = self.activated();
                match self.queues.get(idx) {
                    Some(_) if activated => 1,
                    Some(q) => u32::from(q.ready()),
                    None => 0,
                }
            }
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.dev().common().config_generation(),
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 => {
                if self.status & STATUS_FEATURES_OK == 0 {
                    self.driver_features =
                        set_feature_page(self.driver_features, self.driver_features_sel, v);
                }
            }
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 => {
                if let Some(q) = self.selected() {
                    q.set_size(v as u16);
                }
            }
            0x44 => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            NOTIFY_OFFSET => {
                if self.activated() {
                    if let Some(evt) = self.dev().common().queue_events().get(v as usize) {
                        // Fails only when the counter would overflow: already pending.
                        let _ = evt.write(1);
                    }
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_desc_table_address(Some(v), None)),
            0x84 => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_desc_table_address(None, Some(v))),
            0x90 => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_avail_ring_address(Some(v), None)),
            0x94 => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_avail_ring_address(None, Some(v))),
            0xa0 => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_used_ring_address(Some(v), None)),
            0xa4 => self
                .selected()
                .into_iter()
                .for_each(|q| q.set_used_ring_address(None, Some(v))),
            _ => tracing::debug!(offset, "write to unknown virtio-mmio register"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.dev().read_config(offset - CONFIG_OFFSET, data);
        } else if data.len() == 4 && offset & 3 == 0 {
            data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            if self.status & STATUS_FAILED == 0 {
                let mut dev = self.dev();
                dev.write_config(offset - CONFIG_OFFSET, data);
                dev.common_mut().bump_config_generation();
            }
        } else if data.len() == 4 && offset & 3 == 0 {
            let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            self.write_reg(offset, v);
        }
    }
}

/// The kernel command line word that announces a device at `base` on `irq`.
pub fn cmdline_word(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::devices::virtio::{DeviceType, VirtioCommon, VIRTIO_F_VERSION_1};
    use vmm_sys_util::eventfd::EventFd;

    const STATUS_ACK: u32 = 1;
    const STATUS_DRIVER: u32 = 2;

    pub(crate) struct Dummy {
        common: VirtioCommon,
        pub resets: usize,
    }

    impl Dummy {
        pub fn new() -> Self {
            Dummy {
                common: VirtioCommon::new(DeviceType::Vsock, 1, &[16, 16]).unwrap(),
                resets: 0,
            }
        }
        pub fn activated(&self) -> bool {
            self.common.is_activated()
        }
        pub fn acked(&self) -> u64 {
            self.common.acked()
        }
    }

    impl VirtioDevice for Dummy {
        fn common(&self) -> &VirtioCommon {
            &self.common
        }
        fn common_mut(&mut self) -> &mut VirtioCommon {
            &mut self.common
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[7, 0, 0, 0], offset, data)
        }
        fn on_reset(&mut self) -> bool {
            self.resets += 1;
            true
        }
        fn process_queue(&mut self, _: usize) {}
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }
    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let mem = crate::memory::create(16).unwrap().mem;
        let dev = Arc::new(Mutex::new(Dummy::new()));
        let irq = Arc::new(Interrupt::new(EventFd::new(0).unwrap()));
        (MmioTransport::new(dev.clone(), mem, irq), dev)
    }

    fn drive(t: &mut MmioTransport, features_hi: u32) {
        w(t, 0x70, STATUS_ACK);
        w(t, 0x70, STATUS_ACK | STATUS_DRIVER);
        w(t, 0x24, 1);
        w(t, 0x20, features_hi);
        w(t, 0x70, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
    }

    fn setup_queue(t: &mut MmioTransport, idx: u32, base: u32) {
        w(t, 0x30, idx);
        w(t, 0x38, 16);
        w(t, 0x80, base);
        w(t, 0x90, base + 0x1000);
        w(t, 0xa0, base + 0x2000);
        w(t, 0x44, 1);
    }

    #[test]
    fn identity_registers() {
        let (mut t, _) = setup();
        assert_eq!(r(&mut t, 0), MAGIC);
        assert_eq!(r(&mut t, 4), 2);
        assert_eq!(r(&mut t, 8), DeviceType::Vsock.id());
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1);
        assert_eq!(r(&mut t, 0x34), 16);
        w(&mut t, 0x30, 7);
        assert_eq!(r(&mut t, 0x34), 0);
        let mut b = [0u8; 1];
        t.read(0x100, &mut b);
        assert_eq!(b[0], 7);
        // Misaligned or wrongly sized register accesses are ignored.
        let mut two = [0xffu8; 2];
        t.read(0x0, &mut two);
        assert_eq!(two, [0xff, 0xff]);
    }

    #[test]
    fn the_generation_register_follows_config_changes_from_both_sides() {
        let (mut t, dev) = setup();
        assert_eq!(r(&mut t, 0xfc), 0);
        w(&mut t, 0x70, STATUS_ACK);
        t.write(0x100, &[1]);
        assert_eq!(r(&mut t, 0xfc), 1, "a driver write");
        dev.lock().unwrap().common_mut().signal_config();
        assert_eq!(r(&mut t, 0xfc), 2, "a device change");
    }

    #[test]
    fn negotiation_and_activation() {
        let (mut t, dev) = setup();
        drive(&mut t, 1);
        assert_eq!(t.status() & STATUS_FEATURES_OK, STATUS_FEATURES_OK);
        assert_eq!(dev.lock().unwrap().acked(), VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 0x10_0000);
        setup_queue(&mut t, 1, 0x20_0000);
        w(
            &mut t,
            0x70,
            STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(dev.lock().unwrap().activated());
        // Queue registers are frozen once running.
        w(&mut t, 0x30, 0);
        w(&mut t, 0x44, 0);
        assert_eq!(r(&mut t, 0x44), 1);
        w(&mut t, 0x70, 0);
        assert!(!dev.lock().unwrap().activated());
        assert_eq!(dev.lock().unwrap().resets, 1);
        assert_eq!(t.status(), 0);
    }

    #[test]
    fn reset_before_driver_ok_forgets_the_features_without_stopping_anything() {
        let (mut t, dev) = setup();
        drive(&mut t, 1);
        setup_queue(&mut t, 0, 0x10_0000);
        w(&mut t, 0x70, 0);
        let d = dev.lock().unwrap();
        assert_eq!((d.acked(), d.resets, d.activated()), (0, 0, false));
        drop(d);
        // The queue set up before the reset is gone: DRIVER_OK now finds it unready.
        drive(&mut t, 1);
        setup_queue(&mut t, 1, 0x20_0000);
        w(
            &mut t,
            0x70,
            STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(!dev.lock().unwrap().activated());
        assert_ne!(t.status() & STATUS_NEEDS_RESET, 0);
    }

    #[test]
    fn bad_features_and_queues_are_refused() {
        let (mut t, dev) = setup();
        // No VERSION_1: FEATURES_OK does not stick.
        drive(&mut t, 0);
        assert_eq!(t.status() & STATUS_FEATURES_OK, 0);
        w(&mut t, 0x70, 0);
        // Unoffered feature bit 40.
        drive(&mut t, 1 | 1 << 8);
        assert_eq!(t.status() & STATUS_FEATURES_OK, 0);
        w(&mut t, 0x70, 0);
        // Queue outside guest memory: activation fails, device asks for a reset.
        drive(&mut t, 1);
        setup_queue(&mut t, 0, 0x10_0000);
        setup_queue(&mut t, 1, 0xff00_0000);
        w(
            &mut t,
            0x70,
            STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert!(!dev.lock().unwrap().activated());
        assert_ne!(t.status() & STATUS_NEEDS_RESET, 0);
    }
}
