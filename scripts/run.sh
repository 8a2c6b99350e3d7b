#!/usr/bin/env bash
# Installs, builds and runs the main job: deploy-fast on the local provider.
# Until the local provider can launch instances, this shows deploy-fast's plan.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
exec ./build/ephrun recipes/deploy-fast.lua --dry-run "$@"
