#!/usr/bin/env bash
# clang-format and luacheck must both be clean.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t cpp < <(git ls-files 'host/*.cpp' 'host/*.hpp' 'tests/*.cpp' 'tests/*.hpp')
if ((${#cpp[@]})); then clang-format --dry-run -Werror "${cpp[@]}"; fi
luacheck -q stdlib providers recipes tests/lua meta
