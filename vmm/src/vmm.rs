//! Running a built VM: start the vCPU threads, wait for the exit, clean up.

use std::sync::Arc;

use kvm_ioctls::VcpuFd;

use crate::builder::VmParts;
use crate::exit::ExitReason;
use crate::vcpu::{self, Vcpu};

/// A built VM, ready to run.
pub struct Vmm {
    parts: VmParts,
    vcpus: Vec<VcpuFd>,
}

impl Vmm {
    /// Wraps the parts and vCPUs made by the builder.
    pub fn new(parts: VmParts, vcpus: Vec<VcpuFd>) -> Self {
        Vmm { parts, vcpus }
    }

    /// Runs the VM until it stops; returns why.
    pub fn run(mut self) -> ExitReason {
        if let Err(e) = vcpu::install_kick_handler() {
            return ExitReason::VmmError(format!("cannot install the vCPU kick handler: {e}"));
        }
        let pio = Arc::new(std::mem::take(&mut self.parts.pio));
        let mmio = Arc::new(std::mem::take(&mut self.parts.mmio));
        for (id, fd) in self.vcpus.drain(..).enumerate() {
            let vcpu = Vcpu {
                fd,
                id: id as u8,
                pio: pio.clone(),
                mmio: mmio.clone(),
                exit: self.parts.exit.clone(),
                control: self.parts.control.clone(),
            };
            if let Err(e) = vcpu.start() {
                self.parts.control.stop();
                return ExitReason::VmmError(e.to_string());
            }
        }
        loop {
            // A blocking eventfd read; EINTR/EAGAIN just retry.
            let _ = self.parts.exit.event().read();
            if let Some(reason) = self.parts.exit.reason() {
                self.parts.control.stop();
                return reason;
            }
        }
    }
}
