#!/usr/bin/env bash
# Runs the shim's fuzz targets (agent_replies, guest_output) for a bounded time
# from their committed seeds (shim/fuzz/seeds/<target>, written by scripts/fuzz_seeds.py);
# crashes land in shim/fuzz/artifacts/<target>/.
# Usage: shim/fuzz/run.sh [SECONDS_PER_TARGET]   (default 35)
set -euo pipefail
here="$(dirname "$0")"
exec "$here/../../scripts/fuzz.sh" "$here" "${1:-35}"
