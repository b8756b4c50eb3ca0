//! Guest RAM: one memfd (so vhost-user backends can map it) split around the 32-bit MMIO gap.

use std::fs::File;
use std::os::fd::FromRawFd;

use hull_protocol::vm::MIN_MEMORY_MIB;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// Guest RAM as the VMM sees it: every region is a window on [`GuestRam::memfd`].
pub type GuestMem = GuestMemoryMmap<()>;

/// Start of the 32-bit MMIO gap (virtio-mmio devices, IOAPIC, LAPIC): RAM stops here.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap: RAM beyond `MMIO_GAP_START` continues here.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;

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
    let size = mib << 20;
    let memfd = std::sync::Arc::new(create_memfd(size)?);
    let mut offset = 0;
    let mut regions = Vec::new();
    for (addr, len) in ram_ranges(size) {
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
    fn sizes_are_checked() {
        assert!(matches!(check_size(1), Err(Error::TooSmall(1))));
        assert!(matches!(check_size(1 << 40), Err(Error::TooLarge(..))));
    }
}
