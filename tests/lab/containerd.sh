#!/usr/bin/env bash
# A private containerd for tests and benchmarks: its own root, state and socket
# under $HULL_CTRD_DIR (default /run/hull-test/containerd), so it never touches
# a containerd the host already runs. Prints the socket path on start.
# Its root (image content and snapshots, hence the containers' root file
# systems) lives on disk under /var/lib/hull-test, as a node's does: the lab
# mounts ext4 there (tests/lab/stage2.sh).
#
# usage: containerd.sh start     start (if not running), import busybox, print the address
#        containerd.sh stop      stop it, remove its tasks, containers, mounts and state
# HULL_CTRD_CRI_EXTRA names a file of TOML put inside the CRI plugin's table
# (sandbox_image, runtime handlers, CNI directories: tests/cri/lab_cri.rs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="${HULL_CTRD_DIR:-/run/hull-test/containerd}"
sock="$dir/containerd.sock"
root="/var/lib/hull-test$dir/root"
die() { echo "containerd.sh: $*" >&2; exit 1; }

case "${1:-}" in
start)
    command -v containerd >/dev/null || die "containerd is not installed; run 'make setup'"
    mkdir -p "$root" "$dir/state"
    if [[ ! -S "$sock" ]] || ! ctr --address "$sock" version >/dev/null 2>&1; then
        cat > "$dir/config.toml" <<CFG
version = 2
root = "$root"
state = "$dir/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  level = "${HULL_CTRD_LOG_LEVEL:-info}"
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
$(if [[ -n "${HULL_CTRD_CRI_EXTRA:-}" ]]; then cat "$HULL_CTRD_CRI_EXTRA"; fi)
CFG
        # PATH first holds the checkout's shim build, so `--runtime io.containerd.hull.v2` finds it.
        PATH="${HULL_SHIM_DIR:+$HULL_SHIM_DIR:}$PATH" setsid containerd --config "$dir/config.toml" \
            >>"$dir/containerd.log" 2>&1 < /dev/null &
        echo $! > "$dir/containerd.pid"
        for _ in $(seq 600); do
            ctr --address "$sock" version >/dev/null 2>&1 && break
            sleep 0.1
        done
        ctr --address "$sock" version >/dev/null 2>&1 || { tail -5 "$dir/containerd.log" >&2; die "containerd did not start; log above"; }
    fi
    if ! ctr --address "$sock" images check 2>/dev/null | grep -q "docker.io/library/busybox:latest"; then
        tar="$("$here/../images/busybox.sh")"
        ctr --address "$sock" images import --base-name docker.io/library/busybox "$tar" >/dev/null \
            || die "importing the busybox image failed"
    fi
    echo "$sock"
    ;;
stop)
    if [[ -S "$sock" ]]; then
        for t in $(ctr --address "$sock" tasks ls -q 2>/dev/null); do
            ctr --address "$sock" tasks kill -s KILL "$t" >/dev/null 2>&1 || true
            ctr --address "$sock" tasks delete -f "$t" >/dev/null 2>&1 || true
        done
        for c in $(ctr --address "$sock" containers ls -q 2>/dev/null); do
            ctr --address "$sock" containers delete "$c" >/dev/null 2>&1 || true
        done
    fi
    if [[ -f "$dir/containerd.pid" ]]; then
        pid="$(cat "$dir/containerd.pid")"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    { grep -oE " ($dir|$root)/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf "$dir" "$root"
    ;;
*) die "usage: containerd.sh start|stop" ;;
esac
