#!/usr/bin/env bash
# Builds the benchmark's OCI image offline: busybox-static plus the static
# hull-bench-probe at /bin/hull-bench-probe, as an OCI layout tarball for
# `ctr images import --base-name docker.io/library/hull-bench`, cached outside
# the repo by the inputs' hashes. Prints its path.
#
# usage: tests/images/bench.sh PROBE_BINARY
set -euo pipefail

probe="${1:?usage: tests/images/bench.sh PROBE_BINARY (target/x86_64-unknown-linux-musl/release/hull-bench-probe)}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/oci.sh"
for t in umoci /bin/busybox; do command -v "$t" >/dev/null || die "missing $t; run 'make setup'"; done
[[ -x "$probe" ]] || die "no probe binary at $probe"
file -b "$probe" 2>/dev/null | grep -q "static" || ldd "$probe" 2>&1 | grep -q "not a dynamic" \
    || die "$probe is not static (build it with --target x86_64-unknown-linux-musl)"

key="$( (sha256sum < /bin/busybox; sha256sum < "$probe"; cat "$0" "$here/oci.sh") | sha256sum | cut -c1-12)"
out="$cache/hull-bench-$key.tar"
[[ -f "$out" ]] && { echo "$out"; exit 0; }

busybox_bundle bin etc tmp proc sys dev root var vol
chmod 1777 "$rootfs/tmp"
install -m 0755 "$probe" "$rootfs/bin/hull-bench-probe"
finish_image --config.cmd /bin/hull-bench-probe --config.cmd serve
