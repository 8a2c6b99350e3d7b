#!/usr/bin/env python3
"""50 Vultr instances launched and destroyed in parallel (each task launches one, waits until
it is `running`, then destroys it)
against the Vultr stand-in at its 30 requests/s limit. The rate limit sets a lower bound on
the time: (requests the run had to send) / 30 per second. Target: total <= 1.2x that bound,
with no 429 reaching the recipe (the run succeeds; 429s the stand-in gave are counted).

Two bounds are printed: for the requests this run actually sent, and for the fewest any
client could send: a key registration and removal, a create and a delete per instance, and
one listing of the run's instances that finds them all running. Boot time (the stand-in's
boot_seconds, 1 s) overlaps with the paced creates.

usage: bench/vultr_fleet.py [--bin build/ephrun] [--runs 3] [--count 50] [--rate-limit 30]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
from vultr import VultrStandin  # noqa: E402

TARGET = 1.2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "ephrun"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--rate-limit", type=int, default=30)
    a = ap.parse_args()
    rows = []
    for i in range(a.runs):
        with VultrStandin(api_key="bench-key", rate_limit=a.rate_limit) as v:
            tmp = tempfile.mkdtemp(prefix="ephrun-bench-fleet-")
            env = dict(os.environ, EPHRUN_HOME=os.path.join(tmp, "home"), **v.env())
            r = subprocess.run([os.path.abspath(a.bin), "--yes", os.path.join(ROOT, "bench", "vultr_fleet.lua"),
                                "count=%d" % a.count], capture_output=True, text=True, env=env, timeout=900)
            if r.returncode != 0:
                sys.exit("run %d failed:\n%s%s" % (i, r.stdout, r.stderr))
            m = dict(re.findall(r"(\w+)=([\d.]+)", r.stdout.split("FLEET", 1)[1]))
            st = v.state()
            left = v.leftovers()
            if left["instances"] or left["ssh_keys"]:
                sys.exit("run %d left %s" % (i, left))
            sent = st["requests"]
            bound = sent / a.rate_limit
            fewest = (3 + 2 * a.count) / a.rate_limit
            rows.append(dict(total=float(m["total_s"]), launch=float(m["last_running_s"]), destroy=float(m["last_destroy_s"]),
                             sent=sent, given429=st["rate_limited"], peak=st["peak_rps"], bound=bound,
                             fewest=fewest))
    print("| run | total s | last running at s | last destroy took s | requests | 429 given | peak req/s | bound s | total/bound | fewest-requests bound s | total/fewest |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        print("| %d | %.2f | %.2f | %.2f | %d | %d | %d | %.2f | %.2f× | %.2f | %.2f× |" % (
            i + 1, r["total"], r["launch"], r["destroy"], r["sent"], r["given429"], r["peak"], r["bound"],
            r["total"] / r["bound"], r["fewest"], r["total"] / r["fewest"]))
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    ratio = statistics.median(r["total"] / r["bound"] for r in rows)
    print()
    print("median: total %.2f s, %d requests, bound %.2f s, total/bound %.2f× (target <= %.1f×: %s); "
          "fewest-requests bound %.2f s, total/that %.2f×" % (
              med("total"), med("sent"), med("bound"), ratio, TARGET, "met" if ratio <= TARGET else "NOT met",
              med("fewest"), statistics.median(r["total"] / r["fewest"] for r in rows)))


if __name__ == "__main__":
    main()
