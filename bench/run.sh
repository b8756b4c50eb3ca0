#!/usr/bin/env bash
# `make bench`: the isolation benchmark, Hull vs runc (and crun), through one
# private containerd, then the pod network benchmark (pod<->node TCP, runc and
# Hull pods through CRI: lab_cri's net_bench test; HULL_BENCH_NET=0 skips it),
# then hull-vmm's boot against QEMU microvm's (bench/vmm-boot-lab.sh;
# HULL_BENCH_BOOT=0 skips it).
# Builds what it needs, then runs both inside the lab (a nested VM with a
# /dev/kvm that boots standard guests) unless this host's KVM can boot guests
# itself. Results land in bench/results/<UTC time>/ (report.md, data.json,
# data.csv, network.json, boot.json, the plots, log.txt, network-log.txt,
# boot-log.txt).
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
          --shim-dir "$root/target/release" --hull-vmm "${HULL_BENCH_HULL_VMM:-$root/target/release/hull-vmm}")
    [[ -n "${HULL_BENCH_KERNEL:-}" ]] && args+=(--kernel "$HULL_BENCH_KERNEL")
    [[ -n "${HULL_BENCH_INITRD:-}" ]] && args+=(--initrd "$HULL_BENCH_INITRD")
    [[ -n "${HULL_BENCH_VIRTIOFSD:-}" ]] && args+=(--virtiofsd "$HULL_BENCH_VIRTIOFSD")
    rc=0
    "$root/target/release/hull-bench" "${args[@]}" || rc=$?
    # The pod network benchmark: its own private containerd with the CRI
    # plugin and a CNI bridge; it writes network.json, `render` reads it.
    if [[ -n "${HULL_BENCH_NET_BIN:-}" ]]; then
        echo "bench: pod network benchmark (log: $out/network-log.txt)" >&2
        net_rc=0
        HULL_NET_BENCH_OUT="$out/network.json" "$HULL_BENCH_NET_BIN" --ignored --exact \
            net_bench::lab_cri_bench_pod_network_runc_and_hull --test-threads=1 --nocapture \
            > "$out/network-log.txt" 2>&1 || net_rc=$?
        grep '^NET_BENCH' "$out/network-log.txt" >&2 || true
        if [[ ! -f "$out/network.json" ]]; then
            echo "the network benchmark wrote no figures (exit $net_rc): see network-log.txt" > "$out/network-note.txt"
        elif [[ $net_rc -ne 0 ]]; then
            echo "bench: the network benchmark reported failures (exit $net_rc): see $out/network-log.txt" >&2
        fi
    fi
    # hull-vmm against QEMU microvm, same guest: boot.json, read by `render`.
    if [[ "${HULL_BENCH_BOOT:-1}" == 0 ]]; then
        echo "skipped: HULL_BENCH_BOOT=0" > "$out/boot-note.txt"
    elif ! command -v qemu-system-x86_64 > /dev/null; then
        echo "qemu-system-x86_64 is not installed (apt install qemu-system-x86)" > "$out/boot-note.txt"
    elif [[ -z "${HULL_BENCH_KERNEL:-}" || -z "${HULL_BENCH_INITRD:-}" ]]; then
        echo "no guest kernel or image was built" > "$out/boot-note.txt"
    else
        echo "bench: boot, hull-vmm against QEMU microvm (log: $out/boot-log.txt)" >&2
        HULL_LAB=1 HULL_KERNEL="$HULL_BENCH_KERNEL" HULL_INITRD="$HULL_BENCH_INITRD" \
            HULL_BOOT_JSON="$out/boot.json" "$root/bench/vmm-boot-lab.sh" "${HULL_BENCH_BOOT_RUNS:-5}" \
            > "$out/boot-log.txt" 2>&1 || echo "the boot comparison failed: see boot-log.txt" > "$out/boot-note.txt"
        grep '^median' "$out/boot-log.txt" >&2 || true
    fi
    exit "$rc"
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
if [[ "${HULL_BENCH_NET:-1}" != 0 ]]; then
    echo "bench: building the CRI test binary (release) for the pod network benchmark" >&2
    HULL_BENCH_NET_BIN="$(cargo test -q --release -p hull-cri-tests --test lab_cri --no-run --message-format=json \
        | jq -r 'select(.reason=="compiler-artifact" and .executable!=null) | .executable' | tail -1)"
    [[ -x "$HULL_BENCH_NET_BIN" ]] || die "building the lab_cri test binary failed"
    export HULL_BENCH_NET_BIN
    # The test imports the same bench image (its probe serves TCP in the pods).
    export HULL_BENCH_PROBE="$root/target/$musl/release/hull-bench-probe"
fi
for v in "$HOME/.cargo/bin/virtiofsd" /usr/local/bin/virtiofsd /usr/libexec/virtiofsd; do
    [[ -x "$v" ]] && { export HULL_BENCH_VIRTIOFSD="$v"; break; }
done

mkdir -p "$out"
[[ "${HULL_BENCH_NET:-1}" == 0 ]] && echo "skipped: HULL_BENCH_NET=0" > "$out/network-note.txt"
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
    lab_timeout=3000; [[ "${HULL_BENCH_NET:-1}" == 0 ]] && lab_timeout=2100
    # The lab caches the read-only host root, as the test command's lab tier does
    # (nothing on the host changes during the run; HULL_LAB_ROOT_CACHE=none turns it off).
    HULL_LAB_ROOT_CACHE="${HULL_LAB_ROOT_CACHE:-always}" \
        tests/lab/lab.sh --timeout "${HULL_BENCH_LAB_TIMEOUT:-$lab_timeout}" --share "$out" -- "$root/bench/run.sh" "$out"
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
