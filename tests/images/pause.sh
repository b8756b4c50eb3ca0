#!/usr/bin/env bash
# Builds the CRI sandbox ("pause") image offline: the busybox image of
# busybox.sh whose command sleeps for good, as an OCI layout tarball for
# `ctr -n k8s.io images import --base-name localhost/hull-pause` (named
# localhost/hull-pause:latest then, the `sandbox_image` of tests/cri/lab_cri.rs).
# Cached outside the repo; prints its path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${HULL_CACHE:-/var/cache/hull}/images"
base="$("$here/busybox.sh")"
key="$( (sha256sum < "$base"; cat "$0") | sha256sum | cut -c1-12)"
out="$cache/pause-$key.tar"
[[ -f "$out" ]] && { echo "$out"; exit 0; }

tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/layout" && tar -C "$tmp/layout" -xf "$base"
# PID 1 of its PID namespace: TERM is ignored, the sandbox stops with KILL as under kubelet.
umoci config --image "$tmp/layout:latest" --config.cmd sleep --config.cmd 2147483647 >/dev/null
tar -C "$tmp/layout" -cf "$out.tmp" . && mv "$out.tmp" "$out"
echo "$out"
