#!/usr/bin/env bash
# Builds a busybox OCI image offline (busybox-static + umoci) as an OCI layout
# tarball for `ctr images import`, cached outside the repo. Prints its path.
# The image is named docker.io/library/busybox:latest once imported with
# `ctr images import --base-name docker.io/library/busybox`.
set -euo pipefail

cache="${HULL_CACHE:-/var/cache/hull}/images"
die() { echo "images: $*" >&2; exit 1; }
for t in umoci /bin/busybox; do command -v "$t" >/dev/null || die "missing $t; run 'make setup'"; done

key="$( (sha256sum < /bin/busybox; cat "$0") | sha256sum | cut -c1-12)"
out="$cache/busybox-$key.tar"
[[ -f "$out" ]] && { echo "$out"; exit 0; }

tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
umoci init --layout "$tmp/layout"
umoci new --image "$tmp/layout:latest"
umoci unpack --rootless --image "$tmp/layout:latest" "$tmp/bundle" >/dev/null
rootfs="$tmp/bundle/rootfs"
mkdir -p "$rootfs"/{bin,etc,tmp,proc,sys,dev,root,var}
install -m 0755 /bin/busybox "$rootfs/bin/busybox"
"$rootfs/bin/busybox" --list | while read -r applet; do
    [[ "$applet" == busybox ]] || ln -sf busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$rootfs/etc/group"
umoci repack --image "$tmp/layout:latest" "$tmp/bundle" >/dev/null
umoci config --image "$tmp/layout:latest" --config.cmd sh \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p "$cache"
tar -C "$tmp/layout" -cf "$out.tmp" . && mv "$out.tmp" "$out"
echo "$out"
