#!/usr/bin/env bash
# The demo, in two parts:
# 1. hull-vmm boots the Hull guest (kernel + agent image) in a KVM microVM and
#    shows what the guest said: its kernel, the agent's ready line with the
#    guest's uptime, and the VMM's exit status once the guest powers off.
# 2. A containerd (private to the demo) runs a busybox container with
#    `ctr run --runtime io.containerd.hull.v2`, through the shim, VMM and guest
#    files that `make setup` installed: the container prints its kernel release.
# Runs inside the lab when this host's KVM cannot boot a standard guest.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
if [[ -z "${HULL_LAB:-}" ]]; then
    kernel="$(kernel-config/build.sh)/vmlinux"
    initrd="$(rootfs/build.sh)"
    cargo build -q --release -p hull-vmm
    echo "demo: $(scripts/kvm-check.sh)"
    echo "demo: guest kernel $kernel ($(stat -c %s "$kernel") B), image $initrd ($(stat -c %s "$initrd") B)"
    export HULL_KERNEL="$kernel" HULL_INITRD="$initrd"
    if ! scripts/kvm-check.sh >/dev/null; then
        echo "demo: starting the lab (nested VM, ~20 s) to boot the guest there"
        exec tests/lab/lab.sh --timeout 900 -- "$0"
    fi
fi
vmm="$root/target/release/hull-vmm"
echo "demo: host kernel $(uname -r); booting the Hull guest with hull-vmm (1 vCPU, 256 MiB)"
start=$(date +%s.%N)
set +e
console="$("$vmm" --kernel "$HULL_KERNEL" --initrd "$HULL_INITRD" --vcpus 1 --memory 256 \
    --cmdline "console=ttyS0 reboot=t panic=-1 hull.selftest=ready" 2>&1 | tr -d '\r')"
rc=$?
set -e
end=$(date +%s.%N)
grep -m1 -o 'Linux version [^ ]*' <<<"$console" | sed 's/^/guest: /' || true
grep -m1 'HULL_AGENT_READY' <<<"$console" | sed 's/^/guest: /' || { echo "$console" | tail -20; echo "demo: the agent never became ready"; exit 1; }
printf 'demo: hull-vmm exited with status %d after %.2f s (0: the guest powered off)\n' "$rc" "$(echo "$end - $start" | bc)"
[[ $rc == 0 ]] || exit "$rc"

echo
echo "demo: starting a containerd of its own; Hull is installed for it in /usr/local/bin"
export HULL_CTRD_DIR=/run/hull-demo/containerd
sock="$(tests/lab/containerd.sh start)"
trap 'tests/lab/containerd.sh stop >/dev/null 2>&1 || true' EXIT
cmd=(ctr --address "$sock" run --rm --runtime io.containerd.hull.v2 docker.io/library/busybox:latest hull-demo uname -r)
echo "demo: ${cmd[*]}"
start=$(date +%s.%N)
if ! release="$(timeout 600 "${cmd[@]}")"; then
    echo "demo: ctr run under Hull failed; the shim's log lines (from $HULL_CTRD_DIR/containerd.log):"
    grep -a 'hull\|sandbox=' "$HULL_CTRD_DIR/containerd.log" | tail -40
    exit 1
fi
end=$(date +%s.%N)
echo "container: $release"
printf 'demo: the container saw kernel %s (the Hull guest), the host runs %s; ctr run took %.1f s\n' \
    "$release" "$(uname -r)" "$(echo "$end - $start" | bc)"
[[ "$release" != "$(uname -r)" ]]
