//! Guest RAM: one memfd (so vhost-user backends can map it) split around the 32-bit MMIO gap,
//! and the way back: freeing the host memory behind guest pages the guest reports unused.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use hull_protocol::vm::MIN_MEMORY_MIB;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

/// Guest RAM as the VMM sees it: every region is a window on [`GuestRam::memfd`].
pub type GuestMem = GuestMemoryMmap<()>;

/// Start of the 32-bit MMIO gap (virtio-mmio devices, IOAPIC, LAPIC): RAM stops here.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap: RAM beyond `MMIO_GAP_START` continues here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Guest page size: RAM is given back to the host in whole pages only.
pub const PAGE_SIZE: u64 = 4096;
/// fallocate calls per discard when a signal interrupts them.
const DISCARD_TRIES: u32 = 3;

/// Errors while creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory size out of range.
    #[error("guest memory must be at least {MIN_MEMORY_MIB} MiB, got {0} MiB")]
    TooSmall(u64),
    /// Guest memory larger than this host's RAM.
    #[error("guest memory {0} MiB exceeds host RAM ({1} MiB); ask for less with --memory")]
    TooLarge(u64, u64),
    /// memfd_create or ftruncate failed.
    #[error("cannot create the guest memory file")]
    Memfd(#[source] std::io::Error),
    /// Mapping the memfd failed.
    #[error("cannot map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// A guest range that is not whole pages lying inside one file-backed RAM region (empty,
    /// unaligned, overflowing, outside RAM or across the MMIO gap).
    #[error("guest range {addr:#x} + {len:#x} is not whole pages of one RAM region")]
    BadRange {
        /// Guest-physical start.
        addr: u64,
        /// Length in bytes.
        len: u64,
    },
    /// fallocate refused to free the memory behind a guest range.
    #[error("cannot free the host memory behind guest range {addr:#x} + {len:#x}")]
    Discard {
        /// Guest-physical start.
        addr: u64,
        /// Length in bytes.
        len: u64,
        /// What fallocate said.
        #[source]
        source: std::io::Error,
    },
}

/// Guest RAM plus the memfd that backs it.
pub struct GuestRam {
    /// The mapped guest memory.
    pub mem: GuestMem,
    /// The backing file, shared with vhost-user backends.
    pub memfd: std::sync::Arc<File>,
}

/// The guest-physical RAM ranges for `size` bytes: low RAM below the MMIO gap, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// Total RAM of this host in MiB, from /proc/meminfo.
pub fn host_ram_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Checks `mib` against the minimum and the host's RAM.
pub fn check_size(mib: u64) -> Result<(), Error> {
    if mib < MIN_MEMORY_MIB {
        return Err(Error::TooSmall(mib));
    }
    if let Some(host) = host_ram_mib() {
        if mib > host {
            return Err(Error::TooLarge(mib, host));
        }
    }
    Ok(())
}

fn create_memfd(size: u64) -> Result<File, Error> {
    // SAFETY: the name is a valid NUL-terminated string; the return value is checked.
    let fd = unsafe { libc::memfd_create(c"hull-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(Error::Memfd)?;
    Ok(file)
}

/// Asks for transparent huge pages on a guest RAM mapping. Where the host's shmem THP setting
/// allows it (`/sys/kernel/mm/transparent_hugepage/shmem_enabled` at `advise`, `within_size` or
/// `always`; hull-check reports it), RAM the guest touches first is faulted in 2 MiB at a time
/// (512x fewer nested-paging faults while the guest boots) and mapped by 2 MiB pages. Elsewhere
/// the kernel ignores the advice, and so does hull-vmm: the guest runs the same either way.
fn advise_huge_pages(addr: *mut u8, len: usize) {
    // SAFETY: the range is exactly one live mapping of guest RAM, just made; MADV_HUGEPAGE
    // changes how its pages are backed, never their contents.
    let _ = unsafe { libc::madvise(addr.cast(), len, libc::MADV_HUGEPAGE) };
}

/// Creates `mib` MiB of guest RAM backed by a memfd, mapped shared, with huge pages advised.
pub fn create(mib: u64) -> Result<GuestRam, Error> {
    check_size(mib)?;
    from_ranges(&ram_ranges(mib << 20))
}

/// Guest RAM at `ranges` (ascending, not overlapping), backed one after another by one memfd.
pub(crate) fn from_ranges(ranges: &[(GuestAddress, u64)]) -> Result<GuestRam, Error> {
    let size = ranges.iter().map(|(_, len)| len).sum();
    let memfd = std::sync::Arc::new(create_memfd(size)?);
    let mut offset = 0;
    let mut regions = Vec::new();
    for &(addr, len) in ranges {
        let file = FileOffset::from_arc(memfd.clone(), offset);
        let region =
            GuestRegionMmap::from_range(addr, len as usize, Some(file)).map_err(Error::Map)?;
        advise_huge_pages(region.as_ptr(), len as usize);
        regions.push(region);
        offset += len;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| Error::Map(e.into()))?;
    Ok(GuestRam { mem, memfd })
}

/// The file and file offset behind guest range `addr..addr + len`, if the range is whole pages
/// (non-empty, page-aligned start and length) lying wholly inside one file-backed RAM region.
pub fn file_range(mem: &GuestMem, addr: u64, len: u64) -> Option<(&File, u64)> {
    if len == 0 || !addr.is_multiple_of(PAGE_SIZE) || !len.is_multiple_of(PAGE_SIZE) {
        return None;
    }
    let last = addr.checked_add(len - 1)?;
    let region = mem.find_region(GuestAddress(addr))?;
    if last > region.last_addr().raw_value() {
        return None;
    }
    let file = region.file_offset()?;
    let within = GuestAddress(addr).checked_offset_from(region.start_addr())?;
    Some((file.file(), file.start().checked_add(within)?))
}

/// Gives the host back the memory behind guest range `addr..addr + len` by punching a hole in
/// the memfd (MADV_DONTNEED would not free the pages of a shared file mapping). The guest then
/// reads zeros there, and its next write allocates afresh; the file keeps its size, so no
/// mapping (KVM's, virtiofsd's) ever faults past its end. A range that is not whole pages of one
/// RAM region is refused untouched.
pub fn discard(mem: &GuestMem, addr: u64, len: u64) -> Result<(), Error> {
    let bad = || Error::BadRange { addr, len };
    let (file, offset) = file_range(mem, addr, len).ok_or_else(bad)?;
    let offset = libc::off_t::try_from(offset).map_err(|_| bad())?;
    let flen = libc::off_t::try_from(len).map_err(|_| bad())?;
    let mut tries = 0;
    loop {
        // SAFETY: fallocate takes no pointers; `file` is the open memfd behind the region, and
        // the range lies inside the part of it that backs that region.
        let r = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                flen,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let source = std::io::Error::last_os_error();
        tries += 1;
        if source.kind() != std::io::ErrorKind::Interrupted || tries >= DISCARD_TRIES {
            return Err(Error::Discard { addr, len, source });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn ranges_split_around_the_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let big = ram_ranges(4 << 30);
        assert_eq!(big.len(), 2);
        assert_eq!(big[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(
            big[1],
            (GuestAddress(MMIO_GAP_END), (4 << 30) - MMIO_GAP_START)
        );
    }

    #[test]
    fn memfd_backed_memory_is_usable() {
        let ram = create(16).unwrap();
        ram.mem
            .write_obj(0xdead_beefu32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            ram.mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(ram.memfd.metadata().unwrap().len(), 16 << 20);
        assert_eq!(ram.mem.last_addr(), GuestAddress((16 << 20) - 1));
    }

    #[test]
    fn guest_ram_asks_for_huge_pages() {
        if !Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            println!("skipped: this kernel has no transparent huge pages");
            return;
        }
        let ram = create(16).unwrap();
        for region in ram.mem.iter() {
            let start = format!("{:x}-", region.as_ptr() as usize);
            let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
            // The mapping's header line, then its fields; VmFlags is the first after it.
            let flags = smaps
                .lines()
                .skip_while(|l| !l.starts_with(&start))
                .find_map(|l| l.strip_prefix("VmFlags:"))
                .unwrap_or_else(|| panic!("no smaps entry at {start}"));
            assert!(
                flags.split_whitespace().any(|f| f == "hg"),
                "guest RAM at {start} is not advised for huge pages: {flags}"
            );
        }
    }

    #[test]
    fn only_whole_pages_of_one_region_map_to_the_file() {
        let ram =
            from_ranges(&[(GuestAddress(0), 1 << 20), (GuestAddress(2 << 20), 1 << 20)]).unwrap();
        let at = |addr, len| file_range(&ram.mem, addr, len).map(|(_, off)| off);
        assert_eq!(at(0, PAGE_SIZE), Some(0));
        assert_eq!(
            at((1 << 20) - PAGE_SIZE, PAGE_SIZE),
            Some((1 << 20) - PAGE_SIZE)
        );
        assert_eq!(
            at(2 << 20, 1 << 20),
            Some(1 << 20),
            "the second region's file offset"
        );
        for (addr, len) in [
            (0, 0),
            (1, PAGE_SIZE),
            (0, PAGE_SIZE + 1),
            ((1 << 20) - PAGE_SIZE, 2 * PAGE_SIZE),
            (1 << 20, PAGE_SIZE),
            (0, 3 << 20),
            (3 << 20, PAGE_SIZE),
            (u64::MAX - PAGE_SIZE + 1, PAGE_SIZE),
            (PAGE_SIZE, u64::MAX - PAGE_SIZE + 1),
            (2 * PAGE_SIZE, u64::MAX - PAGE_SIZE + 1),
        ] {
            assert_eq!(at(addr, len), None, "{addr:#x} + {len:#x}");
            assert!(matches!(
                discard(&ram.mem, addr, len),
                Err(Error::BadRange { .. })
            ));
        }
    }

    #[test]
    fn a_discarded_range_reads_zero_and_the_rest_is_kept() {
        let ram = create(16).unwrap();
        ram.mem
            .write_slice(&[0xa5; 3 * 4096], GuestAddress(0x10_0000))
            .unwrap();
        discard(&ram.mem, 0x10_1000, PAGE_SIZE).unwrap();
        let mut got = [0u8; 3 * 4096];
        ram.mem
            .read_slice(&mut got, GuestAddress(0x10_0000))
            .unwrap();
        assert!(got[..4096].iter().all(|b| *b == 0xa5));
        assert!(got[4096..8192].iter().all(|b| *b == 0));
        assert!(got[8192..].iter().all(|b| *b == 0xa5));
        assert_eq!(
            ram.memfd.metadata().unwrap().len(),
            16 << 20,
            "the size is kept"
        );
    }

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(check_size(1), Err(Error::TooSmall(1))));
        assert!(matches!(check_size(1 << 40), Err(Error::TooLarge(..))));
    }
}
