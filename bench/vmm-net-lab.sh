#!/usr/bin/env bash
# virtio-net guest <-> network namespace TCP figures in the lab: runs lab_vmm's
# net_tcp_both_ways_over_ipv4_and_ipv6 (a tap in a namespace the test creates, 16 MiB each way,
# 200 one-byte round trips) RUNS times and prints each run's NET_FIGURES line and the medians.
# hull-vmm is the release build (the test's CARGO_BIN_EXE under `cargo test --release`).
#
# usage (host):  bench/vmm-net-lab.sh [RUNS]     runs itself inside the lab (tests/lab/lab.sh)
# usage (lab):   HULL_LAB=1 bench/vmm-net-lab.sh [RUNS] TEST_BINARY
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${1:-3}"
if [[ "${HULL_LAB:-}" != 1 ]]; then
    bin="$(cd "$root" && cargo test -q --release -p hull-vmm --test lab_vmm --no-run \
        --message-format=json 2>/dev/null | grep -o '"executable":"[^"]*lab_vmm[^"]*"' \
        | tail -1 | cut -d'"' -f4)"
    [[ -x "$bin" ]] || { echo "vmm-net-lab: cannot build the lab_vmm test binary" >&2; exit 1; }
    export HULL_KERNEL="${HULL_KERNEL:-$("$root/kernel-config/build.sh" --path)/vmlinux}"
    exec "$root/tests/lab/lab.sh" --timeout 2400 -- env HULL_LAB=1 "$0" "$runs" "$bin"
fi
bin="$2"
median() { sort -n | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "n/a")}'; }
lines=()
for i in $(seq "$runs"); do
    line=$("$bin" --ignored --exact lab_net::net_tcp_both_ways_over_ipv4_and_ipv6 --nocapture \
        --test-threads=1 2>&1 | grep -m1 '^NET_FIGURES' || true)
    echo "run $i: ${line:-FAILED (no NET_FIGURES line)}"
    [[ -n "$line" ]] && lines+=("$line")
done
field() { printf '%s\n' "${lines[@]}" | grep -o "$1=[0-9.]*" | cut -d= -f2 | median; }
echo "median over ${#lines[@]} runs: rtt $(field rtt_us) us," \
    "netns->guest $(field netns_to_guest_mbit) Mbit/s, guest->netns $(field guest_to_netns_mbit) Mbit/s"
