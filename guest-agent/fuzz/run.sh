#!/usr/bin/env bash
# Runs the agent's fuzz targets (agent_requests, oci_spec) for a bounded time
# from their committed seeds (guest-agent/fuzz/seeds/<target>, written by
# scripts/fuzz_seeds.py); crashes land in guest-agent/fuzz/artifacts/<target>/.
# Usage: guest-agent/fuzz/run.sh [SECONDS_PER_TARGET]   (default 35)
set -euo pipefail
here="$(dirname "$0")"
exec "$here/../../scripts/fuzz.sh" "$here" "${1:-35}"
