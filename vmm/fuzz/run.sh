#!/usr/bin/env bash
# Runs every hull-vmm fuzz target for a bounded time from its committed seeds
# (vmm/fuzz/seeds/<target>); crashes land in vmm/fuzz/artifacts/<target>/.
# Usage: vmm/fuzz/run.sh [SECONDS_PER_TARGET]   (default 35: 5 targets, about 3 minutes)
set -euo pipefail
here="$(dirname "$0")"
exec "$here/../../scripts/fuzz.sh" "$here" "${1:-35}"
