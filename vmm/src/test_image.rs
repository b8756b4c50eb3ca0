//! A minimal PVH "kernel" (an ELF with a PVH entry note) that prints one byte on COM1 and then
//! halts forever. It lets host-side tests and benchmarks run the real `hull-vmm` binary, even on
//! a KVM that cannot boot Linux.

/// Guest-physical load and entry address of the image.
pub const ENTRY: u32 = 0x10_0000;
/// The byte the image writes to COM1 once running.
pub const MARKER: u8 = b'R';

const CODE_OFFSET: usize = 0x1000;
const NOTE_OFFSET: usize = 0x200;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// 32-bit code: `mov dx, 0x3f8; mov al, MARKER; out dx, al; hlt; jmp hlt`.
fn code() -> Vec<u8> {
    vec![0x66, 0xba, 0xf8, 0x03, 0xb0, MARKER, 0xee, 0xf4, 0xeb, 0xfd]
}

fn phdr(out: &mut Vec<u8>, kind: u32, flags: u32, offset: u64, addr: u64, size: u64, align: u64) {
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    for v in [offset, addr, addr, size, size, align] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// The ELF image bytes.
pub fn pvh_halt_image() -> Vec<u8> {
    let code = code();
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&u64::from(ENTRY).to_le_bytes());
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers right after this header
    elf.extend_from_slice(&0u64.to_le_bytes()); // no sections
    elf.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 2, 64, 0, 0] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    phdr(
        &mut elf,
        1,
        5,
        CODE_OFFSET as u64,
        u64::from(ENTRY),
        code.len() as u64,
        0x1000,
    );
    phdr(&mut elf, 4, 4, NOTE_OFFSET as u64, 0, 20, 4);
    elf.resize(NOTE_OFFSET, 0);
    for v in [4u32, 4, XEN_ELFNOTE_PHYS32_ENTRY] {
        elf.extend_from_slice(&v.to_le_bytes());
    }
    elf.extend_from_slice(b"Xen\0");
    elf.extend_from_slice(&ENTRY.to_le_bytes());
    elf.resize(CODE_OFFSET, 0);
    elf.extend_from_slice(&code);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_loader_finds_the_pvh_entry() {
        let ram = crate::memory::create(16).unwrap();
        let path = std::env::temp_dir().join(format!("hull-test-image-{}", std::process::id()));
        std::fs::write(&path, pvh_halt_image()).unwrap();
        let (entry, end) = crate::boot::load_kernel(&ram.mem, &path).unwrap();
        assert_eq!(entry.0, u64::from(ENTRY));
        assert_eq!(end, u64::from(ENTRY) + code().len() as u64);
        std::fs::remove_file(&path).unwrap();
    }
}
