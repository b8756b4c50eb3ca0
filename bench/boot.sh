#!/usr/bin/env bash
# Boot benchmark: boots the Hull guest N times with each VMM/image variant,
# alternating variants, and prints medians of the guest's uptime at the agent's
# ready marker and of the wall time from VMM start to exit. Run inside the lab
# automatically when this host's KVM cannot boot a standard guest.
#
# usage: bench/boot.sh [RUNS]          (default 5)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${1:-5}"
if [[ -z "${HULL_LAB:-}" ]]; then
    (cd "$root" && cargo build -q --release -p hull-vmm)
fi
if [[ -z "${HULL_LAB:-}" ]] && ! "$root/scripts/kvm-check.sh" >/dev/null; then
    kernel="$("$root/kernel-config/build.sh")/vmlinux" initrd="$("$root/rootfs/build.sh")"
    gz="$("$root/rootfs/build.sh" --gzip)"
    export HULL_KERNEL="$kernel" HULL_INITRD="$initrd" HULL_INITRD_GZ="$gz"
    exec "$root/tests/lab/lab.sh" --timeout 1200 -- "$0" "$runs"
fi
kernel="${HULL_KERNEL:-$("$root/kernel-config/build.sh" --path)/vmlinux}"
initrd="${HULL_INITRD:-$("$root/rootfs/build.sh" --path)}"
gz="${HULL_INITRD_GZ:-$("$root/rootfs/build.sh" --gzip)}"
cmdline="console=ttyS0 reboot=t panic=-1 quiet hull.selftest=ready"

qemu_microvm() { # initrd
    qemu-system-x86_64 -M microvm,acpi=off,x-option-roms=off,rtc=off -enable-kvm -cpu host \
        -m 256M -smp 1 -nodefaults -no-reboot -display none -serial stdio \
        -kernel "$kernel" -initrd "$1" -append "$cmdline" </dev/null
}
hull_vmm() { # initrd
    "$root/target/release/hull-vmm" --kernel "$kernel" --initrd "$1" --memory 256 --vcpus 1 \
        --cmdline "$cmdline" </dev/null
}
variants=("hull-vmm cpio" "hull-vmm cpio.gz" "qemu-microvm cpio" "qemu-microvm cpio.gz")
run_variant() {
    case "$1" in
        "hull-vmm cpio") hull_vmm "$initrd" ;;
        "hull-vmm cpio.gz") hull_vmm "$gz" ;;
        "qemu-microvm cpio") qemu_microvm "$initrd" ;;
        "qemu-microvm cpio.gz") qemu_microvm "$gz" ;;
    esac
}
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "n/a"} else if (NR%2) {printf "%.2f\n", a[(NR+1)/2]} else {printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}}'; }

tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
for ((i = 1; i <= runs; i++)); do
    for v in "${variants[@]}"; do
        f="$tmp/${v// /_}"
        t0=$(date +%s.%N)
        out="$(run_variant "$v" 2>&1 | tr -d '\r')" || true
        t1=$(date +%s.%N)
        up="$(grep -o 'HULL_AGENT_READY uptime=[0-9.]*' <<<"$out" | head -1 | cut -d= -f2)"
        [[ -n "$up" ]] || { echo "boot $i of '$v' did not reach the ready marker:"; echo "$out" | tail -5; continue; }
        echo "$up" >> "$f.ready"
        echo "$t1 - $t0" | bc >> "$f.wall"
    done
done
echo
echo "| variant | runs | guest uptime at ready (median, s) | VMM start to exit (median, s) |"
echo "|---|---|---|---|"
for v in "${variants[@]}"; do
    f="$tmp/${v// /_}"
    echo "| $v | $(wc -l < "$f.ready" 2>/dev/null || echo 0) | $(median < "$f.ready") | $(median < "$f.wall") |"
done
echo
echo "kernel $(stat -c %s "$kernel") B vmlinux; image $(stat -c %s "$initrd") B cpio, $(stat -c %s "$gz") B cpio.gz"
