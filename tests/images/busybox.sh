#!/usr/bin/env bash
# Builds a busybox OCI image offline (busybox-static + umoci) as an OCI layout
# tarball for `ctr images import`, cached outside the repo. Prints its path.
# The image is named docker.io/library/busybox:latest once imported with
# `ctr images import --base-name docker.io/library/busybox`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/oci.sh"
for t in umoci /bin/busybox; do command -v "$t" >/dev/null || die "missing $t; run 'make setup'"; done

key="$( (sha256sum < /bin/busybox; cat "$0" "$here/oci.sh") | sha256sum | cut -c1-12)"
out="$cache/busybox-$key.tar"
[[ -f "$out" ]] && { echo "$out"; exit 0; }

busybox_bundle bin etc tmp proc sys dev root var
finish_image --config.cmd sh
