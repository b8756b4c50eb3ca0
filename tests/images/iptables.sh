#!/usr/bin/env bash
# Builds an OCI image with the host's (Debian's) iptables on busybox, offline,
# for the guest-netfilter lab test (shim/tests/lab_shim/netfilter.rs): both
# flavours, iptables-legacy (xtables-legacy-multi) and iptables-nft
# (xtables-nft-multi), with the shared libraries they load (ldd) and the
# xtables extension directory they dlopen (libxt_REDIRECT.so, ...) at the
# host's paths. An OCI layout tarball for
# `ctr images import --base-name docker.io/library/hull-iptables`, cached
# outside the repo by the inputs' hashes. Prints its path.
set -euo pipefail

cache="${HULL_CACHE:-/var/cache/hull}/images"
ext=/usr/lib/x86_64-linux-gnu/xtables
multis=(/usr/sbin/xtables-legacy-multi /usr/sbin/xtables-nft-multi)
die() { echo "images: $*" >&2; exit 1; }
for t in umoci ldd /bin/busybox; do command -v "$t" >/dev/null || die "missing $t; run 'make setup'"; done
for f in "${multis[@]}"; do [[ -x "$f" ]] || die "missing $f; apt-get install iptables"; done
[[ -d "$ext" ]] || die "missing $ext; apt-get install iptables"

# Every shared object the binaries (or, with --ext, also the extensions) need, as ldd names it.
libs() {
    local files=("${multis[@]}")
    [[ "${1:-}" == --ext ]] && files+=("$ext"/*.so)
    ldd "${files[@]}" 2>/dev/null \
        | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(0x/ {print $1}' | sort -u
}
# The key runs ldd on the two binaries only (ldd on every extension takes a minute in
# the lab, where the tarball built on the host is found by this key).
mapfile -t needed <<< "$(libs)"
[[ -n "${needed[0]}" ]] || die "ldd found no libraries for ${multis[*]}"

key="$( (sha256sum < /bin/busybox; cat "${multis[@]}" "${needed[@]}" "$ext"/* | sha256sum; cat "$0") \
    | sha256sum | cut -c1-12)"
out="$cache/hull-iptables-$key.tar"
[[ -f "$out" ]] && { echo "$out"; exit 0; }
mapfile -t needed <<< "$(libs --ext)"

tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
umoci init --layout "$tmp/layout"
umoci new --image "$tmp/layout:latest"
umoci unpack --rootless --image "$tmp/layout:latest" "$tmp/bundle" >/dev/null
rootfs="$tmp/bundle/rootfs"
mkdir -p "$rootfs"/{bin,etc,tmp,proc,sys,dev,root,var,run,usr/sbin}
chmod 1777 "$rootfs/tmp"
install -m 0755 /bin/busybox "$rootfs/bin/busybox"
"$rootfs/bin/busybox" --list | while read -r applet; do
    [[ "$applet" == busybox ]] || ln -sf busybox "$rootfs/bin/$applet"
done
# The binaries and libraries at the paths the host names them by (files, not
# the host's symlinks: /lib64 is a link into /usr on a merged-/usr host).
for f in "${multis[@]}" "${needed[@]}"; do
    mkdir -p "$rootfs$(dirname "$f")"
    cp -L "$f" "$rootfs$f"
done
mkdir -p "$rootfs$ext"
cp -L "$ext"/*.so "$rootfs$ext/"
# The multi binaries pick the tool by the name they are run as.
for flavour in legacy nft; do
    for tool in iptables ip6tables; do
        for suffix in "" -save -restore; do
            ln -sf "xtables-$flavour-multi" "$rootfs/usr/sbin/$tool-$flavour$suffix"
        done
    done
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' > "$rootfs/etc/group"
umoci repack --image "$tmp/layout:latest" "$tmp/bundle" >/dev/null
umoci config --image "$tmp/layout:latest" --config.cmd sh \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p "$cache"
tar -C "$tmp/layout" -cf "$out.tmp" . && mv "$out.tmp" "$out"
echo "$out"
