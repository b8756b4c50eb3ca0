//! Building a VM: a flat recipe of small steps chained with `?`. Running it lives in `vmm.rs`.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, IoEventAddress, Kvm, VcpuFd, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{Console, VmConfig};
use crate::control::ControlServer;
use crate::devices::bus::Bus;
use crate::devices::console::BoundedConsole;
use crate::devices::legacy::{self, ConsoleOut, SerialDevice, I8042};
use crate::devices::virtio::balloon::device::Balloon;
use crate::devices::virtio::block::device::Block;
use crate::devices::virtio::fs::device::Fs;
use crate::devices::virtio::net::device::Net;
use crate::devices::virtio::vsock::device::Vsock;
use crate::devices::virtio::{mmio, Interrupt, VirtioDevice};
use crate::exit::{ExitNotifier, EXIT_USAGE, EXIT_VMM_ERROR};
use crate::memory::{GuestMem, GuestRam};
use crate::vcpu::RunControl;
use crate::vmm::Vmm;
use crate::{boot, cpuid, memory, mptable, vcpu};

/// KVM's TSS needs three pages below 4 GiB outside RAM: at the top of the MMIO gap's unused part.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// The PVM module's sysfs directory: its /dev/kvm cannot boot a standard guest kernel.
pub const PVM_MARKER: &str = "/sys/module/kvm_pvm";

/// Errors while building a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// /dev/kvm missing or not accessible.
    #[error("cannot use /dev/kvm (is KVM enabled and do you have access?)")]
    KvmUnavailable(#[source] kvm_ioctls::Error),
    /// The host's KVM is PVM, which cannot boot a standard Linux guest.
    #[error("this host's /dev/kvm is PVM-backed ({PVM_MARKER} exists) and cannot boot a standard guest kernel; run inside the lab (tests/lab/lab.sh) or pass --allow-pvm for tiny test guests")]
    PvmHost,
    /// A KVM VM ioctl failed.
    #[error("{0} failed")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// Loading the kernel, initramfs or command line.
    #[error(transparent)]
    Boot(#[from] boot::Error),
    /// MP table.
    #[error(transparent)]
    MpTable(#[from] mptable::Error),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    /// Device placement.
    #[error("cannot place a device")]
    Bus(#[from] crate::devices::bus::Error),
    /// Console file.
    #[error("cannot open console file {0}")]
    Console(String, #[source] std::io::Error),
    /// The console's writer thread could not start.
    #[error("cannot start the console writer thread")]
    ConsoleThread(#[source] std::io::Error),
    /// An eventfd could not be created or registered.
    #[error("cannot create an event file descriptor")]
    EventFd(#[source] std::io::Error),
    /// The control socket.
    #[error(transparent)]
    Control(#[from] crate::control::Error),
    /// A virtio-blk disk.
    #[error(transparent)]
    Disk(#[from] crate::devices::virtio::block::device::Error),
    /// A virtio-fs share.
    #[error(transparent)]
    Fs(#[from] crate::devices::virtio::fs::device::Error),
    /// The vsock device.
    #[error(transparent)]
    Vsock(#[from] crate::devices::virtio::vsock::device::Error),
    /// A virtio-net device (its tap descriptor or MAC).
    #[error(transparent)]
    Net(#[from] crate::devices::virtio::net::device::Error),
    /// The virtio-balloon.
    #[error(transparent)]
    Balloon(#[from] crate::devices::virtio::balloon::device::Error),
    /// Two network devices name the same tap descriptor.
    #[error("net tap_fd {0} is given twice; each device needs its own tap")]
    DuplicateTap(i32),
    /// More virtio devices than IOAPIC pins.
    #[error("too many virtio devices (at most {} fit the IOAPIC)", mptable::IOAPIC_PINS as u32 - VIRTIO_FIRST_IRQ)]
    TooManyDevices,
    /// The seccomp filters.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::Error),
    /// A socket path the VMM must create already exists.
    #[error("{0} already exists; remove it or choose another path")]
    PathExists(String),
}

impl Error {
    /// Exit status for this error: configuration problems are usage errors.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Boot(_)
            | Error::PathExists(_)
            | Error::Console(..)
            | Error::Disk(_)
            | Error::Net(_)
            | Error::DuplicateTap(_) => EXIT_USAGE,
            Error::Memory(memory::Error::TooLarge(..) | memory::Error::TooSmall(_)) => EXIT_USAGE,
            Error::Fs(e) if e.is_usage() => EXIT_USAGE,
            _ => EXIT_VMM_ERROR,
        }
    }
}

/// Everything created so far for one VM.
pub struct VmParts {
    /// The KVM system handle.
    pub kvm: Kvm,
    /// The VM.
    pub vm: Arc<VmFd>,
    /// Guest RAM.
    pub ram: GuestRam,
    /// Port I/O devices.
    pub pio: Bus,
    /// MMIO devices.
    pub mmio: Bus,
    /// Where vCPUs and devices report the VM's exit.
    pub exit: Arc<ExitNotifier>,
    /// Pause and stop requests for the vCPUs.
    pub control: Arc<RunControl>,
    /// Extra kernel command line words (device announcements).
    pub cmdline_extra: Vec<String>,
    /// virtio devices, polled by the event loop.
    pub devices: Vec<Arc<Mutex<dyn VirtioDevice>>>,
    /// The virtio-blk disks in configuration order (also in `devices`), for the control
    /// socket's `attach-disk`.
    pub disks: Vec<Arc<Mutex<Block>>>,
    /// Files to remove when the VMM exits (sockets it created).
    pub cleanup: Vec<PathBuf>,
    /// The control socket server, if asked for.
    pub control_server: Option<Arc<Mutex<ControlServer>>>,
    /// The serial console's output buffer, drained when the VM exits.
    pub console: Option<BoundedConsole>,
    /// The per-thread seccomp filters, unless the config turned them off.
    pub seccomp: Option<crate::seccomp::Filters>,
}

/// Fails fast when /dev/kvm cannot boot a standard guest.
pub fn check_host(allow_pvm: bool) -> Result<(), Error> {
    if !allow_pvm && Path::new(PVM_MARKER).exists() {
        return Err(Error::PvmHost);
    }
    Ok(())
}

/// Checks the paths the VMM will create, before creating anything.
pub fn check_paths(cfg: &VmConfig) -> Result<(), Error> {
    let mut paths = Vec::new();
    paths.extend(cfg.vsock.as_ref().map(|v| v.uds.clone()));
    paths.extend(cfg.control.clone());
    for p in paths {
        if p.symlink_metadata().is_ok() {
            return Err(Error::PathExists(p.display().to_string()));
        }
    }
    Ok(())
}

/// Opens KVM and creates a VM with the in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT.
pub fn create_vm(ram: GuestRam) -> Result<VmParts, Error> {
    let kvm = Kvm::new().map_err(Error::KvmUnavailable)?;
    let vm = kvm
        .create_vm()
        .map_err(|e| Error::Kvm("KVM_CREATE_VM", e))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(|e| Error::Kvm("KVM_SET_TSS_ADDR", e))?;
    vm.create_irq_chip()
        .map_err(|e| Error::Kvm("KVM_CREATE_IRQCHIP", e))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| Error::Kvm("KVM_CREATE_PIT2", e))?;
    Ok(VmParts {
        kvm,
        vm: Arc::new(vm),
        ram,
        pio: Bus::new(),
        mmio: Bus::new(),
        exit: Arc::new(ExitNotifier::new().map_err(Error::EventFd)?),
        control: Arc::new(RunControl::default()),
        cmdline_extra: Vec::new(),
        devices: Vec::new(),
        disks: Vec::new(),
        cleanup: Vec::new(),
        control_server: None,
        console: None,
        seccomp: None,
    })
}

/// Hands every guest RAM region to KVM.
pub fn register_memory(vm: &VmFd, mem: &GuestMem) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|_| Error::Kvm("guest memory lookup", kvm_ioctls::Error::new(libc::EFAULT)))?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the host range is a live mapping owned by `mem`, which outlives the VM (the
        // VMM keeps both until the process exits), and regions do not overlap.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(())
}

fn open_console(console: &Console) -> Result<ConsoleOut, Error> {
    Ok(match console {
        Console::Stdout => Box::new(std::io::stdout()),
        Console::None => Box::new(std::io::sink()),
        Console::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Error::Console(path.display().to_string(), e))?,
        ),
    })
}

/// Creates an eventfd registered as an irqfd for `gsi`.
pub fn irq_eventfd(vm: &VmFd, gsi: u32) -> Result<EventFd, Error> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
    vm.register_irqfd(&evt, gsi)
        .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
    Ok(evt)
}

/// Adds COM1 and the i8042.
pub fn attach_legacy(parts: &mut VmParts, console: &Console) -> Result<(), Error> {
    let irq = irq_eventfd(&parts.vm, legacy::SERIAL_IRQ)?;
    let filter = parts.seccomp.as_ref().map(|f| f.console.clone());
    let out =
        BoundedConsole::spawn(open_console(console)?, filter).map_err(Error::ConsoleThread)?;
    parts.console = Some(out.clone());
    let serial = SerialDevice::new(irq, Box::new(out));
    parts.pio.insert(
        legacy::SERIAL_PORT,
        legacy::SERIAL_LEN,
        Arc::new(Mutex::new(serial)),
    )?;
    let i8042 = I8042::new(parts.exit.clone());
    parts.pio.insert(
        legacy::I8042_PORT,
        legacy::I8042_LEN,
        Arc::new(Mutex::new(i8042)),
    )?;
    Ok(())
}

/// First virtio-mmio window, at the start of the MMIO gap.
pub const VIRTIO_MMIO_BASE: u64 = memory::MMIO_GAP_START;
/// GSI of the first virtio device; the next ones count up to the IOAPIC's last pin.
pub const VIRTIO_FIRST_IRQ: u32 = 5;

/// Places a virtio device behind the next MMIO window and IRQ, wires its queue notifications
/// to ioeventfds and announces it on the kernel command line.
pub fn attach_virtio(parts: &mut VmParts, dev: Arc<Mutex<dyn VirtioDevice>>) -> Result<(), Error> {
    let n = parts.devices.len() as u64;
    let irq = VIRTIO_FIRST_IRQ + n as u32;
    if irq >= u32::from(mptable::IOAPIC_PINS) {
        return Err(Error::TooManyDevices);
    }
    let base = VIRTIO_MMIO_BASE + n * mmio::MMIO_SIZE;
    let interrupt = Arc::new(Interrupt::new(irq_eventfd(&parts.vm, irq)?));
    for (i, evt) in dev
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .common()
        .queue_events()
        .iter()
        .enumerate()
    {
        let addr = IoEventAddress::Mmio(base + mmio::NOTIFY_OFFSET);
        parts
            .vm
            .register_ioevent(evt, &addr, i as u32)
            .map_err(|e| Error::Kvm("KVM_IOEVENTFD", e))?;
    }
    let transport = mmio::MmioTransport::new(dev.clone(), parts.ram.mem.clone(), interrupt);
    parts
        .mmio
        .insert(base, mmio::MMIO_SIZE, Arc::new(Mutex::new(transport)))?;
    parts.cmdline_extra.push(mmio::cmdline_word(base, irq));
    parts.devices.push(dev);
    Ok(())
}

/// Adds the vsock device; its socket is removed when the VMM exits.
pub fn attach_vsock(parts: &mut VmParts, cfg: &VmConfig) -> Result<(), Error> {
    let Some(v) = &cfg.vsock else { return Ok(()) };
    let dev = Vsock::new(v.cid, &v.uds)?;
    parts.cleanup.push(v.uds.clone());
    attach_virtio(parts, Arc::new(Mutex::new(dev)))
}

/// Adds the virtio-blk disks, in order (the guest sees vda, vdb, ...); a disk without a path
/// is an empty slot the control socket fills.
pub fn attach_disks(parts: &mut VmParts, cfg: &VmConfig) -> Result<(), Error> {
    for disk in &cfg.disks {
        let serial = disk.serial_or_default();
        let dev = match &disk.path {
            Some(path) => Block::new(path, disk.read_only, serial)?,
            None => Block::empty(serial)?,
        };
        let dev = Arc::new(Mutex::new(dev));
        attach_virtio(parts, dev.clone())?;
        parts.disks.push(dev);
    }
    Ok(())
}

/// Adds one virtio-fs device per share, each connected to its virtiofsd. Runs before any step
/// that creates a file, so a missing virtiofsd leaves nothing behind.
pub fn attach_fs(parts: &mut VmParts, cfg: &VmConfig) -> Result<(), Error> {
    for share in &cfg.fs {
        let dev = Fs::new(&share.tag, &share.socket)?;
        attach_virtio(parts, Arc::new(Mutex::new(dev)))?;
    }
    Ok(())
}

/// Adds one virtio-net device per inherited tap, in order (the guest sees eth0, eth1, ...).
pub fn attach_nets(parts: &mut VmParts, cfg: &VmConfig) -> Result<(), Error> {
    for (i, net) in cfg.net.iter().enumerate() {
        if cfg.net[..i].iter().any(|n| n.tap_fd == net.tap_fd) {
            return Err(Error::DuplicateTap(net.tap_fd));
        }
    }
    for net in &cfg.net {
        let dev = Net::new(net.tap_fd, &net.mac, net.mtu)?;
        attach_virtio(parts, Arc::new(Mutex::new(dev)))?;
    }
    Ok(())
}

/// Adds the virtio-balloon, which gives the host back the guest pages the guest reports free,
/// unless the configuration turns it off.
pub fn attach_balloon(parts: &mut VmParts, cfg: &VmConfig) -> Result<(), Error> {
    if !cfg.balloon {
        return Ok(());
    }
    attach_virtio(parts, Arc::new(Mutex::new(Balloon::new()?)))
}

/// Opens the control socket; it is removed when the VMM exits.
pub fn attach_control(parts: &mut VmParts, cfg: &VmConfig) -> Result<(), Error> {
    let Some(path) = &cfg.control else {
        return Ok(());
    };
    let counters = parts
        .devices
        .iter()
        .map(|d| {
            d.lock()
                .unwrap_or_else(|e| e.into_inner())
                .common()
                .counters()
                .clone()
        })
        .collect();
    let server = ControlServer::new(
        path,
        parts.control.clone(),
        parts.exit.clone(),
        cfg.memory_mib,
        cfg.vcpus,
        counters,
        parts.disks.clone(),
    )?;
    parts.cleanup.push(path.clone());
    parts.control_server = Some(Arc::new(Mutex::new(server)));
    Ok(())
}

/// Loads kernel, initramfs, command line, start info and MP table.
pub fn load_guest(parts: &VmParts, cfg: &VmConfig) -> Result<boot::BootInfo, Error> {
    let cmdline = boot::cmdline(&cfg.cmdline, &parts.cmdline_extra)?;
    let info = boot::load(
        &parts.ram.mem,
        cfg.memory_mib << 20,
        &cfg.kernel,
        cfg.initrd.as_deref(),
        &cmdline,
    )?;
    mptable::write(&parts.ram.mem, cfg.vcpus)?;
    vcpu::write_boot_tables(&parts.ram.mem)?;
    Ok(info)
}

/// Creates and configures `count` vCPUs; all start at the PVH entry (KVM parks the APs until
/// the BSP sends them INIT/SIPI).
pub fn create_vcpus(
    parts: &VmParts,
    count: u8,
    boot: &boot::BootInfo,
) -> Result<Vec<VcpuFd>, Error> {
    let supported = parts
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
    let tsc_deadline = parts.kvm.check_extension(Cap::TscDeadlineTimer);
    let mut vcpus = Vec::with_capacity(count.into());
    for id in 0..count {
        let fd = parts
            .vm
            .create_vcpu(id.into())
            .map_err(|e| Error::Kvm("KVM_CREATE_VCPU", e))?;
        vcpu::configure(
            &fd,
            id,
            &cpuid::for_vcpu(&supported, id, count, tsc_deadline),
        )?;
        vcpu::set_boot_entry(&fd, id, boot)?;
        vcpus.push(fd);
    }
    Ok(vcpus)
}

/// Builds a ready-to-run VM from `cfg`.
pub fn build(cfg: &VmConfig) -> Result<Vmm, Error> {
    let start = std::time::Instant::now();
    let ms = |since: std::time::Instant| since.elapsed().as_secs_f64() * 1e3;
    check_host(cfg.allow_pvm)?;
    check_paths(cfg)?;
    let ram = memory::create(cfg.memory_mib)?;
    let mut parts = create_vm(ram)?;
    if cfg.seccomp {
        let drop_to = cfg.jail.as_ref().map(|j| (j.uid, j.gid));
        parts.seccomp = Some(crate::seccomp::Filters::compile(drop_to)?);
    }
    register_memory(&parts.vm, &parts.ram.mem)?;
    let vm_ms = ms(start);
    let step = std::time::Instant::now();
    attach_legacy(&mut parts, &cfg.console)?;
    attach_disks(&mut parts, cfg)?;
    attach_fs(&mut parts, cfg)?;
    attach_vsock(&mut parts, cfg)?;
    attach_nets(&mut parts, cfg)?;
    attach_balloon(&mut parts, cfg)?;
    attach_control(&mut parts, cfg)?;
    let devices_ms = ms(step);
    let step = std::time::Instant::now();
    let boot = load_guest(&parts, cfg)?;
    let load_ms = ms(step);
    let vcpus = create_vcpus(&parts, cfg.vcpus, &boot)?;
    // Where a slow start goes: RAM, VM and filters; devices; kernel and initramfs.
    tracing::debug!(vm_ms, devices_ms, load_ms, total_ms = ms(start), "VM built");
    Ok(Vmm::new(parts, vcpus))
}
