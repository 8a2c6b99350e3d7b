#!/usr/bin/env bash
# Installs, builds and runs the main job: deploy-fast on the local provider.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
exec ./build/ephrun recipes/deploy-fast.lua "$@"
