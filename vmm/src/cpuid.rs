//! CPUID for each vCPU: KVM's supported set, with the APIC ids and the topology of N vCPUs
//! (one thread per core, all cores in one package).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_FEATURES: u32 = 0x8000_0001;
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;
const ECX_AMD_CMP_LEGACY: u32 = 1 << 1;
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Bits needed to number `count` cores.
fn id_bits(count: u32) -> u32 {
    count.max(1).next_power_of_two().trailing_zeros()
}

fn patch_entry(e: &mut kvm_cpuid_entry2, id: u32, count: u32, tsc_deadline: bool) {
    match e.function {
        LEAF_FEATURES => {
            // APIC id, logical processors per package, CLFLUSH line size 8 * 8 bytes.
            e.ebx = (id << 24) | (count << 16) | (8 << 8) | (e.ebx & 0xff);
            e.ecx |= ECX_HYPERVISOR;
            // KVM emulates the TSC-deadline LAPIC timer but leaves the bit to userspace; without
            // it the guest calibrates the LAPIC timer against the PIT, slowly and unreliably.
            if tsc_deadline {
                e.ecx |= ECX_TSC_DEADLINE;
            }
            if count > 1 {
                e.edx |= EDX_HTT;
            } else {
                e.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // Cores per package - 1 in bits 31:26; every cache private to one core except the
            // last level, shared by the package.
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { count - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26);
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            e.edx = id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (LEVEL_SMT << 8) | e.index;
                }
                1 => {
                    e.eax = id_bits(count);
                    e.ebx = count;
                    e.ecx = (LEVEL_CORE << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        LEAF_AMD_FEATURES => {
            if count > 1 {
                e.ecx |= ECX_AMD_CMP_LEGACY;
            } else {
                e.ecx &= !ECX_AMD_CMP_LEGACY;
            }
        }
        LEAF_AMD_SIZES => {
            e.ecx = (id_bits(count) << 12) | (count - 1);
        }
        LEAF_AMD_TOPOLOGY => {
            e.eax = id;
            e.ebx = id & 0xff;
            e.ecx = 0;
        }
        _ => {}
    }
}

/// Adapts KVM's supported CPUID for vCPU `id` of `count`; `tsc_deadline` when KVM has
/// KVM_CAP_TSC_DEADLINE_TIMER.
pub fn for_vcpu(supported: &CpuId, id: u8, count: u8, tsc_deadline: bool) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        patch_entry(e, u32::from(id), u32::from(count), tsc_deadline);
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn sample() -> CpuId {
        CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_CACHE_PARAMS, 0),
            kvm_cpuid_entry2 {
                function: LEAF_CACHE_PARAMS,
                index: 3,
                eax: 3 << 5,
                ..Default::default()
            },
            entry(LEAF_TOPOLOGY, 0),
            entry(LEAF_TOPOLOGY, 1),
            entry(LEAF_TOPOLOGY, 2),
            entry(LEAF_AMD_SIZES, 0),
        ])
        .unwrap()
    }

    #[test]
    fn apic_ids_and_counts() {
        let c = for_vcpu(&sample(), 3, 4, true);
        assert_ne!(c.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[1].eax >> 26, 3);
        assert_eq!((e[2].eax >> 14) & 0xfff, 3);
        assert_eq!((e[3].ebx, e[3].edx, e[3].ecx >> 8), (1, 3, LEVEL_SMT));
        assert_eq!((e[4].eax, e[4].ebx, e[4].ecx >> 8), (2, 4, LEVEL_CORE));
        assert_eq!(e[5].ebx, 0);
        assert_eq!(e[6].ecx, (2 << 12) | 3);
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let c = for_vcpu(&sample(), 0, 1, false);
        assert_eq!(c.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(c.as_slice()[0].edx & EDX_HTT, 0);
        assert_eq!(c.as_slice()[4].eax, 0);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 8].map(id_bits), [0, 1, 2, 2, 3, 3]);
    }
}
