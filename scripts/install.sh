#!/usr/bin/env bash
# Installs Hull for containerd: release binaries on containerd's PATH (with the
# operator tools hull-check and hull-monitor), the system user hull-vmm, the guest
# kernel and image under $PREFIX/share/hull, and /etc/hull/config.toml pointing
# at them (kept when an administrator has edited it). Prints the containerd CRI
# snippet for the runtime class `hull` with --print-cri. Run by `make install`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
prefix="${PREFIX:-/usr/local}"
say() { echo "install: $*" >&2; }

cargo build -q --release -p hull-vmm -p containerd-shim-hull-v2 -p hull-tools
for bin in hull-vmm containerd-shim-hull-v2 hull-check hull-monitor; do
    install -D -m 0755 "target/release/$bin" "$prefix/bin/$bin"
done
install -D -m 0644 "$(kernel-config/build.sh)/vmlinux" "$prefix/share/hull/vmlinux"
install -D -m 0644 "$(rootfs/build.sh)" "$prefix/share/hull/initramfs.cpio"

# The unprivileged user each pod's hull-vmm drops to inside its jail (`vmm_user`).
if ! id -u hull-vmm >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin hull-vmm
    say "created the system user hull-vmm (hull-vmm runs as it in its jail)"
fi

virtiofsd="$(command -v virtiofsd || echo "$HOME/.cargo/bin/virtiofsd")"
[[ -x "$virtiofsd" ]] || { say "no virtiofsd; run 'make setup' first"; exit 1; }
[[ "$virtiofsd" == "$prefix/bin/virtiofsd" ]] || ln -sf "$virtiofsd" "$prefix/bin/virtiofsd"
config=/etc/hull/config.toml
marker="# Written by Hull's scripts/install.sh; delete this line to keep your edits."
if [[ ! -f "$config" ]] || head -1 "$config" | grep -qxF "$marker"; then
    mkdir -p /etc/hull
    cat > "$config" <<CFG
$marker
kernel = "$prefix/share/hull/vmlinux"
initrd = "$prefix/share/hull/initramfs.cpio"
hull_vmm = "$prefix/bin/hull-vmm"
virtiofsd = "$prefix/bin/virtiofsd"
vcpus = 1
memory_mib = 512
CFG
else
    say "keeping $config (edited by hand)"
fi
say "installed hull-vmm, containerd-shim-hull-v2, hull-check and hull-monitor in $prefix/bin, guest images in $prefix/share/hull, config $config"
if [[ "${1:-}" == "--print-cri" ]]; then
    cat <<'SNIPPET'
# containerd 1.6/1.7, config.toml `version = 2`: Kubernetes RuntimeClass handler "hull"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hull]
  runtime_type = "io.containerd.hull.v2"
  pod_annotations = ["io.hull.*"]
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hull.options]
    ConfigPath = "/etc/hull/config.toml"

# containerd 2.x, config.toml `version = 3`: the same runtime
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.hull]
  runtime_type = "io.containerd.hull.v2"
  pod_annotations = ["io.hull.*"]
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.hull.options]
    ConfigPath = "/etc/hull/config.toml"
SNIPPET
    echo "# then: hull-check (the node check) must print no FAIL line"
fi
