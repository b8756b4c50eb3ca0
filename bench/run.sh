#!/usr/bin/env bash
# `make bench`: the isolation benchmark, Hull vs runc (and crun), through one
# private containerd. Builds what it needs, then runs the driver inside the lab
# (a nested VM with a /dev/kvm that boots standard guests) unless this host's
# KVM can boot guests itself. Results land in bench/results/<UTC time>/
# (report.md, data.json, data.csv, start-latency.svg, memory-per-pod.svg, log.txt).
#
# usage: bench/run.sh [OUT_DIR]        HULL_BENCH_* variables: see bench/README.md
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/bench/results/$(date -u +%Y%m%d-%H%M%S)}"
musl=x86_64-unknown-linux-musl
die() { echo "bench: $*" >&2; exit 1; }

if [[ -n "${HULL_BENCH_INSIDE:-}" ]]; then
    # Inside the lab (or directly on a KVM host): everything was built outside.
    args=(run --out "$out" --checkout "$root" --image-tar "$HULL_BENCH_IMAGE"
          --shim-dir "$root/target/release" --hull-vmm "$root/target/release/hull-vmm")
    [[ -n "${HULL_BENCH_KERNEL:-}" ]] && args+=(--kernel "$HULL_BENCH_KERNEL")
    [[ -n "${HULL_BENCH_INITRD:-}" ]] && args+=(--initrd "$HULL_BENCH_INITRD")
    [[ -n "${HULL_BENCH_VIRTIOFSD:-}" ]] && args+=(--virtiofsd "$HULL_BENCH_VIRTIOFSD")
    exec "$root/target/release/hull-bench" "${args[@]}"
fi

started=$(date +%s)
cd "$root"
echo "bench: building hull-bench, the shim and hull-vmm (release) and the static probe" >&2
cargo build -q --release -p hull-bench -p containerd-shim-hull-v2 -p hull-vmm
cargo build -q --release -p hull-bench --bin hull-bench-probe --target "$musl" \
    || die "building the static probe failed (is the musl target installed? run 'make setup')"
HULL_BENCH_IMAGE="$(tests/images/bench.sh "$root/target/$musl/release/hull-bench-probe")"
export HULL_BENCH_IMAGE

# Hull's guest: a missing piece is not fatal; the report then says why Hull did not run.
if kdir="$(kernel-config/build.sh --path 2>/dev/null)"; then
    export HULL_BENCH_KERNEL="$kdir/vmlinux"
else
    echo "bench: no guest kernel built (make kernel); Hull will be reported as not available" >&2
fi
if initrd="$(rootfs/build.sh 2>/dev/null)"; then
    export HULL_BENCH_INITRD="$initrd"
else
    echo "bench: building the guest image failed (make image); Hull will be reported as not available" >&2
fi
for v in "$HOME/.cargo/bin/virtiofsd" /usr/local/bin/virtiofsd /usr/libexec/virtiofsd; do
    [[ -x "$v" ]] && { export HULL_BENCH_VIRTIOFSD="$v"; break; }
done

mkdir -p "$out"
export HULL_BENCH_INSIDE=1
set +e
if kvm="$(scripts/kvm-check.sh)"; then
    echo "bench: $kvm: running directly on this host" >&2
    "$root/bench/run.sh" "$out"
    rc=$?
    where="directly on this host"
else
    echo "bench: $kvm" >&2
    echo "bench: running inside the lab; results go to $out" >&2
    tests/lab/lab.sh --timeout "${HULL_BENCH_LAB_TIMEOUT:-1500}" --share "$out" -- "$root/bench/run.sh" "$out"
    rc=$?
    where="in the lab, including its boot and power-off"
fi
set -e
took=$(( $(date +%s) - started ))
if [[ -f "$out/data.json" ]]; then
    printf 'The whole `bench/run.sh` command (build check, images, %s) took %d s.\n' "$where" "$took" \
        > "$out/whole-command.txt"
    "$root/target/release/hull-bench" render "$out" || rc=1
    echo "bench: report: $out/report.md (whole command: ${took} s, exit $rc)" >&2
else
    echo "bench: no report was written (exit $rc after ${took} s); see the output above and $out/log.txt" >&2
    [[ $rc -eq 0 ]] && rc=1
fi
exit "$rc"
