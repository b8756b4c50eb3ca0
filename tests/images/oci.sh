# shellcheck shell=bash
# Sourced by the image scripts of this directory (not run): the umoci steps they share. An
# image script sets `cache` (this file sets its default) and `out` (the tarball, named by a
# key that hashes its inputs, this file among them), then calls busybox_bundle, fills
# `$rootfs`, and calls finish_image, which prints the tarball's path.

cache="${HULL_CACHE:-/var/cache/hull}/images"
die() { echo "images: $*" >&2; exit 1; }

# A new image in a temporary OCI layout (`$tmp`, removed at exit), unpacked as a bundle whose
# `$rootfs` has the directories DIR... and busybox-static in /bin with all its applets.
busybox_bundle() {
    tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
    umoci init --layout "$tmp/layout"
    umoci new --image "$tmp/layout:latest"
    umoci unpack --rootless --image "$tmp/layout:latest" "$tmp/bundle" >/dev/null
    rootfs="$tmp/bundle/rootfs"
    local dir
    for dir in "$@"; do mkdir -p "$rootfs/$dir"; done
    install -m 0755 /bin/busybox "$rootfs/bin/busybox"
    "$rootfs/bin/busybox" --list | while read -r applet; do
        [[ "$applet" == busybox ]] || ln -sf busybox "$rootfs/bin/$applet"
    done
}

# Root and nobody in /etc/passwd and /etc/group, the bundle repacked, its config set by the
# umoci config OPTION... and the usual PATH, and the layout written to the tarball `$out`;
# prints `$out`.
finish_image() {
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$rootfs/etc/passwd"
    printf 'root:x:0:\nnobody:x:65534:\n' > "$rootfs/etc/group"
    umoci repack --image "$tmp/layout:latest" "$tmp/bundle" >/dev/null
    umoci config --image "$tmp/layout:latest" "$@" \
        --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    mkdir -p "$cache"
    tar -C "$tmp/layout" -cf "$out.tmp" . && mv "$out.tmp" "$out"
    echo "$out"
}
