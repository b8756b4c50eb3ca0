#!/usr/bin/env bash
# One-command setup for Hull on Debian 12 (root): Debian packages, Rust targets
# and tools, virtiofsd, the guest kernel, the guest image, Hull installed for
# containerd (scripts/install.sh) and the lab's VM.
# Idempotent: a second run with everything in place takes a few seconds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
say() { echo "setup: $*" >&2; }
[[ $(id -u) == 0 ]] || { say "run as root (installs packages, uses /dev/kvm and /var/cache/hull)"; exit 1; }

packages=(
    build-essential bc bison flex libelf-dev libssl-dev cpio xz-utils file kmod  # guest kernel build
    linux-source-6.12                                                  # guest kernel source
    protobuf-compiler                                                  # agent API codegen
    libseccomp-dev libcap-ng-dev pkg-config                            # virtiofsd build
    containerd runc crun umoci                                         # runtimes (crun: benchmarks) and images
    containernetworking-plugins                                        # CNI bridge for the CRI tests
    e2fsprogs                                                          # image disks (mkfs.ext4, debugfs)
    qemu-system-x86 qemu-system-common                                 # the lab, reference VMM
    busybox-static iproute2 procps psmisc util-linux jq                  # images, debugging, tests
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's containerd unit starts it on install; Hull's tests start their own.

export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { say "no cargo on PATH; install Rust with rustup first"; exit 1; }
# Cargo's build output is a cache like the kernel's: it lives outside the
# checkout, under /var/cache/hull, and every checkout of this machine shares
# it (cargo rebuilds what changed; a missing cache is rebuilt from scratch).
# A checkout that already has a target directory of its own keeps it.
cache="${HULL_CACHE:-/var/cache/hull}"
for pair in target:cargo-target vmm/fuzz/target:cargo-target-fuzz \
    shim/fuzz/target:cargo-target-fuzz-shim guest-agent/fuzz/target:cargo-target-fuzz-agent; do
    dir="${pair%%:*}" store="$cache/${pair#*:}"
    if [[ ! -e "$dir" && ! -L "$dir" ]]; then
        mkdir -p "$store" && ln -s "$store" "$dir"
    fi
done
rustup target list --installed | grep -qx x86_64-unknown-linux-musl \
    || rustup target add x86_64-unknown-linux-musl
for c in rustfmt clippy; do
    rustup component list --installed | grep -q "^$c" || rustup component add "$c"
done
if ! command -v virtiofsd >/dev/null; then
    say "building virtiofsd (cargo install, ~4 min once)"
    cargo install --locked --quiet virtiofsd
fi
# cargo-fuzz for the hull-vmm fuzz targets (vmm/fuzz/run.sh); they build with nightly.
if ! cargo fuzz --version >/dev/null 2>&1; then
    say "building cargo-fuzz (cargo install, ~2 min once)"
    cargo install --locked --quiet cargo-fuzz
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
# pjdfstest, the POSIX file-system suite the lab runs in runc and Hull
# containers (shim/tests/lab_shim/fs_conformance.rs names this version):
# static for musl, cached outside the repo by version.
pjdfstest_version=0.2.2
pjdfstest_root="${HULL_CACHE:-/var/cache/hull}/tools/pjdfstest-$pjdfstest_version"
if [[ ! -x "$pjdfstest_root/bin/pjdfstest" ]]; then
    say "building pjdfstest $pjdfstest_version (static, musl; ~3 min once)"
    cargo install --locked --quiet pjdfstest --version "$pjdfstest_version" \
        --target x86_64-unknown-linux-musl --root "$pjdfstest_root"
fi

say "guest kernel: $(kernel-config/build.sh)"
say "guest image: $(rootfs/build.sh)"
# Installs hull-vmm and the shim on containerd's PATH, the guest files and
# /etc/hull/config.toml, and prints the containerd CRI snippet.
scripts/install.sh --print-cri
if ! scripts/kvm-check.sh >/dev/null; then
    say "lab VM: $(tests/lab/prepare.sh)"
fi
say "$(scripts/kvm-check.sh)"
say "done"
