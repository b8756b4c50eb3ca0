#!/usr/bin/env bash
# Builds the Hull guest image: a cpio initramfs whose /init is the static
# hull-agent. Output goes to a cache outside the repo, keyed by its content.
#
# usage: rootfs/build.sh [--init BINARY] [--gzip]   build, print the image path
#        rootfs/build.sh --path                     print the path of the image for
#                                                    the current agent build, or fail
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${HULL_CACHE:-/var/cache/hull}/rootfs"
die() { echo "rootfs: $*" >&2; exit 1; }

init="" gzip=0 path_only=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --init) init="$2"; shift 2 ;;
        --gzip) gzip=1; shift ;;
        --path) path_only=1; shift ;;
        *) die "unknown argument $1 (see the header of rootfs/build.sh)" ;;
    esac
done

agent="$root/target/x86_64-unknown-linux-musl/release/hull-agent"
if [[ -z "$init" ]]; then
    if [[ $path_only == 0 ]]; then
        (cd "$root" && cargo build -q -p hull-agent --release --target x86_64-unknown-linux-musl) \
            || die "building hull-agent failed (is the musl target installed? run 'make setup')"
    fi
    init="$agent"
fi
[[ -f "$init" ]] || die "missing $init; run 'make image'"
file -b "$init" 2>/dev/null | grep -q 'statically linked\|static-pie' \
    || die "$init is not a static binary; /init must not need a dynamic loader"

key="$( (sha256sum < "$init"; echo "gzip=$gzip"; cat "$root/rootfs/build.sh") | sha256sum | cut -c1-16)"
name="initramfs.cpio"; [[ $gzip == 1 ]] && name="initramfs.cpio.gz"
out="$cache/$key/$name"
if [[ -f "$out" ]]; then echo "$out"; exit 0; fi
[[ $path_only == 0 ]] || die "image not built for the current agent ($out); run 'make image'"

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
# Only mount points and /init: the agent mounts everything else itself.
mkdir -p "$stage"/{dev,proc,sys,run,tmp,mnt,etc}
install -m 0755 "$init" "$stage/init"
mkdir -p "$cache/$key"
(cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc --owner 0:0 --reproducible --quiet) > "$stage/image"
if [[ $gzip == 1 ]]; then gzip -9n < "$stage/image" > "$out.tmp"; else mv "$stage/image" "$out.tmp"; fi
mv "$out.tmp" "$out"
echo "$out"
