//! KVM smoke tests with tiny real-mode guests: they run on any /dev/kvm, PVM included, and cover
//! the run loop, port and MMIO exits, the serial console and the i8042 reset path.

use std::sync::{Arc, Mutex};

use hull_vmm::builder;
use hull_vmm::config::Console;
use hull_vmm::devices::bus::BusDevice;
use hull_vmm::exit::ExitReason;
use hull_vmm::vmm::Vmm;
use hull_vmm::{memory, vcpu};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use vm_memory::{Bytes, GuestAddress};

const CODE_ADDR: u64 = 0x1000;
const MMIO_ADDR: u64 = 0xd000_0000;

/// Records writes, answers reads with 0x21 ('!').
#[derive(Default)]
struct Probe(Vec<(u64, Vec<u8>)>);

impl BusDevice for Probe {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(b'!');
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.0.push((offset, data.to_vec()));
    }
}

fn real_mode_guest() -> Vec<u8> {
    vec![
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'H', // mov al, 'H'
        0xee, // out dx, al
        0xb0, b'i', // mov al, 'i'
        0xee, // out dx, al
        0xa2, 0x10, 0x00, // mov [0x10], al   (MMIO write: ds.base is the probe)
        0xa0, 0x04, 0x00, // mov al, [0x4]    (MMIO read)
        0xee, // out dx, al
        0xb0, 0xfe, // mov al, 0xfe
        0xe6, 0x64, // out 0x64, al       (i8042 reset)
        0xf4, // hlt
        0xeb, 0xfd, // jmp back to hlt
    ]
}

#[test]
fn real_mode_guest_reaches_serial_mmio_and_reset() {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "KVM smoke tests need /dev/kvm (this host and CI have one)"
    );
    let console = std::env::temp_dir().join(format!("hull-smoke-console-{}", std::process::id()));
    let _ = std::fs::remove_file(&console);

    let ram = memory::create(16).unwrap();
    let mut parts = builder::create_vm(ram).unwrap();
    builder::register_memory(&parts.vm, &parts.ram.mem).unwrap();
    builder::attach_legacy(&mut parts, &Console::File(console.clone())).unwrap();
    let probe = Arc::new(Mutex::new(Probe::default()));
    parts.mmio.insert(MMIO_ADDR, 0x1000, probe.clone()).unwrap();
    parts
        .ram
        .mem
        .write_slice(&real_mode_guest(), GuestAddress(CODE_ADDR))
        .unwrap();

    let fd = parts.vm.create_vcpu(0).unwrap();
    let supported = parts
        .kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .unwrap();
    vcpu::configure(&fd, 0, &hull_vmm::cpuid::for_vcpu(&supported, 0, 1, false)).unwrap();
    let mut sregs = fd.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = MMIO_ADDR;
    sregs.ds.selector = 0;
    fd.set_sregs(&sregs).unwrap();
    let regs = kvm_bindings::kvm_regs {
        rip: CODE_ADDR,
        rflags: 2,
        ..Default::default()
    };
    fd.set_regs(&regs).unwrap();

    let reason = Vmm::new(parts, vec![fd]).run();
    assert_eq!(reason, ExitReason::GuestReset);
    assert_eq!(std::fs::read(&console).unwrap(), b"Hi!");
    assert_eq!(probe.lock().unwrap().0, vec![(0x10, vec![b'i'])]);
    std::fs::remove_file(&console).unwrap();
}
