#!/usr/bin/env bash
# The demo: boots the Hull guest (kernel + agent image) in a KVM microVM and
# shows the agent's ready line, inside the lab when this host's KVM needs it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
kernel="$(kernel-config/build.sh)/vmlinux"
initrd="$(rootfs/build.sh)"
echo "demo: $(scripts/kvm-check.sh)"
echo "demo: guest kernel $kernel ($(stat -c %s "$kernel") B), image $initrd ($(stat -c %s "$initrd") B)"
boot=(qemu-system-x86_64 -M microvm,acpi=off,x-option-roms=off,rtc=off -enable-kvm -cpu host
      -m 256M -smp 1 -nodefaults -no-reboot -display none -serial stdio
      -kernel "$kernel" -initrd "$initrd" -append "console=ttyS0 reboot=t panic=-1 quiet hull.selftest=ready")
echo "demo: booting the Hull guest under the reference VMM (QEMU microvm) until hull-vmm lands"
if scripts/kvm-check.sh >/dev/null; then
    "${boot[@]}" </dev/null | tr -d '\r'
else
    tests/lab/lab.sh --timeout 300 -- "${boot[@]}"
fi
