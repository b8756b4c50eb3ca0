#!/usr/bin/env bash
# Hull's whole test suite, in tiers: format, lints, unit and host tests, then
# the lab tier (tests that boot real guests), directly on a host with hardware
# KVM, inside the lab's nested VM otherwise.
#
# usage: scripts/test.sh [unit|lab|all]     (default all)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
tier="${1:-all}"
logs="$root/target/test-logs"
mkdir -p "$logs"
step() { echo; echo "==> $*"; }

# Sums the libtest summary lines of a log: prints "passed failed ignored".
count() {
    grep -aE '^test result: ' "$1" | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\1 \2 \3/' \
        | awk '{p+=$1; f+=$2; i+=$3} END {print p+0, f+0, i+0}'
}

unit_p=0 unit_f=0 unit_i=0 lab_p=0 lab_f=0 lab_i=0 lab_ran=0 failed=0
if [[ $tier == unit || $tier == all ]]; then
    step "format"; cargo fmt --all --check
    step "clippy"; cargo clippy --quiet --workspace --all-targets -- -D warnings
    step "unit and host tests (tests marked 'lab:' run in the lab tier)"
    set +e; cargo test --workspace 2>&1 | tee "$logs/unit.log"; rc=${PIPESTATUS[0]}; set -e
    [[ $rc == 0 ]] || failed=1
    # The shim's host tests drive it through a real containerd with its test-double backend.
    step "shim host tests (fake backend, real containerd)"
    cargo clippy --quiet -p containerd-shim-hull-v2 --all-targets --features fake-backend -- -D warnings
    set +e; cargo test -p containerd-shim-hull-v2 --features fake-backend --test host_shim 2>&1 | tee -a "$logs/unit.log"; rc=${PIPESTATUS[0]}; set -e
    read -r unit_p unit_f unit_i < <(count "$logs/unit.log")
    [[ $rc == 0 ]] || failed=1
    # Every hull-vmm fuzz target from its committed seeds, for a bounded time
    # (HULL_FUZZ_SECS per target; longer campaigns: vmm/fuzz/run.sh 3600).
    step "fuzz: hull-vmm targets, ${HULL_FUZZ_SECS:-20} s each"
    vmm/fuzz/run.sh "${HULL_FUZZ_SECS:-20}" 2>&1 | tee "$logs/fuzz.log" || failed=1
fi

if [[ $tier == lab || $tier == all ]]; then
    step "lab tier: guest kernel and image"
    HULL_KERNEL="$(kernel-config/build.sh)/vmlinux"
    HULL_INITRD="$(rootfs/build.sh)"
    export HULL_KERNEL HULL_INITRD
    # Static tools the lab tests bring into containers: the file-system stress
    # cases (fs_conformance) and the vsock attacker (hostile_guest).
    cargo build --quiet -p hull-fscheck -p hull-hostile --release --target x86_64-unknown-linux-musl
    # Lab test targets are named lab or lab_*; their tests are #[ignore = "lab: ..."].
    bins=$(cargo test --workspace --no-run --message-format=json 2>/dev/null \
        | jq -r 'select(.reason=="compiler-artifact" and .executable!=null and (.target.kind|index("test")) and (.target.name|test("^lab(_|$)"))) | .executable')
    # lab_vmm's hostile-guest storm runs in a process of its own: after the
    # other lab_vmm tests in the same process it ran past its 400 s bound
    # (2026-11-30, merged tree; alone it passes in ~110 s). Cause open.
    skip=(--skip hostile_guest_cannot_exhaust_the_vmm)
    # Long campaigns run in full with HULL_LAB_FULL=1 only (counted as skipped here).
    if [[ "${HULL_LAB_FULL:-}" != 1 ]]; then
        skip+=(--skip lab_cri_pod_start_time)
        echo "skipped: lab_cri lab_cri_pod_start_time_runc_and_hull (three pods per handler: ~15 lab minutes; HULL_LAB_FULL=1 runs it)"
    fi
    runner="$root/target/lab-run.sh"
    {
        echo '#!/bin/bash'
        echo 'rc=0'
        for b in $bins; do
            echo "echo; echo \"--- $(basename "$b")\""
            echo "$b --ignored --test-threads=1 --color never --show-output ${skip[*]} || rc=1"
            if [[ $(basename "$b") == lab_vmm-* ]]; then
                echo "$b --ignored --exact hostile_guest_cannot_exhaust_the_vmm --color never --show-output || rc=1"
            fi
        done
        echo 'exit $rc'
    } > "$runner"
    chmod +x "$runner"
    set +e
    if kvm="$(scripts/kvm-check.sh)"; then
        step "lab tier, directly on this host ($kvm)"
        "$runner" 2>&1 | tee "$logs/lab.log"; rc=${PIPESTATUS[0]}
    else
        step "lab tier, inside the lab VM ($kvm)"
        tests/lab/lab.sh --timeout "${HULL_LAB_TIMEOUT:-4800}" -- "$runner" 2>&1 | tee "$logs/lab.log"; rc=${PIPESTATUS[0]}
    fi
    set -e
    read -r lab_p lab_f lab_i < <(count "$logs/lab.log")
    lab_ran=$((lab_p + lab_f))
    if [[ $rc != 0 ]]; then
        failed=1
        [[ $lab_f -gt 0 ]] || { echo "lab tier failed before its tests reported (status $rc)"; lab_f=$((lab_f + 1)); }
    fi
fi

# Lab tests show as ignored in the unit tier; they count once, where they ran.
skipped=$((unit_i - lab_ran + lab_i)); [[ $skipped -ge 0 ]] || skipped=0
echo
echo "unit tier: $unit_p passed, $unit_f failed, $unit_i ignored; lab tier: $lab_p passed, $lab_f failed, $lab_i ignored"
echo "$((unit_p + lab_p)) passed, $((unit_f + lab_f)) failed, $skipped skipped"
exit $failed
