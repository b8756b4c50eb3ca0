#!/usr/bin/env bash
# Runs every cargo-fuzz target of one fuzz crate (vmm/fuzz, shim/fuzz,
# guest-agent/fuzz) for a bounded time from its committed seeds
# (<crate>/seeds/<target>); crashes land in <crate>/artifacts/<target>/, logs in
# <crate>/fuzz-<target>.log. Each crate's run.sh calls it.
# Usage: scripts/fuzz.sh CRATE_DIR [SECONDS_PER_TARGET]   (default 35)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$1"
dir="$(pwd)"
dir="${dir#"$root"/}"
per_target="${2:-35}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "skipped: cargo-fuzz is not installed (scripts/setup.sh installs it: cargo install cargo-fuzz)"
    exit 0
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "skipped: no nightly toolchain for cargo-fuzz (rustup toolchain install nightly)"
    exit 0
fi

# A fixed commit name: the fuzz binaries never print it, and with it a new commit
# alone does not rebuild hull-agent, the shim and hull-vmm with sanitizers
# (build/commit.rs watches git's HEAD only without HULL_COMMIT).
export HULL_COMMIT=fuzz
start=$(date +%s)
if ! cargo +nightly fuzz build >fuzz-build.log 2>&1; then
    echo "FAILED: building the fuzz targets: see $dir/fuzz-build.log"
    exit 1
fi
echo "ok: $dir built ($(( $(date +%s) - start )) s)"
mapfile -t targets < <(cargo +nightly fuzz list)
failed=0
for t in "${targets[@]}"; do
    corpus="corpus/$t"
    mkdir -p "$corpus"
    start=$(date +%s)
    if cargo +nightly fuzz run "$t" "$corpus" "seeds/$t" -- \
        -max_total_time="$per_target" -rss_limit_mb=1024 -timeout=10 >"fuzz-$t.log" 2>&1; then
        runs=$(grep -o 'Done [0-9]* runs' "fuzz-$t.log" | tail -1 || true)
        echo "ok: $dir $t (${runs:-no summary}, $(( $(date +%s) - start )) s)"
    else
        echo "FAILED: $dir $t: see $dir/fuzz-$t.log and $dir/artifacts/$t/"
        failed=1
    fi
done
exit $failed
