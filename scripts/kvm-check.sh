#!/usr/bin/env bash
# Tells whether this host's /dev/kvm can boot a standard guest kernel, and why.
# Prints one line. Exit 0: guests boot directly. Exit 3: guests need the lab
# (PVM-backed KVM, no /dev/kvm, or no access). Used by the tests and the demo.
set -uo pipefail

if [[ -d /sys/module/kvm_pvm ]]; then
    echo "kvm: PVM-backed /dev/kvm (kvm_pvm loaded): it cannot boot a standard guest kernel; guests run in the lab (tests/lab)"
    exit 3
fi
if [[ ! -e /dev/kvm ]]; then
    echo "kvm: no /dev/kvm (no hardware virtualization or kvm module not loaded); guests run in the lab (tests/lab)"
    exit 3
fi
if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
    echo "kvm: /dev/kvm is not accessible to $(id -un) (add the user to group $(stat -c %G /dev/kvm)); guests run in the lab (tests/lab)"
    exit 3
fi
for m in kvm_intel kvm_amd; do
    if [[ -d /sys/module/$m ]]; then
        echo "kvm: hardware KVM ($m); guests boot directly"
        exit 0
    fi
done
echo "kvm: /dev/kvm from an unknown module; guests run in the lab (tests/lab)"
exit 3
