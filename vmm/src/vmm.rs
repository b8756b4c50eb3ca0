//! Running a built VM: start the event loop and the vCPU threads, wait for the exit, clean up.

use std::sync::Arc;
use std::time::Duration;

use kvm_ioctls::VcpuFd;

use crate::builder::VmParts;
use crate::event_loop::EventLoop;
use crate::exit::ExitReason;
use crate::vcpu::{self, Vcpu};

/// How long the VMM waits at exit for the guest's last console bytes to reach the reader.
const CONSOLE_DRAIN: Duration = Duration::from_millis(500);

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

    fn event_loop(&self, signals: bool) -> Result<EventLoop, crate::event_loop::Error> {
        let mut el = EventLoop::new(self.parts.exit.clone())?;
        if signals {
            el.watch_termination_signals()?;
        }
        for dev in &self.parts.devices {
            el.add_device(dev.clone())?;
        }
        if let Some(server) = &self.parts.control_server {
            let fd = server.lock().unwrap_or_else(|e| e.into_inner()).poll_fd();
            el.add_handler(fd, server.clone())?;
        }
        Ok(el)
    }

    fn start_vcpus(&mut self) -> Result<(), String> {
        vcpu::install_kick_handler()
            .map_err(|e| format!("cannot install the vCPU kick handler: {e}"))?;
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
                seccomp: self.parts.seccomp.as_ref().map(|f| f.vcpu.clone()),
            };
            vcpu.start().map_err(|e| hull_protocol::error::chain(&e))?;
        }
        Ok(())
    }

    fn run_inner(&mut self, signals: bool) -> ExitReason {
        let mut el = match self.event_loop(signals) {
            Ok(el) => el,
            Err(e) => return ExitReason::VmmError(e.to_string()),
        };
        // The vCPUs wait (paused) until every thread has its seccomp filter.
        self.parts.control.set_paused(true);
        if let Err(e) = self.start_vcpus() {
            return ExitReason::VmmError(e);
        }
        if let Some(filters) = &self.parts.seccomp {
            if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Vmm, &filters.vmm) {
                return ExitReason::VmmError(hull_protocol::error::chain(&e));
            }
        }
        crate::seccomp::selftest_if_asked();
        self.parts.control.set_paused(false);
        el.run()
    }

    /// Runs the VM until it stops and returns why. With `signals`, SIGTERM and SIGINT stop the
    /// VM cleanly. The vCPUs are stopped and the VMM's sockets removed before returning.
    pub fn run_with(mut self, signals: bool) -> ExitReason {
        let reason = self.run_inner(signals);
        self.parts.control.stop();
        if let Some(server) = &self.parts.control_server {
            server
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .finish(&reason);
        }
        if let Some(console) = &self.parts.console {
            console.drain(CONSOLE_DRAIN);
        }
        for path in &self.parts.cleanup {
            let _ = std::fs::remove_file(path);
        }
        reason
    }

    /// Runs the VM (without signal handling: for embedding and tests). Parts built with
    /// seccomp filters install them on the calling thread and the vCPU threads.
    pub fn run(self) -> ExitReason {
        self.run_with(false)
    }
}
