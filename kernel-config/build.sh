#!/usr/bin/env bash
# Builds the Hull guest kernel out of tree into a cache outside the repo.
# The cache key is the kernel source version plus this directory's inputs, so a
# second run with nothing changed prints the cached path in well under a second.
#
# usage: kernel-config/build.sh            build (or reuse) and print the output dir
#        kernel-config/build.sh --path     print the output dir, fail if not built
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${HULL_CACHE:-/var/cache/hull}"
tarball="/usr/src/linux-source-6.12.tar.xz"

die() { echo "kernel-config: $*" >&2; exit 1; }

[[ -f "$tarball" ]] || die "missing $tarball; run 'make setup' (installs linux-source-6.12)"
src_version="$(dpkg-query -W -f='${Version}' linux-source-6.12 2>/dev/null || echo unknown)"
# Bump when the build steps below change what they produce.
recipe=1
key="$( (echo "$src_version recipe=$recipe"; cat "$here/hull.config") | sha256sum | cut -c1-16)"
out="$cache/kernel/$key"

if [[ "${1:-}" == "--path" ]]; then
    [[ -f "$out/vmlinux" ]] || die "guest kernel not built for these inputs ($out); run 'make kernel'"
    echo "$out"
    exit 0
fi
if [[ -f "$out/vmlinux" ]]; then
    echo "$out"
    exit 0
fi
# One build at a time per cache; a second caller waits, then finds the result.
mkdir -p "$cache/kernel"
exec 9>"$cache/kernel/.lock"
flock 9
if [[ -f "$out/vmlinux" ]]; then
    echo "$out"
    exit 0
fi

jobs="$(nproc)"
srcdir="$cache/src/linux-$src_version"
if [[ ! -f "$srcdir/.hull-extracted" ]]; then
    echo "kernel-config: extracting $tarball (once per source version)" >&2
    rm -rf "$srcdir" && mkdir -p "$srcdir"
    tar -xf "$tarball" -C "$srcdir" --strip-components=1
    touch "$srcdir/.hull-extracted"
fi

build="$cache/kernel/build-$key"
rm -rf "$build" && mkdir -p "$build"
trap 'rm -rf "$build"' EXIT
start=$SECONDS
echo "kernel-config: building Linux $src_version (key $key) with -j$jobs, ~8 min on 2 cores" >&2
make -s -C "$srcdir" O="$build" ARCH=x86_64 tinyconfig >/dev/null
"$srcdir/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$here/hull.config" >/dev/null
make -s -C "$srcdir" O="$build" ARCH=x86_64 olddefconfig >/dev/null

# Every option the fragment asks for must have survived olddefconfig's dependency checks.
missing=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=*) want="$line" ;;
        "# CONFIG_"*" is not set") want="$line" ;;
        *) continue ;;
    esac
    opt="${want#\# }"; opt="${opt%%[= ]*}"
    if [[ "$want" == "# "* ]]; then
        if grep -q "^$opt=" "$build/.config"; then echo "kernel-config: $opt is set but the fragment unsets it" >&2; missing=1; fi
    elif ! grep -qx "$want" "$build/.config"; then
        echo "kernel-config: $want did not stick (dependency missing?)" >&2; missing=1
    fi
done < "$here/hull.config"
[[ $missing == 0 ]] || die "the fragment does not apply cleanly to $src_version; fix kernel-config/hull.config"

make -s -C "$srcdir" O="$build" ARCH=x86_64 -j"$jobs" vmlinux bzImage >"$build/build.log" 2>&1 \
    || { tail -30 "$build/build.log" >&2; die "kernel build failed; full log in $build/build.log"; }

tmp="$cache/kernel/.tmp-$key"
rm -rf "$tmp" && mkdir -p "$tmp"
cp "$build/vmlinux" "$tmp/vmlinux"
cp "$build/arch/x86/boot/bzImage" "$tmp/bzImage"
cp "$build/.config" "$tmp/config"
make -s -C "$srcdir" O="$build" ARCH=x86_64 kernelrelease > "$tmp/release"
echo "$((SECONDS - start))" > "$tmp/build-seconds"
rm -rf "$out" && mv "$tmp" "$out"
rm -rf "$build"
echo "kernel-config: built in $((SECONDS - start)) s: $(stat -c %s "$out/vmlinux") B vmlinux, $(stat -c %s "$out/bzImage") B bzImage" >&2
echo "$out"
