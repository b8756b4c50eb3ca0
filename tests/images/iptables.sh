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

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/oci.sh"
ext=/usr/lib/x86_64-linux-gnu/xtables
multis=(/usr/sbin/xtables-legacy-multi /usr/sbin/xtables-nft-multi)
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

key="$( (sha256sum < /bin/busybox; cat "${multis[@]}" "${needed[@]}" "$ext"/* | sha256sum; cat "$0" "$here/oci.sh") \
    | sha256sum | cut -c1-12)"
out="$cache/hull-iptables-$key.tar"
[[ -f "$out" ]] && { echo "$out"; exit 0; }
mapfile -t needed <<< "$(libs --ext)"

busybox_bundle bin etc tmp proc sys dev root var run usr/sbin
chmod 1777 "$rootfs/tmp"
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
finish_image --config.cmd sh
