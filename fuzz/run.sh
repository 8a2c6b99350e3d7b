#!/bin/sh
# Runs extract_fuzz for SECONDS over the seed corpus (fresh copy, so a run starts from
# the same place): fuzz/run.sh BUILD/extract_fuzz SECONDS [extra libFuzzer flags].
# Crash inputs are kept in ${FUZZ_ARTIFACTS:-/tmp}/extract_fuzz-crash-*.
set -eu
bin=$1; secs=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/ephrun-fuzz-corpus-XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 "$here/make_seeds.py" "$work/corpus"
"$bin" -max_total_time="$secs" -max_len=65536 -timeout=20 -rss_limit_mb=1024 \
  -dict="$here/tar.dict" -print_final_stats=1 \
  -artifact_prefix="${FUZZ_ARTIFACTS:-/tmp}/extract_fuzz-" "$@" "$work/corpus"
