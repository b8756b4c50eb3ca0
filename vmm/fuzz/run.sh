#!/usr/bin/env bash
# Runs every hull-vmm fuzz target for a bounded time from its committed seeds
# (vmm/fuzz/seeds/<target>); crashes land in vmm/fuzz/artifacts/<target>/.
# Usage: vmm/fuzz/run.sh [SECONDS_PER_TARGET]   (default 35: 5 targets, about 3 minutes)
set -euo pipefail
cd "$(dirname "$0")"
per_target="${1:-35}"
targets=(mmio_sequence vsock_queue vsock_muxer blk_queue net_queue)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "skipped: cargo-fuzz is not installed (scripts/setup.sh installs it: cargo install cargo-fuzz)"
    exit 0
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "skipped: no nightly toolchain for cargo-fuzz (rustup toolchain install nightly)"
    exit 0
fi

if ! cargo +nightly fuzz build >fuzz-build.log 2>&1; then
    echo "FAILED: building the fuzz targets: see vmm/fuzz/fuzz-build.log"
    exit 1
fi
failed=0
for t in "${targets[@]}"; do
    corpus="corpus/$t"
    mkdir -p "$corpus"
    start=$(date +%s)
    if cargo +nightly fuzz run "$t" "$corpus" "seeds/$t" -- \
        -max_total_time="$per_target" -rss_limit_mb=1024 -timeout=10 >"fuzz-$t.log" 2>&1; then
        runs=$(grep -o 'Done [0-9]* runs' "fuzz-$t.log" | tail -1 || true)
        echo "ok: $t (${runs:-no summary}, $(( $(date +%s) - start )) s)"
    else
        echo "FAILED: $t: see vmm/fuzz/fuzz-$t.log and vmm/fuzz/artifacts/$t/"
        failed=1
    fi
done
exit $failed
