#!/usr/bin/env python3
"""Redaction cost: a child writes 10 MB of build-log lines (1% carrying a secret raw,
1% JSON-escaped, and `--escapes` percent of them a JSON/URL fragment that makes the
decoding passes run) through `ephrun.proc.run` with 20 secrets registered; median wall
time of the whole ephrun process over N runs, for each --bin given (e.g. before and
after a change), beside the child alone with its output to /dev/null.

usage: bench/redact.py --bin build/ephrun [--bin other/ephrun] [--runs 5] [--escapes 10]
"""
import argparse
import os
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

CHILD = r'''
import json, os, sys
secrets = [os.environ["BENCH_SECRET_%d" % i] for i in range(20)]
every = int(sys.argv[1]) if len(sys.argv) > 1 else 0
out, total, i = [], 0, 0
while total < 10_000_000:
    l = "2026-12-01T10:00:00 [build] step %d: compiling src/module_%d.cpp with -O2 -Wall" % (i, i % 97)
    if every and i % every == 0:
        l += ' {"path":"a\\/b","q":"x%20y"}'
    if i % 100 == 0:
        l += " key=" + secrets[i % 20]
    if i % 100 == 50:
        l += " " + json.dumps(secrets[i // 100 % 5 * 4])
    out.append(l)
    total += len(l) + 1
    i += 1
data = ("\n".join(out) + "\n").encode()
while data:
    data = data[os.write(1, data):]
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--escapes", type=int, default=10, help="percent of lines with escape bytes")
    a = ap.parse_args()
    d = tempfile.mkdtemp(prefix="ephrun-redact-bench-")
    child = os.path.join(d, "child.py")
    with open(child, "w") as f:
        f.write(CHILD)
    env = dict(os.environ, EPHRUN_HOME=d)
    for i in range(20):
        v = "tok-%d-%s" % (i, chr(ord("a") + i) * (12 + i))
        env["BENCH_SECRET_%d" % i] = v + ("/x\"y'z" if i % 4 == 0 else "")
    every = str(100 // a.escapes) if a.escapes else "0"

    def median(argv):
        walls = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
            walls.append(time.perf_counter() - t0)
            if r.returncode != 0:
                raise SystemExit("%s exited %d" % (argv, r.returncode))
        return statistics.median(walls) * 1000, sorted(round(w * 1000) for w in walls)

    print("load average: %.1f %.1f %.1f" % os.getloadavg())
    base, runs = median(["python3", child, every])
    print("%-40s %8.0f ms  runs %s" % ("child alone (> /dev/null)", base, runs))
    for b in a.bin:
        ms, runs = median([b, os.path.join(ROOT, "bench", "redact.lua"), "child=" + child, "every=" + every])
        print("%-40s %8.0f ms  runs %s" % (os.path.relpath(b, ROOT), ms, runs))


if __name__ == "__main__":
    main()
