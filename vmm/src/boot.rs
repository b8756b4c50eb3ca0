//! Direct boot without firmware: loads the kernel (an ELF `vmlinux` entered through its PVH note,
//! or a `bzImage` entered through the Linux 32-bit boot protocol), the initramfs and the command
//! line, then writes the PVH start info or the Linux zero page, each with its e820 memory map.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{BzImage, Cmdline, KernelLoader};
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
/// The Linux zero page (`boot_params`) of a bzImage boot.
pub const ZERO_PAGE_START: u64 = 0x8000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line an x86 Linux kernel accepts (COMMAND_LINE_SIZE).
pub const CMDLINE_MAX: usize = 2048;
/// Start of the extended BIOS data area: the MP table lives here; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// "HdrS" at offset 0x202 of a bzImage: the Linux boot protocol header.
const BZIMAGE_MAGIC: [u8; 4] = *b"HdrS";
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
/// `type_of_loader` of a boot loader without an assigned id.
const LOADER_UNDEFINED: u8 = 0xff;
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
        "kernel image {0} is not a loadable ELF vmlinux or bzImage; build it with kernel-config/build.sh"
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

/// What the vCPUs need to know after loading: both protocols enter in 32-bit protected mode
/// with paging off, and differ in the register that points at the boot structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootInfo {
    /// The kernel's 32-bit entry point.
    pub entry: GuestAddress,
    /// EBX: the PVH start info (PVH), or 0.
    pub rbx: u64,
    /// ESI: the zero page (Linux boot protocol), or 0.
    pub rsi: u64,
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

/// Places the initramfs page-aligned at the top of low RAM, read from the file straight into
/// guest memory (no copy through a heap buffer): only its first bytes are read apart, to check
/// its format.
pub fn load_initrd(
    mem: &GuestMem,
    path: &Path,
    kernel_end: u64,
) -> Result<(GuestAddress, usize), Error> {
    let name = path.display().to_string();
    let read_err = |e| Error::ReadInitrd(name.clone(), e);
    let mut file = File::open(path).map_err(read_err)?;
    let len = usize::try_from(file.metadata().map_err(read_err)?.len())
        .map_err(|_| Error::InitrdTooBig(usize::MAX))?;
    let mut magic = [0u8; 6];
    let head = magic.len().min(len);
    file.read_exact(&mut magic[..head]).map_err(read_err)?;
    if !check_initrd(&magic[..head]) {
        return Err(Error::BadInitrd(name));
    }
    let low_end = mem.last_addr().raw_value().min(MMIO_GAP_START - 1) + 1;
    let start = low_end
        .checked_sub(len as u64)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end)
        .ok_or(Error::InitrdTooBig(len))?;
    file.seek(SeekFrom::Start(0)).map_err(read_err)?;
    mem.read_exact_volatile_from(GuestAddress(start), &mut file, len)
        .map_err(Error::Memory)?;
    Ok((GuestAddress(start), len))
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

/// Whether `path` is a bzImage (has the Linux boot protocol header) rather than an ELF.
pub fn is_bzimage(path: &Path) -> Result<bool, Error> {
    use std::io::{Read, Seek, SeekFrom};
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|e| Error::OpenKernel(name.clone(), e))?;
    let mut magic = [0u8; 4];
    let found = file.seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET)).is_ok()
        && file.read_exact(&mut magic).is_ok()
        && magic == BZIMAGE_MAGIC;
    Ok(found)
}

/// Loads a bzImage's protected-mode part at its `code32_start`; returns the entry, the end of
/// what the kernel will occupy (it decompresses itself to `pref_address`, needing `init_size`
/// bytes) and its setup header.
pub fn load_bzimage(
    mem: &GuestMem,
    path: &Path,
) -> Result<(GuestAddress, u64, setup_header), Error> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|e| Error::OpenKernel(name.clone(), e))?;
    let loaded = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| Error::LoadKernel(name.clone(), e))?;
    let hdr = loaded.setup_header.ok_or(Error::NoPvh(name))?;
    let (pref, init_size) = (hdr.pref_address, u64::from(hdr.init_size));
    let run_start = pref.max(loaded.kernel_load.raw_value());
    let end = loaded.kernel_end.max(run_start.saturating_add(init_size));
    Ok((loaded.kernel_load, end, hdr))
}

/// Writes the Linux zero page: the kernel's own setup header with this loader's fields (command
/// line, initramfs) filled in, and the e820 map.
pub fn write_zero_page(
    mem: &GuestMem,
    mem_size: u64,
    hdr: setup_header,
    cmdline_len: usize,
    initrd: Option<(GuestAddress, usize)>,
) -> Result<(), Error> {
    let mut params = boot_params::default();
    let mut hdr = hdr;
    hdr.type_of_loader = LOADER_UNDEFINED;
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, len)) = initrd {
        hdr.ramdisk_image = addr.raw_value() as u32;
        hdr.ramdisk_size = len as u32;
    }
    params.hdr = hdr;
    let map = e820_map(mem_size);
    for (slot, e) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.type_,
        };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
        .map_err(Error::Memory)
}

/// Loads everything the guest needs to boot and returns where to start it.
pub fn load(
    mem: &GuestMem,
    mem_size: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &Cmdline,
) -> Result<BootInfo, Error> {
    // Both protocols: kernel first, the initramfs above what it will occupy,
    // then the command line and the protocol's own boot structure.
    let bzimage = if is_bzimage(kernel)? {
        Some(load_bzimage(mem, kernel)?)
    } else {
        None
    };
    let (entry, kernel_end) = match &bzimage {
        Some((entry, end, _)) => (*entry, *end),
        None => load_kernel(mem, kernel)?,
    };
    let initrd = initrd
        .map(|p| load_initrd(mem, p, kernel_end))
        .transpose()?;
    write_cmdline(mem, cmdline)?;
    match bzimage {
        Some((_, _, hdr)) => {
            let len = cmdline
                .as_cstring()
                .map(|c| c.as_bytes().len())
                .unwrap_or(0);
            write_zero_page(mem, mem_size, hdr, len, initrd)?;
            Ok(BootInfo {
                entry,
                rbx: 0,
                rsi: ZERO_PAGE_START,
            })
        }
        None => {
            write_start_info(mem, mem_size, initrd)?;
            Ok(BootInfo {
                entry,
                rbx: PVH_INFO_START,
                rsi: 0,
            })
        }
    }
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
    fn initrd_lands_whole_at_the_top_of_low_ram_and_an_empty_one_is_refused() {
        let ram = crate::memory::create(16).unwrap();
        let dir = std::env::temp_dir().join(format!("hull-initrd-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("initrd");
        // Not a multiple of the page size, and larger than one read of the file.
        let mut data = b"070701".to_vec();
        data.extend((0..300_001u32).map(|i| (i % 251) as u8));
        std::fs::write(&path, &data).unwrap();
        let (addr, len) = load_initrd(&ram.mem, &path, 0).unwrap();
        assert_eq!(len, data.len());
        assert_eq!(addr.raw_value() & 0xfff, 0);
        assert!(addr.raw_value() + len as u64 <= 16 << 20);
        let mut back = vec![0u8; len];
        ram.mem.read_slice(&mut back, addr).unwrap();
        assert!(
            back == data,
            "the initramfs in guest memory differs from the file"
        );
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            load_initrd(&ram.mem, &empty, 0),
            Err(Error::BadInitrd(..))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A minimal bzImage: one setup sector with the boot protocol header, then `payload`.
    fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let mut img = vec![0u8; 2 * 512];
        img[0x1f1] = 1; // setup_sects
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes()); // version
        img[0x211] = 1; // loadflags: LOADED_HIGH
        img[0x214..0x218].copy_from_slice(&(HIMEM_START as u32).to_le_bytes()); // code32_start
        img[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes()); // pref_address
        img[0x260..0x264].copy_from_slice(&0x80_0000u32.to_le_bytes()); // init_size
        img.extend_from_slice(payload);
        img
    }

    #[test]
    fn bzimage_is_loaded_at_code32_start_with_a_zero_page() {
        let ram = crate::memory::create(64).unwrap();
        let dir = std::env::temp_dir().join(format!("hull-bz-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("bzImage");
        std::fs::write(&kernel, fake_bzimage(b"\xf4kernel")).unwrap();
        let initrd = dir.join("initrd");
        std::fs::write(&initrd, b"070701rest").unwrap();
        let c = cmdline("console=ttyS0", &[]).unwrap();
        let info = load(&ram.mem, 64 << 20, &kernel, Some(&initrd), &c).unwrap();
        assert_eq!(
            info,
            BootInfo {
                entry: GuestAddress(HIMEM_START),
                rbx: 0,
                rsi: ZERO_PAGE_START
            }
        );
        let mut code = [0u8; 7];
        ram.mem
            .read_slice(&mut code, GuestAddress(HIMEM_START))
            .unwrap();
        assert_eq!(&code, b"\xf4kernel");
        let zp: boot_params = ram.mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = zp.hdr;
        assert_eq!(
            (hdr.type_of_loader, hdr.cmd_line_ptr, hdr.cmdline_size),
            (LOADER_UNDEFINED, CMDLINE_START as u32, 13)
        );
        let (image, size) = (hdr.ramdisk_image, hdr.ramdisk_size);
        assert_eq!(size, 10);
        assert!(
            u64::from(image) >= 0x100_0000 + 0x80_0000,
            "initrd clear of the unpacked kernel"
        );
        assert_eq!(zp.e820_entries, 3);
        let ram_entry = zp.e820_table[2];
        let (addr, kind) = (ram_entry.addr, ram_entry.r#type);
        assert_eq!((addr, kind), (HIMEM_START, E820_RAM));
        assert!(!is_bzimage(&initrd).unwrap());
        std::fs::write(&kernel, &fake_bzimage(b"")[..0x204]).unwrap();
        assert!(!is_bzimage(&kernel).unwrap(), "truncated header");
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
