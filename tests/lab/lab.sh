#!/usr/bin/env bash
# Runs one command inside the lab: a nested VM under QEMU's software emulator
# whose kvm-amd gives a /dev/kvm that boots standard guest kernels.
#
# usage: tests/lab/lab.sh [--timeout SECS] [--share DIR] [--mem MIB] [--stall SECS] -- CMD [ARGS...]
#        (HULL_LAB_CPUS sets the lab VM's vCPUs, default 1; HULL_LAB_MEM its MiB)
#
# Inside, the host's root is visible read-only at the same paths (with a
# throwaway tmpfs overlay), DIR is shared read-write at its own path, /tmp and
# /run are fresh tmpfs, cgroup2 is mounted, HULL_LAB=1 and the caller's PATH,
# HOME, HULL_*, RUST_* and CARGO_* variables are set, and the working directory
# is the caller's. The command's output is printed; the exit status is the
# command's, 124 when it timed out, 125 when the lab itself failed, 126 when
# it stalled: with --stall S, a lab VM whose QEMU used no CPU at all for S
# seconds is stopped (the nested lab has, a few times a day, sat idle for good
# mid-test; a command that keeps the guest ticking, as tests/lab/queue.sh
# does, never looks like that).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
timeout_s="${HULL_LAB_TIMEOUT:-900}"
mem="${HULL_LAB_MEM:-4096}"
cpus="${HULL_LAB_CPUS:-1}"
share=""
stall_s=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --timeout) timeout_s="$2"; shift 2 ;;
        --share) share="$(realpath "$2")"; shift 2 ;;
        --mem) mem="$2"; shift 2 ;;
        --stall) stall_s="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) break ;;
    esac
done
[[ $# -gt 0 ]] || { echo "lab: no command given; usage: lab.sh [--timeout S] [--share DIR] -- CMD..." >&2; exit 125; }
if [[ -n "$share" && ! -d "$share" ]]; then echo "lab: --share $share is not a directory" >&2; exit 125; fi

qemu=/usr/bin/qemu-system-x86_64
vfsd=/usr/lib/qemu/virtiofsd
for t in "$qemu" "$vfsd"; do
    [[ -x "$t" ]] || { echo "lab: missing $t; run 'make setup' (installs qemu-system-x86)" >&2; exit 125; }
done
labdir="$("$here/prepare.sh")" || exit 125

run="$(mktemp -d /tmp/hull-lab.XXXXXX)"
pids=()
cleanup() {
    # QEMU runs under `timeout`, which leads its own process group: find every
    # process of this run (QEMU, virtiofsd, timeout) by the run directory.
    pkill -TERM -f -- "$run/" 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do pgrep -f -- "$run/" >/dev/null || break; sleep 0.1; done
    pkill -KILL -f -- "$run/" 2>/dev/null || true
    rm -rf "$run"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

{
    echo "#!/bin/bash"
    export -p | grep -E '^declare -x (PATH|HOME|TERM|USER|CI|HULL_[A-Z0-9_]*|RUST_[A-Z0-9_]*|CARGO_[A-Z0-9_]*)=' || true
    printf 'cd %q || exit 125\n' "$PWD"
    printf '%q ' "$@"; echo
} > "$run/cmd.sh"

start_vfsd() { # tag-socket source cache-mode
    "$vfsd" --socket-path="$1" -o source="$2" -o cache="$3" -o sandbox=chroot >/dev/null 2>&1 &
    pids+=($!)
}
# HULL_LAB_ROOT_CACHE=always lets the guest cache the read-only host root
# (repeated execs of containerd, ctr and the shim 5-10x faster); the test
# command's lab tier turns it on, as nothing on the host changes while its lab
# VMs run. Alone, lab.sh stays uncached (a host rebuild shows at once inside).
# The read-write shares are never cached.
start_vfsd "$run/root.sock" / "${HULL_LAB_ROOT_CACHE:-none}"
start_vfsd "$run/run.sock" "$run" none
fs_args=(-chardev "socket,id=root,path=$run/root.sock" -device vhost-user-fs-pci,chardev=root,tag=hostroot
         -chardev "socket,id=run,path=$run/run.sock" -device vhost-user-fs-pci,chardev=run,tag=run)
if [[ -n "$share" ]]; then
    start_vfsd "$run/share.sock" "$share" none
    fs_args+=(-chardev "socket,id=share,path=$run/share.sock" -device vhost-user-fs-pci,chardev=share,tag=share)
fi
socks=(root run); [[ -n "$share" ]] && socks+=(share)
for _ in $(seq 100); do
    ready=1; for s in "${socks[@]}"; do [[ -S "$run/$s.sock" ]] || ready=0; done
    [[ $ready == 1 ]] && break
    sleep 0.05
done

checkout="$(cd "$here/../.." && pwd)"
cmdline="console=ttyS0 panic=-1 quiet rdinit=/init LAB_STAGE2=$here/stage2.sh LAB_RUN=$run LAB_KEEP=$checkout:$PWD"
[[ -n "$share" ]] && cmdline+=" LAB_SHARE=$share"

# In the background with `wait`, so a SIGINT/SIGTERM to this script is handled at
# once (bash defers traps while a foreground pipeline runs) and cleanup runs.
{
    status=0
    timeout -k 5 "$timeout_s" "$qemu" -accel tcg,thread=multi -cpu max -m "${mem}M" -smp "$cpus" \
        -display none -monitor none -serial stdio -no-reboot -nodefaults \
        -object "memory-backend-memfd,id=mem,size=${mem}M,share=on" -machine q35,memory-backend=mem \
        "${fs_args[@]}" -kernel "$labdir/vmlinuz" -initrd "$labdir/initrd.gz" -append "$cmdline" \
        </dev/null || status=$?
    echo "$status" > "$run/qemu-status"
} | sed -u -E -e 's/\r$//' -e '/^HULL_LAB_EXIT=/d' \
    -e '/^\[ *[0-9.]+\] (sysrq: Power Off|reboot: Power down)/d' &
lab_pid=$!
if [[ -n "$stall_s" ]]; then
    # QEMU's CPU time (utime + stime) every 10 s; unchanged for stall_s: stalled.
    (
        last="" idle=0
        while sleep 10; do
            q="$(pgrep -f -- "^$qemu .*$run/" | head -1 || true)"
            [[ -n "$q" ]] || continue
            t="$(awk '{print $14 + $15}' "/proc/$q/stat" 2>/dev/null)" || break
            if [[ "$t" == "$last" ]]; then idle=$((idle + 10)); else idle=0; fi
            last="$t"
            if ((idle >= stall_s)); then
                echo "lab: the lab VM used no CPU for $idle s: it stalled; stopping it" >&2
                touch "$run/stalled"
                kill "$q" 2>/dev/null
                break
            fi
        done
    ) &
    pids+=($!)
fi
set +e
wait "$lab_pid"
qrc="$(cat "$run/qemu-status" 2>/dev/null || echo 125)"
set -e
if [[ -f "$run/exit" ]]; then
    exit "$(cat "$run/exit")"
fi
if [[ -f "$run/stalled" ]]; then
    exit 126
fi
if [[ $qrc -eq 124 || $qrc -eq 137 ]]; then
    echo "lab: timed out after ${timeout_s}s (the command or a guest boot hung); raise with --timeout" >&2
    exit 124
fi
echo "lab: the lab VM stopped without the command's exit status (qemu status $qrc); see the console output above" >&2
exit 125
