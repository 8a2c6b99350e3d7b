#!/usr/bin/env bash
# Installs, builds and runs the main job: deploy-fast on the local provider.
# It launches a local instance (an sshd on 127.0.0.1 with this run's keys),
# syncs examples/hello to it, builds it with make, fetches dist/ into
# ./artifacts, destroys the instance and prints a summary. Extra arguments go
# to the recipe (e.g. `--dry-run` to only print the plan, `keep=true`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
exec ./build/ephrun recipes/deploy-fast.lua src=examples/hello out=artifacts "$@"
