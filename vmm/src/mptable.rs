//! Intel MP table: how an ACPI-less guest learns its vCPUs, the IOAPIC and the ISA interrupts.

use hull_protocol::vm::MAX_VCPUS;
use vm_memory::{Bytes, GuestAddress};

use crate::boot::EBDA_START;
use crate::memory::GuestMem;

/// Physical address of the IOAPIC (the in-kernel irqchip's).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Physical address of each vCPU's local APIC.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// Number of IOAPIC pins of KVM's in-kernel IOAPIC: GSIs 0..=23.
pub const IOAPIC_PINS: u8 = 24;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const ENTRY_CPU: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_INTSRC: u8 = 3;
const ENTRY_LINTSRC: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const HEADER_LEN: usize = 44;

/// Errors while writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// vCPU count out of range.
    #[error("an MP table describes 1 to {MAX_VCPUS} vCPUs, not {0}")]
    VcpuCount(u8),
    /// Guest memory too small or write failed.
    #[error("cannot write the MP table to guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// The bytes of the MP floating pointer plus configuration table for `vcpus` vCPUs, to be
/// placed at guest address `base`.
pub fn build(vcpus: u8, base: u32) -> Result<Vec<u8>, Error> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::VcpuCount(vcpus));
    }
    let ioapic_id = vcpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_CPU, id, APIC_VERSION, flags]);
        // CPU signature (family 6) and feature flags (FPU, APIC), then 8 reserved bytes.
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&((1u32 << 0) | (1 << 9)).to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']);
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 2;
    for irq in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[ENTRY_INTSRC, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINTSRC, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = base + 16;
    let mut table = Vec::with_capacity(HEADER_LEN + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"HULL    ");
    table.extend_from_slice(b"HULL-VMM    ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut out = Vec::with_capacity(16 + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&table_addr.to_le_bytes());
    out.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // 16-byte length, rev 1.4, checksum, features
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `vcpus` vCPUs at the start of the EBDA, where Linux scans for it.
pub fn write(mem: &GuestMem, vcpus: u8) -> Result<(), Error> {
    let bytes = build(vcpus, EBDA_START as u32)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(Error::Memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn table_checksums_and_counts() {
        for vcpus in 1..=MAX_VCPUS {
            let bytes = build(vcpus, EBDA_START as u32).unwrap();
            assert_eq!(&bytes[0..4], b"_MP_");
            assert_eq!(sum(&bytes[..16]), 0);
            let table = &bytes[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let entries = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(entries, u16::from(vcpus) + 2 + u16::from(IOAPIC_PINS) + 2);
            assert_eq!(table[HEADER_LEN + 3], CPU_ENABLED | CPU_BSP);
            // The whole table fits between the EBDA start and 640 KiB.
            assert!(EBDA_START as usize + bytes.len() <= 0xa0000);
        }
    }

    #[test]
    fn vcpu_count_is_checked() {
        assert!(build(0, 0).is_err());
        assert!(build(9, 0).is_err());
    }
}
