#!/usr/bin/env python3
"""Start-up cost: `ephrun --dry-run recipes/deploy-fast.lua`, median wall time and
peak RSS over N runs, beside a bare `lua5.4` and `sh -c true` for scale.

usage: bench/dryrun.py [--bin build/ephrun] [--runs 20]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def measure(argv, runs, env=None):
    """GNU time reports the child's own peak RSS (a fork from Python would count
    Python's pages); the wall time is taken here around it."""
    walls, rss = [], []
    out = tempfile.mktemp(prefix="ephrun-bench-rss-")
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        walls.append(time.perf_counter() - t0)
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", out] + argv, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
        if p.returncode != 0:
            sys.exit("%s exited %d" % (argv, p.returncode))
        with open(out) as f:
            rss.append(int(f.read().split()[-1]) / 1024.0)  # KiB -> MiB
    os.remove(out)
    return statistics.median(walls) * 1000, max(rss), statistics.median(rss)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "ephrun"))
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    env = dict(os.environ, EPHRUN_HOME=tempfile.mkdtemp(prefix="ephrun-bench-"))
    env.pop("EPHRUN_LUA_DIR", None)
    # src is named: its default is the current directory, which would make the scan the figure.
    rows = [("ephrun --dry-run recipes/deploy-fast.lua", [a.bin, "--dry-run", "recipes/deploy-fast.lua",
                                                          "src=" + os.path.join(ROOT, "examples", "hello")])]
    if shutil.which("lua5.4"):
        rows.append(("lua5.4 -e '' (interpreter alone)", ["lua5.4", "-e", ""]))
    rows.append(("ephrun --version (binary load floor)", [a.bin, "--version"]))
    rows.append(("curl --version (libcurl's own load cost)", ["curl", "--version"]))
    rows.append(("sh -c true (process spawn floor)", ["sh", "-c", "true"]))
    print("| command | median wall (ms) | peak RSS (MiB) | median RSS (MiB) |")
    print("|---|---|---|---|")
    base = None
    for name, argv in rows:
        wall, peak, med = measure(argv, a.runs, env)
        if base is None:
            base = (wall, peak)
        print("| %s | %.1f | %.1f | %.1f |" % (name, wall, peak, med))
    print()
    print("runs: %d; targets: ≤ 20 ms and ≤ 15 MB for ephrun (%s)" % (
        a.runs, "met" if base[0] <= 20 and base[1] <= 15 else "NOT met"))


if __name__ == "__main__":
    main()
