//! Direct PVH boot: loads the ELF `vmlinux`, the initramfs and the command line, then writes the
//! PVH start info and its e820 memory map.

use std::fs::File;
use std::path::Path;

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{Cmdline, KernelLoader};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::{ram_ranges, GuestMem, MMIO_GAP_START};

/// Where the kernel's ELF segments may start: 1 MiB, above the real-mode area.
pub const HIMEM_START: u64 = 0x10_0000;
/// The PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// The module list (one entry: the initramfs), right after the start info.
pub const MODLIST_START: u64 = 0x6040;
/// The e820 table handed over in the start info.
pub const MEMMAP_START: u64 = 0x7000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line an x86 Linux kernel accepts (COMMAND_LINE_SIZE).
pub const CMDLINE_MAX: usize = 2048;
/// Start of the extended BIOS data area: the MP table lives here; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// Errors while loading the guest's boot images.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Kernel file unreadable.
    #[error("cannot open kernel image {0}")]
    OpenKernel(String, #[source] std::io::Error),
    /// Kernel file is not a loadable ELF.
    #[error(
        "kernel image {0} is not a loadable ELF vmlinux; build it with kernel-config/build.sh"
    )]
    LoadKernel(String, #[source] linux_loader::loader::Error),
    /// Kernel lacks the PVH entry note.
    #[error("kernel image {0} has no PVH entry point; build it with CONFIG_PVH=y")]
    NoPvh(String),
    /// Initramfs unreadable.
    #[error("cannot read initramfs {0}")]
    ReadInitrd(String, #[source] std::io::Error),
    /// Initramfs is not a cpio archive (plain or gzip).
    #[error("initramfs {0} is neither a cpio archive nor gzip-compressed")]
    BadInitrd(String),
    /// Initramfs does not fit between the kernel and the top of low RAM.
    #[error("initramfs ({0} bytes) does not fit in guest memory; raise --memory")]
    InitrdTooBig(usize),
    /// Command line too long or malformed.
    #[error("invalid kernel command line")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    /// Writing boot structures failed.
    #[error("cannot write boot structures to guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// linux-loader could not place the start info or the memory map.
    #[error("cannot write the PVH start info")]
    StartInfo(#[source] linux_loader::configurator::Error),
}

/// What the vCPUs need to know after loading.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// The kernel's 32-bit PVH entry point.
    pub entry: GuestAddress,
}

/// Builds a command line object from the user's text plus extra words (device announcements).
pub fn cmdline(base: &str, extra: &[String]) -> Result<Cmdline, Error> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(Error::Cmdline)?;
    if !base.trim().is_empty() {
        cmdline.insert_str(base.trim()).map_err(Error::Cmdline)?;
    }
    for word in extra {
        cmdline.insert_str(word).map_err(Error::Cmdline)?;
    }
    Ok(cmdline)
}

/// Loads the ELF kernel; returns its PVH entry and the first byte after it.
pub fn load_kernel(mem: &GuestMem, path: &Path) -> Result<(GuestAddress, u64), Error> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|e| Error::OpenKernel(name.clone(), e))?;
    let loaded = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| Error::LoadKernel(name.clone(), e))?;
    match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok((entry, loaded.kernel_end)),
        _ => Err(Error::NoPvh(name)),
    }
}

/// Checks that `data` looks like a cpio archive (newc), gzip, or one of the kernel's other formats
/// that this kernel can unpack (gzip only, see kernel-config).
pub fn check_initrd(data: &[u8]) -> bool {
    data.starts_with(b"070701") || data.starts_with(b"070702") || data.starts_with(&[0x1f, 0x8b])
}

/// Reads the initramfs and places it page-aligned at the top of low RAM.
pub fn load_initrd(
    mem: &GuestMem,
    path: &Path,
    kernel_end: u64,
) -> Result<(GuestAddress, usize), Error> {
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|e| Error::ReadInitrd(name.clone(), e))?;
    if !check_initrd(&data) {
        return Err(Error::BadInitrd(name));
    }
    let low_end = mem.last_addr().raw_value().min(MMIO_GAP_START - 1) + 1;
    let start = low_end
        .checked_sub(data.len() as u64)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end)
        .ok_or(Error::InitrdTooBig(data.len()))?;
    mem.write_slice(&data, GuestAddress(start))
        .map_err(Error::Memory)?;
    Ok((GuestAddress(start), data.len()))
}

/// The e820 map: RAM below the EBDA, reserved up to 1 MiB, then RAM around the MMIO gap.
pub fn e820_map(mem_size: u64) -> Vec<hvm_memmap_table_entry> {
    let entry = |addr: u64, size: u64, type_: u32| hvm_memmap_table_entry {
        addr,
        size,
        type_,
        reserved: 0,
    };
    let mut map = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for (addr, len) in ram_ranges(mem_size) {
        let start = addr.raw_value().max(HIMEM_START);
        let end = addr.raw_value() + len;
        map.push(entry(start, end - start, E820_RAM));
    }
    map
}

/// Writes the PVH start info, its module list (the initramfs) and the e820 map.
pub fn write_start_info(
    mem: &GuestMem,
    mem_size: u64,
    initrd: Option<(GuestAddress, usize)>,
) -> Result<(), Error> {
    let memmap = e820_map(mem_size);
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut modules = Vec::new();
    if let Some((addr, len)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = MODLIST_START;
        modules.push(hvm_modlist_entry {
            paddr: addr.raw_value(),
            size: len as u64,
            ..Default::default()
        });
    }
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(Error::StartInfo)
}

/// Writes the command line where the start info points.
pub fn write_cmdline(mem: &GuestMem, cmdline: &Cmdline) -> Result<(), Error> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|_| Error::Cmdline(linux_loader::cmdline::Error::TooLarge))
}

/// Loads everything the guest needs to boot and returns where to start it.
pub fn load(
    mem: &GuestMem,
    mem_size: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &Cmdline,
) -> Result<BootInfo, Error> {
    let (entry, kernel_end) = load_kernel(mem, kernel)?;
    let initrd = initrd
        .map(|p| load_initrd(mem, p, kernel_end))
        .transpose()?;
    write_cmdline(mem, cmdline)?;
    write_start_info(mem, mem_size, initrd)?;
    Ok(BootInfo { entry })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_ram_and_reserves_the_bios_area() {
        let map = e820_map(128 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(
            (map[0].addr, map[0].size, map[0].type_),
            (0, EBDA_START, E820_RAM)
        );
        assert_eq!(map[1].type_, E820_RESERVED);
        assert_eq!(
            (map[2].addr, map[2].size),
            (HIMEM_START, (128 << 20) - HIMEM_START)
        );
        let big = e820_map(4 << 30);
        assert_eq!(big.len(), 4);
        assert_eq!(big[3].addr, crate::memory::MMIO_GAP_END);
    }

    #[test]
    fn start_info_points_at_cmdline_memmap_and_initrd() {
        let ram = crate::memory::create(16).unwrap();
        write_start_info(&ram.mem, 16 << 20, Some((GuestAddress(0xf0_0000), 1234))).unwrap();
        let info: hvm_start_info = ram.mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.memmap_entries, 3);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = ram.mem.read_obj(GuestAddress(MODLIST_START)).unwrap();
        assert_eq!((module.paddr, module.size), (0xf0_0000, 1234));
        let e: hvm_memmap_table_entry = ram.mem.read_obj(GuestAddress(MEMMAP_START + 48)).unwrap();
        assert_eq!(e.addr, HIMEM_START);
    }

    #[test]
    fn bad_kernel_and_initrd_are_rejected() {
        let ram = crate::memory::create(16).unwrap();
        let dir = std::env::temp_dir().join(format!("hull-boot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk");
        std::fs::write(&junk, b"this is not a kernel").unwrap();
        assert!(matches!(
            load_kernel(&ram.mem, &junk),
            Err(Error::LoadKernel(..))
        ));
        assert!(matches!(
            load_kernel(&ram.mem, &dir.join("missing")),
            Err(Error::OpenKernel(..))
        ));
        assert!(matches!(
            load_initrd(&ram.mem, &junk, 0),
            Err(Error::BadInitrd(..))
        ));
        let big = dir.join("big");
        let mut data = b"070701".to_vec();
        data.resize(32 << 20, 0);
        std::fs::write(&big, &data).unwrap();
        assert!(matches!(
            load_initrd(&ram.mem, &big, 0),
            Err(Error::InitrdTooBig(..))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cmdline_joins_words() {
        let c = cmdline(
            "console=ttyS0 quiet",
            &["virtio_mmio.device=4K@0xd0000000:5".into()],
        )
        .unwrap();
        assert_eq!(
            c.as_cstring().unwrap().to_str().unwrap(),
            "console=ttyS0 quiet virtio_mmio.device=4K@0xd0000000:5"
        );
    }
}
