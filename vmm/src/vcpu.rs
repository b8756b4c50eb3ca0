//! vCPU setup (CPUID, MSRs, registers for the PVH entry, FPU, LAPIC) and the run loop that
//! routes exits to the buses; one thread per vCPU.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_run, kvm_segment, CpuId, Msrs, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};

use crate::boot::BootInfo;
use crate::devices::bus::Bus;
use crate::exit::{ExitNotifier, ExitReason};
use crate::memory::GuestMem;

/// Guest address of the boot GDT (null, 32-bit code, data, TSS).
pub const BOOT_GDT_START: u64 = 0x500;
/// Guest address of the (empty) boot IDT.
pub const BOOT_IDT_START: u64 = 0x520;

const GDT: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x008b, 0, 0xfffff),
];

const X86_CR0_PE: u64 = 0x1;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Errors while setting up or running a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A KVM vCPU ioctl failed.
    #[error("vCPU {0}: {1} failed")]
    Kvm(u8, &'static str, #[source] kvm_ioctls::Error),
    /// KVM accepted fewer MSRs than asked.
    #[error("vCPU {0}: KVM set only {1} of {2} boot MSRs")]
    Msrs(u8, usize, usize),
    /// Writing the GDT failed.
    #[error("cannot write the boot GDT")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// Spawning the thread failed.
    #[error("cannot start vCPU thread")]
    Thread(#[source] std::io::Error),
    /// The vCPU thread could not install its seccomp filter.
    #[error("vCPU {0}: seccomp filter")]
    Seccomp(u8, #[source] crate::seccomp::Error),
}

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM segment described by GDT entry `entry` at `index`.
fn segment(entry: u64, index: u16) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        ..Default::default()
    }
}

/// Writes the boot GDT and IDT that the PVH entry state refers to.
pub fn write_boot_tables(mem: &GuestMem) -> Result<(), Error> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(Error::Memory)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(Error::Memory)
}

fn boot_msrs() -> Vec<kvm_msr_entry> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

fn set_lvt_mode(regs: &mut [std::os::raw::c_char; 1024], offset: usize, mode: u32) {
    let mut raw = [0u8; 4];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = regs[offset + i] as u8;
    }
    let value = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *b as std::os::raw::c_char;
    }
}

/// Sets CPUID, MSRs, FPU and LAPIC LINT pins of a vCPU: everything but the entry registers.
pub fn configure(fd: &VcpuFd, id: u8, cpuid: &CpuId) -> Result<(), Error> {
    fd.set_cpuid2(cpuid)
        .map_err(|e| Error::Kvm(id, "KVM_SET_CPUID2", e))?;
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).expect("boot MSR list is far below the FAM limit");
    let set = fd
        .set_msrs(&msrs)
        .map_err(|e| Error::Kvm(id, "KVM_SET_MSRS", e))?;
    if set != entries.len() {
        return Err(Error::Msrs(id, set, entries.len()));
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    fd.set_fpu(&fpu)
        .map_err(|e| Error::Kvm(id, "KVM_SET_FPU", e))?;
    let mut lapic = fd
        .get_lapic()
        .map_err(|e| Error::Kvm(id, "KVM_GET_LAPIC", e))?;
    set_lvt_mode(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt_mode(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    fd.set_lapic(&lapic)
        .map_err(|e| Error::Kvm(id, "KVM_SET_LAPIC", e))
}

/// Puts a vCPU in the 32-bit entry state both boot protocols share: protected mode, paging
/// off, flat segments, `rip` at the kernel's entry, and `rbx` (PVH start info) or `rsi` (Linux
/// zero page) pointing at the boot structure.
pub fn set_boot_entry(fd: &VcpuFd, id: u8, boot: &BootInfo) -> Result<(), Error> {
    let mut sregs = fd
        .get_sregs()
        .map_err(|e| Error::Kvm(id, "KVM_GET_SREGS", e))?;
    let code = segment(GDT[1], 1);
    let data = segment(GDT[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(GDT[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cr0 = X86_CR0_PE;
    sregs.cr4 = 0;
    sregs.efer = 0;
    fd.set_sregs(&sregs)
        .map_err(|e| Error::Kvm(id, "KVM_SET_SREGS", e))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: boot.entry.0,
        rbx: boot.rbx,
        rsi: boot.rsi,
        ..Default::default()
    };
    fd.set_regs(&regs)
        .map_err(|e| Error::Kvm(id, "KVM_SET_REGS", e))
}

/// Pause and stop requests shared by the VMM and its vCPU threads.
#[derive(Default)]
pub struct RunControl {
    stop: AtomicBool,
    /// KVM_RUN exits handled, all vCPUs together (for the control socket's stats).
    exits: AtomicU64,
    paused: Mutex<bool>,
    changed: Condvar,
    threads: Mutex<Vec<libc::pthread_t>>,
}

/// Signal used to kick a vCPU out of KVM_RUN.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let ptr = run.get();
        if !ptr.is_null() {
            // SAFETY: the pointer is this thread's mapped kvm_run structure, set by the vCPU
            // thread before its first KVM_RUN and valid while the VcpuFd lives on this thread;
            // writing one byte is async-signal-safe.
            unsafe { (*ptr).immediate_exit = 1 };
        }
    });
}

/// Installs the kick handler once per process.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler)
}

impl RunControl {
    /// Asks every vCPU to stop for good.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.changed.notify_all();
        self.kick_all();
    }

    /// Pauses (true) or resumes (false) every vCPU.
    pub fn set_paused(&self, paused: bool) {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner()) = paused;
        self.changed.notify_all();
        if paused {
            self.kick_all();
        }
    }

    /// KVM_RUN exits handled so far, all vCPUs together.
    pub fn exits(&self) -> u64 {
        self.exits.load(Ordering::Relaxed)
    }

    /// Whether the vCPUs are asked to be paused.
    pub fn is_paused(&self) -> bool {
        *self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kick_all(&self) {
        for t in self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            // SAFETY: `t` is a vCPU thread that runs until the process exits (threads are
            // never joined or detached-and-exited before stop); the signal has a handler.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    /// Blocks while paused; returns false when the vCPU must stop.
    fn wait_runnable(&self) -> bool {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        while *paused && !self.stop.load(Ordering::SeqCst) {
            paused = self.changed.wait(paused).unwrap_or_else(|e| e.into_inner());
        }
        !self.stop.load(Ordering::SeqCst)
    }
}

/// One vCPU and what its exits need.
pub struct Vcpu {
    /// The KVM vCPU.
    pub fd: VcpuFd,
    /// Its index (and APIC id).
    pub id: u8,
    /// Port I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// Where to report the VM's exit.
    pub exit: Arc<ExitNotifier>,
    /// Pause and stop requests.
    pub control: Arc<RunControl>,
    /// The vCPU seccomp filter, installed by the thread before its first KVM_RUN.
    pub seccomp: Option<Arc<seccompiler::BpfProgram>>,
}

impl Vcpu {
    /// Runs until the guest stops, the VMM asks it to, or an error; returns the reason, which
    /// the caller reports.
    pub fn run(&mut self) -> Option<ExitReason> {
        loop {
            if !self.control.wait_runnable() {
                return None;
            }
            let exit = self.fd.run();
            if exit.is_ok() {
                self.control.exits.fetch_add(1, Ordering::Relaxed);
            }
            match exit {
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.pio.read(u64::from(port), data);
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.pio.write(u64::from(port), data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.mmio.read(addr, data);
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.mmio.write(addr, data);
                }
                Ok(VcpuExit::Hlt) => return Some(ExitReason::GuestPowerOff),
                Ok(VcpuExit::Shutdown) => return Some(ExitReason::GuestReset),
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => return Some(ExitReason::GuestPowerOff),
                    KVM_SYSTEM_EVENT_RESET => return Some(ExitReason::GuestReset),
                    KVM_SYSTEM_EVENT_CRASH => {
                        return Some(ExitReason::GuestCrash("guest reported a crash".into()))
                    }
                    other => tracing::warn!(vcpu = self.id, kind = other, "ignored system event"),
                },
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    return Some(ExitReason::GuestCrash(format!(
                        "vCPU {} entry failed: hardware reason {reason:#x} on cpu {cpu}",
                        self.id
                    )))
                }
                Ok(VcpuExit::InternalError) => {
                    return Some(ExitReason::GuestCrash(format!(
                        "vCPU {}: KVM internal error (emulation failure)",
                        self.id
                    )))
                }
                Ok(VcpuExit::Intr) => self.fd.set_kvm_immediate_exit(0),
                Ok(other) => {
                    return Some(ExitReason::VmmError(format!(
                        "vCPU {}: unexpected exit {other:?}",
                        self.id
                    )))
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => {
                    return Some(ExitReason::VmmError(format!(
                        "vCPU {}: KVM_RUN: {e}",
                        self.id
                    )))
                }
            }
        }
    }

    /// Starts the vCPU on its own thread; the thread reports the exit reason when it stops.
    pub fn start(mut self) -> Result<(), Error> {
        let control = self.control.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.id))
            .spawn(move || {
                if let Some(filter) = self.seccomp.take() {
                    let kind = crate::seccomp::ThreadKind::Vcpu;
                    if let Err(e) = crate::seccomp::install(kind, &filter) {
                        let _ = tx.send(Err(Error::Seccomp(self.id, e)));
                        return;
                    }
                }
                KVM_RUN.with(|run| run.set(self.fd.get_kvm_run() as *mut kvm_run));
                // SAFETY: pthread_self has no preconditions.
                let _ = tx.send(Ok(unsafe { libc::pthread_self() }));
                // Its timestamp is where a boot's time leaves the VMM (bench/vmm-boot-lab.sh).
                tracing::debug!(vcpu = self.id, "first KVM_RUN");
                let reason = self.run();
                KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
                if let Some(reason) = reason {
                    self.exit.notify(reason);
                }
                // Keep the vCPU fd (and its kvm_run mapping) alive until the process exits,
                // so a late kick never touches unmapped memory.
                std::mem::forget(self);
            })
            .map_err(Error::Thread)?;
        match rx.recv() {
            Ok(Ok(t)) => control
                .threads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(t),
            Ok(Err(e)) => return Err(e),
            Err(_) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_segments_are_flat() {
        let cs = segment(GDT[1], 1);
        assert_eq!(
            (cs.base, cs.limit, cs.selector, cs.type_),
            (0, 0xffff_ffff, 8, 0xb)
        );
        assert_eq!((cs.present, cs.db, cs.s, cs.g, cs.l), (1, 1, 1, 1, 0));
        let ds = segment(GDT[2], 2);
        assert_eq!((ds.type_, ds.selector), (0x3, 0x10));
        let tr = segment(GDT[3], 3);
        assert_eq!((tr.s, tr.g, tr.limit, tr.type_), (0, 0, 0xfffff, 0xb));
    }

    #[test]
    fn lvt_mode_bits() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        regs[APIC_LVT0] = 0xff_u8 as std::os::raw::c_char;
        regs[APIC_LVT0 + 1] = 0x07;
        set_lvt_mode(&mut regs, APIC_LVT0, APIC_MODE_NMI);
        assert_eq!(regs[APIC_LVT0] as u8, 0xff);
        assert_eq!(regs[APIC_LVT0 + 1] as u8, 0x04);
    }

    #[test]
    fn pause_and_stop() {
        let c = RunControl::default();
        assert!(c.wait_runnable());
        c.set_paused(true);
        assert!(c.is_paused());
        c.stop();
        assert!(!c.wait_runnable());
    }
}
