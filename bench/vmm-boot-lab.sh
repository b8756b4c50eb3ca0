#!/usr/bin/env bash
# Boot-to-ready of the Hull guest, hull-vmm vs QEMU -M microvm, side by side in one lab run.
# Same kernel (ELF vmlinux), initramfs, memory and vCPUs; each run is timed from VMM start to
# the moment the agent's HULL_AGENT_READY line arrives (wall), the guest's own uptime in that
# line is noted, and so is the time until the VMM exits (the self-test powers off). QEMU's
# guest RAM is anonymous memory, which QEMU advises for huge pages (THP `enabled`, not
# `shmem_enabled`): compare it with the first hull-vmm column.
# hull-vmm runs twice per round: with the host's shmem transparent huge pages at `advise` (what
# hull-check asks for; hull-vmm advises them for guest RAM) and at `never` (Debian's default).
#
# usage (host):  bench/vmm-boot-lab.sh [RUNS]     runs itself inside the lab (tests/lab/lab.sh)
# usage (lab):   HULL_LAB=1 bench/vmm-boot-lab.sh [RUNS]
# HULL_BOOT_JSON=FILE also writes every boot's figures there (`make bench`'s boot.json).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${1:-5}"
if [[ "${HULL_LAB:-}" != 1 ]]; then
    (cd "$root" && cargo build -q --release -p hull-vmm)
    export HULL_KERNEL="${HULL_KERNEL:-$("$root/kernel-config/build.sh" --path)/vmlinux}"
    export HULL_INITRD="${HULL_INITRD:-$("$root/rootfs/build.sh" --path)}"
    # The lab caches the host root, so each VMM's binary and libraries come from the page
    # cache after the warm-up boot below, as on a real host (uncached, every exec read them
    # through the lab's virtio-fs again: ~1 s for hull-vmm, ~6-9 s for QEMU, 2026-12-01).
    HULL_LAB_ROOT_CACHE="${HULL_LAB_ROOT_CACHE:-always}" \
        exec "$root/tests/lab/lab.sh" --timeout 1500 -- "$0" "$runs"
fi
kernel="$HULL_KERNEL" initrd="$HULL_INITRD"
cmdline="console=ttyS0 reboot=t panic=-1 quiet hull.selftest=ready"
mem=256 vcpus=1

# Prints "<ready ms> <guest uptime s> <exit ms> <first KVM_RUN ms>" for one boot of the
# given command: wall time from the VMM's start to the agent's ready line (stamped when the
# line arrives), the guest's uptime in that line, the wall time until the VMM exited (the
# self-test powers the guest off after its line), and the time of hull-vmm's first KVM_RUN
# from its own debug line's timestamp ("n/a" for QEMU, which prints none).
measure() {
    local start
    start=$(date +%s%N)
    "$@" 2>&1 | {
        ready="n/a" up="n/a" kvm="n/a"
        while IFS= read -r line; do
            if [[ $ready == n/a && $line == *HULL_AGENT_READY* ]]; then
                ready=$(( ($(date +%s%N) - start) / 1000000 ))
                up="${line##*uptime=}"; up="${up%% *}"
            elif [[ $kvm == n/a && $line == *"first KVM_RUN"* ]]; then
                # tracing's wall-clock timestamp opens the line (after a colour code).
                ts="$(sed -E 's/\x1b\[[0-9;]*m//g; s/ .*//' <<< "$line")"
                ns="$(date -d "$ts" +%s%N 2>/dev/null)" && kvm=$(( (ns - start) / 1000000 ))
            fi
        done
        echo "$ready $up $(( ($(date +%s%N) - start) / 1000000 )) $kvm"
    }
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "n/a")}'; }

thp=/sys/kernel/mm/transparent_hugepage/shmem_enabled
thp_before="$(sed -E 's/.*\[([a-z_]+)\].*/\1/' "$thp")"
hull_boot() { # SHMEM-THP-SETTING
    echo "$1" > "$thp"
    HULL_LOG=warn,hull_vmm::vcpu=debug measure "$root/target/release/hull-vmm" --kernel "$kernel" --initrd "$initrd" \
        --memory "$mem" --vcpus "$vcpus" --cmdline "$cmdline"
}
qemu_boot() {
    measure qemu-system-x86_64 -M microvm -enable-kvm -cpu host -m "$mem" -smp "$vcpus" \
        -nodefaults -no-user-config -display none -serial stdio -no-reboot \
        -kernel "$kernel" -initrd "$initrd" -append "$cmdline"
}
# One untimed boot of each first: binaries, kernel and image in the page cache.
hull_boot advise > /dev/null; qemu_boot > /dev/null
hull=() nothp=() qemu=() hull_up=() nothp_up=() qemu_up=() hull_end=() nothp_end=() qemu_end=()
hull_kvm=() nothp_kvm=() qemu_kvm=()
for i in $(seq "$runs"); do
    # No process substitution: the lab has no /dev/fd.
    read -r ms up end kvm <<< "$(hull_boot advise)"
    hull+=("$ms"); hull_up+=("$up"); hull_end+=("$end"); hull_kvm+=("$kvm")
    read -r ms up end kvm <<< "$(hull_boot never)"
    nothp+=("$ms"); nothp_up+=("$up"); nothp_end+=("$end"); nothp_kvm+=("$kvm")
    echo "$thp_before" > "$thp"
    read -r ms up end kvm <<< "$(qemu_boot)"
    qemu+=("$ms"); qemu_up+=("$up"); qemu_end+=("$end"); qemu_kvm+=("$kvm")
    echo "run $i: ready (guest uptime, exit): hull-vmm ${hull[-1]} ms (${hull_up[-1]} s, ${hull_end[-1]} ms)  without huge pages ${nothp[-1]} ms (${nothp_up[-1]} s, ${nothp_end[-1]} ms)  qemu-microvm ${qemu[-1]} ms (${qemu_up[-1]} s, ${qemu_end[-1]} ms); hull-vmm's first KVM_RUN ${hull_kvm[-1]} / ${nothp_kvm[-1]} ms"
done
echo "$thp_before" > "$thp"
med() { printf '%s\n' "$@" | median; }
h=$(med "${hull[@]}") n=$(med "${nothp[@]}") q=$(med "${qemu[@]}")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", a/b}'; }
echo "median start-to-ready: hull-vmm $h ms, without huge pages $n ms, qemu-microvm $q ms; ratio to qemu $(ratio "$h" "$q") ($(ratio "$n" "$q") without huge pages)"
echo "median guest uptime at ready: hull-vmm $(med "${hull_up[@]}") s, without huge pages $(med "${nothp_up[@]}") s, qemu-microvm $(med "${qemu_up[@]}") s"
echo "median start-to-exit: hull-vmm $(med "${hull_end[@]}") ms, without huge pages $(med "${nothp_end[@]}") ms, qemu-microvm $(med "${qemu_end[@]}") ms"
echo "median start to the first KVM_RUN: hull-vmm $(med "${hull_kvm[@]}") ms, without huge pages $(med "${nothp_kvm[@]}") ms"
# JSON arrays of the figures that arrived ("n/a": the ready line never came).
arr() { local v out=(); for v in "$@"; do [[ $v =~ ^[0-9.]+$ ]] && out+=("$v"); done; local IFS=,; echo "[${out[*]}]"; }
runs_json() { # names of the READY, UPTIME, EXIT and first KVM_RUN arrays
    local -n r="$1" u="$2" e="$3" k="$4"
    echo "{\"ready_ms\": $(arr "${r[@]}"), \"uptime_s\": $(arr "${u[@]}"), \"exit_ms\": $(arr "${e[@]}"), \"first_run_ms\": $(arr "${k[@]}")}"
}
if [[ -n "${HULL_BOOT_JSON:-}" ]]; then
    printf '{"memory_mib": %s, "vcpus": %s,\n "hull": %s,\n "hull_no_thp": %s,\n "qemu": %s}\n' \
        "$mem" "$vcpus" "$(runs_json hull hull_up hull_end hull_kvm)" \
        "$(runs_json nothp nothp_up nothp_end nothp_kvm)" "$(runs_json qemu qemu_up qemu_end qemu_kvm)" \
        > "$HULL_BOOT_JSON"
fi
