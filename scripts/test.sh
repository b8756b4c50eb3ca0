#!/usr/bin/env bash
# Hull's whole test suite, in tiers: format, lints, unit and host tests, then
# the lab tier (tests that boot real guests), directly on a host with hardware
# KVM, inside the lab's nested VM otherwise.
#
# usage: scripts/test.sh [unit|lab|all]     (default all)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# The checkout whose scripts and sources the tests use (tests/src/lib.rs `repo_root`).
export HULL_REPO_ROOT="$root"
export PATH="$HOME/.cargo/bin:$PATH"
tier="${1:-all}"
logs="$root/target/test-logs"
mkdir -p "$logs"
start=$SECONDS
step() { echo; echo "==> [+$((SECONDS - start)) s] $*"; }

# Sums the libtest summary lines of a log: prints "passed failed ignored".
count() {
    grep -aE '^test result: ' "$1" | sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed; ([0-9]+) ignored.*/\1 \2 \3/' \
        | awk '{p+=$1; f+=$2; i+=$3} END {print p+0, f+0, i+0}'
}

unit_p=0 unit_f=0 unit_i=0 lab_p=0 lab_f=0 lab_i=0 lab_skipped=0 failed=0
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
    # Every fuzz target from its committed seeds, for a bounded time: hull-vmm's
    # devices, the agent's parsing of requests and specs, the shim's parsing of the
    # agent's replies and the guest's output (HULL_FUZZ_SECS per target; longer
    # campaigns: vmm/fuzz/run.sh 3600, guest-agent/fuzz/run.sh, shim/fuzz/run.sh).
    step "fuzz: hull-vmm, agent and shim targets, ${HULL_FUZZ_SECS:-10} s each"
    : >"$logs/fuzz.log"
    for fuzz in vmm/fuzz guest-agent/fuzz shim/fuzz; do
        "$fuzz/run.sh" "${HULL_FUZZ_SECS:-10}" 2>&1 | tee -a "$logs/fuzz.log" || failed=1
    done
fi

if [[ $tier == lab || $tier == all ]]; then
    step "lab tier: guest kernel and image"
    HULL_KERNEL="$(kernel-config/build.sh)/vmlinux"
    HULL_INITRD="$(rootfs/build.sh)"
    export HULL_KERNEL HULL_INITRD
    # The lab tests run the release build of the shim, hull-vmm and the tools: what ships
    # and what `make install` installs (HULL_LAB_BIN_DIR; pods start ~1.6x faster in the lab
    # than with the debug build, session 14). Unset, a lab test binary run by hand uses its
    # own debug build.
    cargo build --quiet --release -p hull-vmm -p containerd-shim-hull-v2 -p hull-tools
    export HULL_LAB_BIN_DIR="$root/target/release"
    # Static tools the lab tests bring into containers: the file-system stress
    # cases (fs_conformance) and the vsock attacker (hostile_guest).
    cargo build --quiet -p hull-fscheck -p hull-hostile --release --target x86_64-unknown-linux-musl
    # The iptables image of lab_shim's netfilter test, built (cached) here: the lab VMs import it.
    tests/images/iptables.sh >/dev/null
    # Lab test targets are named lab or lab_*; their tests are #[ignore = "lab: ..."].
    bins=$(cargo test --workspace --no-run --message-format=json 2>/dev/null \
        | jq -r 'select(.reason=="compiler-artifact" and .executable!=null and (.target.kind|index("test")) and (.target.name|test("^lab(_|$)"))) | .executable' \
        | grep -E "${HULL_LAB_ONLY:-.}")
    # HULL_LAB_ONLY (a regex on the binaries' paths, e.g. '/lab_vmm-') runs just those.
    # lab_vmm's hostile-guest storm runs in a process of its own: after the
    # other lab_vmm tests in the same process it ran past its 400 s bound
    # (2026-11-30, merged tree; alone it passes in ~110 s). Cause open.
    skip=(--skip hostile_guest_cannot_exhaust_the_vmm)
    # Long campaigns run in full with HULL_LAB_FULL=1 only (counted as skipped here;
    # churn's counts grow with it too).
    if [[ "${HULL_LAB_FULL:-}" != 1 ]]; then
        # Hangs intermittently in the lab (a ctr call starved while a guest floods its
        # serial console on the lab's one vCPU: session 5's CI, session 7's run, 2 local
        # runs; session 10, root cached: 3 runs passed in 102-116 s, the 4th hung busy
        # after the flooder came up); the shim's bound under the same flood is asserted by host_shim's
        # hostile_agent console-flood test, which runs in the unit tier.
        skip+=(--skip lab_hostile_host_console_flood); lab_skipped=$((lab_skipped + 1))
        echo "skipped: lab_shim hostile_host::lab_hostile_host_console_flood_keeps_the_shim_bounded_and_the_pods_manageable (hangs intermittently in the nested lab; host_shim's console-flood test covers the shim's bound; HULL_LAB_FULL=1 runs it)"
        skip+=(--skip lab_cri_bench_pod_network); lab_skipped=$((lab_skipped + 1))
        echo "skipped: lab_cri net_bench::lab_cri_bench_pod_network_runc_and_hull (a benchmark: make bench runs it; HULL_LAB_FULL=1 runs it)"
        # lab_cri's scenarios run for both handlers, runc and hull, in the
        # test command: a difference from runc is a Hull bug (issue 11).
    fi
    # The lab tier's jobs go into a queue that its workers share: two lab VMs
    # side by side (one vCPU each: both host cores busy), or this host alone
    # when it has hardware KVM. A worker takes the next job when it is done
    # with one (tests/lab/queue.sh), so the two finish close together; the
    # longest jobs go first (their names sort first; times of 2026-11-30).
    # HULL_LAB_SHARDS sets the number of lab VMs (1 to 4).
    queue="$(realpath -m "$root/target/lab-queue")"
    rm -rf "$queue"; mkdir -p "$queue/todo"
    # HULL_LAB_JOBS (a regex on job names, e.g. 'lab_shim-fs|lab_cri-hull') keeps just those.
    add() { # ORDER NAME BINARY ARGS...: one job, one test-binary process
        local order="$1" name="$2"; shift 2
        [[ "$name" =~ ${HULL_LAB_JOBS:-.} ]] || return 0
        echo "$*" > "$queue/todo/$order-$name"
    }
    # Every containerd test (lab_shim, lab_cri's Hull half) runs with each setting of the
    # shim's writable_layer: "guest" (the default, the -guest jobs) and "host".
    for b in $bins; do
        case "$(basename "$b")" in
            lab_shim-*)
                for layer in guest host; do
                    w="HULL_TEST_WRITABLE_LAYER=$layer"
                    add 10 "lab_shim-fs-$layer" "$w" "$b" fs_conformance:: "${skip[@]}"
                    add 20 "lab_shim-hostile-$layer" "$w" "$b" hostile_ "${skip[@]}"
                    add 30 "lab_shim-$layer" "$w" "$b" --skip fs_conformance:: --skip hostile_ --skip churn:: --skip faults:: "${skip[@]}"
                    add 35 "lab_shim-faults-$layer" "$w" "$b" churn:: faults:: "${skip[@]}"
                done ;;
            # The longest jobs (every CRI scenario, one job per handler): first.
            lab_cri-*)
                add 05 lab_cri-hull-guest HULL_TEST_WRITABLE_LAYER=guest HULL_CRI_HANDLERS=hull "$b" "${skip[@]}"
                add 06 lab_cri-hull-host HULL_TEST_WRITABLE_LAYER=host HULL_CRI_HANDLERS=hull "$b" "${skip[@]}"
                add 15 lab_cri-runc HULL_CRI_HANDLERS=runc "$b" "${skip[@]}" ;;
            # Its hostile-guest storm runs in a process of its own (see above).
            lab_vmm-*)
                add 40 lab_vmm "$b" "${skip[@]}"
                add 60 lab_vmm-hostile "$b" --exact hostile_guest_cannot_exhaust_the_vmm ;;
            lab_agent-*) add 50 lab_agent "$b" "${skip[@]}" ;;
            *) n="$(basename "$b")"; add 70 "${n%-*}" "$b" "${skip[@]}" ;;
        esac
    done
    kvm="" direct=0
    if kvm="$(scripts/kvm-check.sh)"; then direct=1; fi
    shards="${HULL_LAB_SHARDS:-2}"
    [[ $shards =~ ^[1-4]$ ]] || { echo "HULL_LAB_SHARDS=$shards: give 1 to 4 lab VMs"; exit 2; }
    set +e
    rm -f "$logs"/lab*.log
    if [[ $direct == 1 ]]; then
        # One worker: the lab_shim processes would share this host's /run.
        step "lab tier, directly on this host ($kvm)"
        tests/lab/queue.sh "$queue" host 2>&1 | tee "$logs/lab.log"; rc=${PIPESTATUS[0]}
    else
        step "lab tier, inside $shards lab VM(s) ($kvm)"
        # The lab VMs cache the read-only host root (HULL_LAB_ROOT_CACHE):
        # every exec of containerd, runc, ctr and the shim is 5-10x faster and
        # the CRI scenarios ~3x (nothing on the host changes while they run;
        # the queue's share stays uncached). HULL_LAB_ROOT_CACHE=none turns it off.
        # One lab VM working through the queue; when it stalls (lab.sh
        # --stall: no CPU used for 180 s, a fault of the nested lab seen a few
        # times a day), the job it was running goes back in the queue and a
        # fresh lab VM takes over, twice at most. Each attempt's output goes
        # to its own log and, prefixed, to the console.
        lab_worker() { # N
            local n="$1" try status f
            for try in 1 2 3; do
                ( HULL_LAB_ROOT_CACHE="${HULL_LAB_ROOT_CACHE:-always}" tests/lab/lab.sh --timeout "${HULL_LAB_TIMEOUT:-3600}" --stall "${HULL_LAB_STALL:-180}" --share "$queue" \
                    -- "$root/tests/lab/queue.sh" "$queue" "lab$n" 2>&1 \
                    | tee "$logs/lab-$n.$try.log" | sed -u "s/^/[lab$n] /"; exit "${PIPESTATUS[0]}" )
                status=$?
                [[ $status == 126 ]] || return "$status"
                for f in "$queue/lab$n-"*; do
                    [[ -e "$f" ]] || continue
                    echo "[lab$n] lab VM $n stalled while running ${f##*/lab$n-}: back in the queue; a fresh lab VM takes over (attempt $((try + 1)))"
                    mv "$f" "$queue/todo/${f##*/lab$n-}"
                done
            done
            return 1
        }
        pids=()
        for n in $(seq "$shards"); do
            lab_worker "$n" &
            pids+=($!)
            sleep 2
        done
        rc=0
        for p in "${pids[@]}"; do wait "$p" || rc=1; done
        # Only the output of jobs that ended counts (a stalled attempt's last
        # job ran again).
        cat "$logs"/lab-*.log 2>/dev/null | awk '
            /^--- [^ ]+ on lab[0-9]+: / { buf = ""; injob = 1 }
            injob { buf = buf $0 "\n" }
            /^--- [^ ]+ took [0-9]+ s \(status / { printf "%s", buf; buf = ""; injob = 0 }
        ' > "$logs/lab.log"
        left="$(ls "$queue/todo")"
        [[ -z "$left" ]] || { echo "lab tier: jobs never run (a lab VM stopped early): $left"; rc=1; }
    fi
    set -e
    read -r lab_p lab_f lab_i < <(count "$logs/lab.log")
    if [[ $rc != 0 ]]; then
        failed=1
        [[ $lab_f -gt 0 ]] || { echo "lab tier failed before its tests reported (status $rc)"; lab_f=$((lab_f + 1)); }
    fi
fi

# Lab tests show as ignored in the unit tier ("ignored, lab: ..."); when the lab
# tier ran, they count where they ran, and those it was told to skip count as skipped.
if [[ $tier == unit ]]; then
    skipped=$unit_i
else
    other_ignored=0
    [[ -f "$logs/unit.log" && $tier == all ]] \
        && other_ignored=$(grep -aE '^test .* \.\.\. ignored' "$logs/unit.log" | grep -avc 'ignored, lab:' || true)
    skipped=$((other_ignored + lab_skipped + lab_i))
fi
echo
echo "test.sh took $((SECONDS - start)) s"
echo "unit tier: $unit_p passed, $unit_f failed, $unit_i ignored; lab tier: $lab_p passed, $lab_f failed, $lab_i ignored"
echo "$((unit_p + lab_p)) passed, $((unit_f + lab_f)) failed, $skipped skipped"
exit $failed
