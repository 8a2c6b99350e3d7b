#!/usr/bin/env python3
"""deploy-fast's overhead on the local provider: the wall time of a whole run (launch,
SSH, sync, build, fetch, destroy) minus the build's own time (the same `make` run
locally on a fresh copy of the project). Target: median overhead <= 1.5 s.
Prints a markdown table (per run, then medians per phase from the run's summary).

usage: bench/deploy_overhead.py [--bin build/ephrun] [--runs 5] [--src examples/hello]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TARGET = 1.5


def fresh_copy(src, tmp, name):
    d = os.path.join(tmp, name)
    shutil.copytree(src, d)
    subprocess.run(["make", "clean"], cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return d


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "ephrun"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--src", default=os.path.join(ROOT, "examples", "hello"))
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    tmp = tempfile.mkdtemp(prefix="ephrun-bench-deploy-")
    env = dict(os.environ, EPHRUN_HOME=os.path.join(tmp, "home"))
    rows, phases = [], {}
    try:
        for i in range(a.runs):
            # The build's own time: the same make, locally, on a fresh copy.
            d = fresh_copy(a.src, tmp, "local-%d" % i)
            t0 = time.perf_counter()
            subprocess.run(["make"], cwd=d, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            build = time.perf_counter() - t0

            d = fresh_copy(a.src, tmp, "src-%d" % i)
            out = os.path.join(tmp, "out-%d" % i)
            t0 = time.perf_counter()
            r = subprocess.run([a.bin, "deploy-fast", "src=" + d, "out=" + out], capture_output=True,
                               text=True, env=env, cwd=tmp)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                sys.exit("deploy-fast failed (%d):\n%s%s" % (r.returncode, r.stdout, r.stderr))
            for name, secs in re.findall(r"(?m)^\s+(\w+)\s+(\d+\.\d+)s$", r.stdout):
                phases.setdefault(name, []).append(float(secs))
            rows.append((wall, build, wall - build))
        left = os.listdir(os.path.join(tmp, "home", "local")) if os.path.isdir(os.path.join(tmp, "home", "local")) else []
        if left:
            sys.exit("instances left behind: %s" % left)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("## deploy-fast overhead (local provider, %s)\n" % os.path.relpath(a.src, ROOT))
    print("| run | wall (s) | local make (s) | overhead (s) |")
    print("|---|---|---|---|")
    for i, (wall, build, over) in enumerate(rows, 1):
        print("| %d | %.3f | %.3f | %.3f |" % (i, wall, build, over))
    med = statistics.median(r[2] for r in rows)
    print("| **median** | %.3f | %.3f | **%.3f** |" % (statistics.median(r[0] for r in rows),
                                                         statistics.median(r[1] for r in rows), med))
    print("\n| phase (from the run's summary) | median (s) |")
    print("|---|---|")
    for name, vals in phases.items():
        print("| %s | %.3f |" % (name, statistics.median(vals)))
    verdict = "meets" if med <= TARGET else "MISSES"
    print("\nMedian overhead %.3f s %s the %.1f s target." % (med, verdict, TARGET))
    return 0 if med <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
