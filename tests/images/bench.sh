#!/usr/bin/env bash
# Builds the benchmark's OCI image offline: busybox-static plus the static
# hull-bench-probe at /bin/hull-bench-probe, as an OCI layout tarball for
# `ctr images import --base-name docker.io/library/hull-bench`, cached outside
# the repo by the inputs' hashes. Prints its path.
#
# usage: tests/images/bench.sh PROBE_BINARY
set -euo pipefail

probe="${1:?usage: tests/images/bench.sh PROBE_BINARY (target/x86_64-unknown-linux-musl/release/hull-bench-probe)}"
cache="${HULL_CACHE:-/var/cache/hull}/images"
die() { echo "images: $*" >&2; exit 1; }
for t in umoci /bin/busybox; do command -v "$t" >/dev/null || die "missing $t; run 'make setup'"; done
[[ -x "$probe" ]] || die "no probe binary at $probe"
file -b "$probe" 2>/dev/null | grep -q "static" || ldd "$probe" 2>&1 | grep -q "not a dynamic" \
    || die "$probe is not static (build it with --target x86_64-unknown-linux-musl)"

key="$( (sha256sum < /bin/busybox; sha256sum < "$probe"; cat "$0") | sha256sum | cut -c1-12)"
out="$cache/hull-bench-$key.tar"
[[ -f "$out" ]] && { echo "$out"; exit 0; }

tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
umoci init --layout "$tmp/layout"
umoci new --image "$tmp/layout:latest"
umoci unpack --rootless --image "$tmp/layout:latest" "$tmp/bundle" >/dev/null
rootfs="$tmp/bundle/rootfs"
mkdir -p "$rootfs"/{bin,etc,tmp,proc,sys,dev,root,var,vol}
chmod 1777 "$rootfs/tmp"
install -m 0755 /bin/busybox "$rootfs/bin/busybox"
"$rootfs/bin/busybox" --list | while read -r applet; do
    [[ "$applet" == busybox ]] || ln -sf busybox "$rootfs/bin/$applet"
done
install -m 0755 "$probe" "$rootfs/bin/hull-bench-probe"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$rootfs/etc/group"
umoci repack --image "$tmp/layout:latest" "$tmp/bundle" >/dev/null
umoci config --image "$tmp/layout:latest" --config.cmd /bin/hull-bench-probe --config.cmd serve \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p "$cache"
tar -C "$tmp/layout" -cf "$out.tmp" . && mv "$out.tmp" "$out"
echo "$out"
