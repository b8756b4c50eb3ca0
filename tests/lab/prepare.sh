#!/usr/bin/env bash
# Prepares the lab's outer VM: Debian's cloud kernel (fetched with apt-get download)
# and a busybox initramfs with the modules it needs, cached outside the repo.
# Prints the directory holding `vmlinuz` and `initrd.gz`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${HULL_CACHE:-/var/cache/hull}/lab"
die() { echo "lab: $*" >&2; exit 1; }

# Modules in load order (each one's `depends=` is loaded before it).
modules=(irqbypass kvm virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev
         virtio_pci fuse virtiofs overlay kvm-amd
         vsock vmw_vsock_virtio_transport_common vhost_iotlb vhost vhost_vsock  # reference VMM's vsock
         loop   # containerd's state on ext4 (stage2.sh)
         llc stp bridge veth   # CNI's bridge network for CRI pods (tests/cri/lab_cri.rs)
         tun   # taps for virtio-net (vmm/tests/lab_net, the shim's pod network)
         sch_ingress cls_u32 act_mirred)  # the pod network's tc redirect (shim/src/backend/vm/network.rs)

pkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')"
[[ -n "$pkg" ]] || pkg="$(ls "$cache" 2>/dev/null | grep -m1 '^linux-image-' || true)"
[[ -n "$pkg" ]] || die "cannot find Debian's cloud kernel package; run 'apt-get update' (or 'make setup')"
[[ -x /bin/busybox ]] || die "missing /bin/busybox; run 'make setup' (installs busybox-static)"

key="$( (echo "$pkg"; cat "$here/init" "$here/prepare.sh"; sha256sum /bin/busybox) | sha256sum | cut -c1-12)"
out="$cache/$pkg-$key"
if [[ -f "$out/initrd.gz" && -f "$out/vmlinuz" ]]; then echo "$out"; exit 0; fi

tmp="$(mktemp -d "$cache.tmp.XXXXXX" 2>/dev/null || { mkdir -p "$(dirname "$cache")"; mktemp -d "$cache.tmp.XXXXXX"; })"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$cache"
deb="$(ls "$cache/$pkg"_*.deb 2>/dev/null | head -1 || true)"
if [[ -z "$deb" ]]; then
    echo "lab: fetching $pkg with apt-get download" >&2
    (cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>&1) || die "apt-get download $pkg failed; check apt sources"
    mv "$tmp/$pkg"_*.deb "$cache/"
    deb="$(ls "$cache/$pkg"_*.deb | head -1)"
fi
dpkg-deb -x "$deb" "$tmp/x"
kver="${pkg#linux-image-}"

root="$tmp/root"
mkdir -p "$root"/{bin,dev,proc,sys,host,run,newroot,lib/modules}
cp /bin/busybox "$root/bin/busybox"
cp "$here/init" "$root/init"
chmod +x "$root/init"
for m in "${modules[@]}"; do
    f="$(find "$tmp/x/lib/modules/$kver" -name "$m.ko" | head -1)"
    [[ -n "$f" ]] || die "module $m not found in $pkg"
    cp "$f" "$root/lib/modules/$m.ko"
done
printf '%s\n' "${modules[@]}" > "$root/lib/modules/order"
(cd "$root" && find . | cpio -o -H newc --owner 0:0 --quiet) | gzip -1 > "$tmp/initrd.gz"
cp "$tmp/x/boot/vmlinuz-$kver" "$tmp/vmlinuz"
mkdir -p "$out" && mv "$tmp/initrd.gz" "$tmp/vmlinuz" "$out/"
echo "$out"
