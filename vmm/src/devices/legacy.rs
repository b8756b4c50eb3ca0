//! The PC legacy devices a Linux guest needs: the 8250 serial console and enough of the i8042
//! controller to catch the guest's reset request.

use std::io::Write;
use std::sync::Arc;

use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::bus::BusDevice;
use crate::exit::{ExitNotifier, ExitReason};

/// Port base of COM1.
pub const SERIAL_PORT: u64 = 0x3f8;
/// Number of ports of an 8250.
pub const SERIAL_LEN: u64 = 8;
/// ISA IRQ of COM1.
pub const SERIAL_IRQ: u32 = 4;
/// First i8042 port (data); the command/status port is at +4.
pub const I8042_PORT: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_LEN: u64 = 5;

/// Raises an interrupt by writing to an eventfd registered with KVM as an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where the console goes.
pub type ConsoleOut = Box<dyn Write + Send>;

/// COM1: output only; the guest's writes go to `out`.
pub struct SerialDevice {
    serial: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleOut>,
    /// Set after the first output error, so a closed console is reported once.
    failed: bool,
}

impl SerialDevice {
    /// A serial port writing to `out` and interrupting through `irq`.
    pub fn new(irq: EventFd, out: ConsoleOut) -> Self {
        SerialDevice {
            serial: Serial::new(IrqTrigger(irq), out),
            failed: false,
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < SERIAL_LEN {
            data[0] = self.serial.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 && offset < SERIAL_LEN {
            if let Err(e) = self.serial.write(offset as u8, data[0]) {
                if !self.failed {
                    tracing::warn!(error = ?e, "console output failed; further output is dropped");
                    self.failed = true;
                }
            }
            if offset == 0 {
                // Best effort: a console that cannot be flushed must not stop the guest.
                let _ = self.serial.writer_mut().flush();
            }
        }
    }
}

/// Reports a guest reset to the VM's exit notifier.
pub struct ResetTrigger(pub Arc<ExitNotifier>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.notify(ExitReason::GuestReset);
        Ok(())
    }
}

/// The i8042 controller: reads return 0 (nothing pending), command 0xFE resets the VM.
pub struct I8042(I8042Device<ResetTrigger>);

impl I8042 {
    /// An i8042 that reports resets to `exit`.
    pub fn new(exit: Arc<ExitNotifier>) -> Self {
        I8042(I8042Device::new(ResetTrigger(exit)))
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 {
            data[0] = self.0.read(offset as u8);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() == 1 {
            let Ok(()) = self.0.write(offset as u8, data[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn serial_output_and_interrupt() {
        let out = Shared::default();
        let irq = EventFd::new(0).unwrap();
        let mut s = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        // Enable the THR-empty interrupt, then write two bytes.
        s.write(1, &[0x02]);
        for b in b"hi" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        assert!(irq.read().unwrap() >= 1);
        // Wrong-sized accesses are ignored.
        s.write(0, b"xy");
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
    }

    #[test]
    fn i8042_reset_reports_exit() {
        let exit = Arc::new(ExitNotifier::new().unwrap());
        let mut k = I8042::new(exit.clone());
        let mut b = [0xffu8];
        k.read(4, &mut b);
        assert_eq!(b[0], 0);
        k.write(4, &[0x10]);
        assert_eq!(exit.reason(), None);
        k.write(4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
    }
}
