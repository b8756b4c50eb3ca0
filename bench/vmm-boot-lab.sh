#!/usr/bin/env bash
# Boot-to-ready of the Hull guest, hull-vmm vs QEMU -M microvm, side by side in one lab run.
# Same kernel (ELF vmlinux), initramfs, memory and vCPUs; each run is timed from VMM start to
# the agent's HULL_AGENT_READY line (wall), and the guest's own uptime at that point is noted.
# hull-vmm runs twice per round: with the host's shmem transparent huge pages at `advise` (what
# hull-check asks for; hull-vmm advises them for guest RAM) and at `never` (Debian's default).
#
# usage (host):  bench/vmm-boot-lab.sh [RUNS]     runs itself inside the lab (tests/lab/lab.sh)
# usage (lab):   HULL_LAB=1 bench/vmm-boot-lab.sh [RUNS]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${1:-5}"
if [[ "${HULL_LAB:-}" != 1 ]]; then
    (cd "$root" && cargo build -q --release -p hull-vmm)
    export HULL_KERNEL="${HULL_KERNEL:-$("$root/kernel-config/build.sh" --path)/vmlinux}"
    export HULL_INITRD="${HULL_INITRD:-$("$root/rootfs/build.sh" --path)}"
    exec "$root/tests/lab/lab.sh" --timeout 1500 -- "$0" "$runs"
fi
kernel="$HULL_KERNEL" initrd="$HULL_INITRD"
cmdline="console=ttyS0 reboot=t panic=-1 quiet hull.selftest=ready"
mem=256 vcpus=1

# Prints "<wall ms> <guest uptime s>" for one boot of the given command.
measure() {
    local start end line
    start=$(date +%s%N)
    line=$("$@" 2>/dev/null | grep -m1 -a HULL_AGENT_READY || true)
    end=$(date +%s%N)
    echo "$(( (end - start) / 1000000 )) ${line##*uptime=}"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "n/a")}'; }

thp=/sys/kernel/mm/transparent_hugepage/shmem_enabled
thp_before="$(sed -E 's/.*\[([a-z_]+)\].*/\1/' "$thp")"
hull_boot() { # SHMEM-THP-SETTING
    echo "$1" > "$thp"
    measure "$root/target/release/hull-vmm" --kernel "$kernel" --initrd "$initrd" \
        --memory "$mem" --vcpus "$vcpus" --cmdline "$cmdline"
}
hull=() nothp=() qemu=() hull_up=() nothp_up=() qemu_up=()
for i in $(seq "$runs"); do
    # No process substitution: the lab has no /dev/fd.
    read -r ms up <<< "$(hull_boot advise)"
    hull+=("$ms"); hull_up+=("${up:-n/a}")
    read -r ms up <<< "$(hull_boot never)"
    nothp+=("$ms"); nothp_up+=("${up:-n/a}")
    echo "$thp_before" > "$thp"
    res=$(measure qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m "$mem" -smp "$vcpus" \
        -nodefaults -no-user-config -display none -serial stdio -no-reboot \
        -kernel "$kernel" -initrd "$initrd" -append "$cmdline")
    read -r ms up <<< "$res"
    qemu+=("$ms"); qemu_up+=("${up:-n/a}")
    echo "run $i: hull-vmm ${hull[-1]} ms (guest ${hull_up[-1]} s)  hull-vmm without huge pages ${nothp[-1]} ms (guest ${nothp_up[-1]} s)  qemu-microvm ${qemu[-1]} ms (guest ${qemu_up[-1]} s)"
done
echo "$thp_before" > "$thp"
h=$(printf '%s\n' "${hull[@]}" | median) n=$(printf '%s\n' "${nothp[@]}" | median) q=$(printf '%s\n' "${qemu[@]}" | median)
hu=$(printf '%s\n' "${hull_up[@]}" | median) nu=$(printf '%s\n' "${nothp_up[@]}" | median) qu=$(printf '%s\n' "${qemu_up[@]}" | median)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
echo "median start-to-ready: hull-vmm $h ms, without huge pages $n ms, qemu-microvm $q ms; ratio to qemu $(ratio "$h" "$q") ($(ratio "$n" "$q") without huge pages)"
echo "median guest uptime at ready: hull-vmm $hu s, without huge pages $nu s, qemu-microvm $qu s"
