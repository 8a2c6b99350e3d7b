#!/usr/bin/env bash
# Installs what is needed, checks formatting and lint, builds, and runs the whole
# test suite twice: a normal build, then under AddressSanitizer + UBSan; then
# the unit tests and Lua specs under ThreadSanitizer.
# SKIP_SANITIZE=1 skips the second pass, SKIP_TSAN=1 the third (for a quick local loop).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== format and lint"
bash scripts/lint.sh

echo "== build"
BUILD_DIR=build bash scripts/build.sh
echo "== test"
ctest --test-dir build --output-on-failure -j2 --timeout 900

if [ "${SKIP_SANITIZE:-0}" != 1 ]; then
  echo "== build (ASan+UBSan)"
  BUILD_DIR=build-asan BUILD_TYPE=Debug bash scripts/build.sh -DEPHRUN_SANITIZE=ON
  echo "== test (ASan+UBSan)"
  # LeakSanitizer needs ptrace, which some sandboxes refuse; leaks are not the
  # target here, memory errors and undefined behaviour are.
  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    EPHRUN_SANITIZED=1 ctest --test-dir build-asan --output-on-failure -j2 --timeout 1200
fi
if [ "${SKIP_TSAN:-0}" != 1 ]; then
  # Only where threads meet the scheduler: the unit tests and the Lua specs.
  echo "== build (TSan)"
  BUILD_DIR=build-tsan BUILD_TYPE=RelWithDebInfo bash scripts/build.sh -DEPHRUN_TSAN=ON
  echo "== test (TSan)"
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 EPHRUN_SANITIZED=1 \
    ctest --test-dir build-tsan -R 'unit:|lua:' --output-on-failure -j2 --timeout 1200
fi
echo "== all tests passed"
