#!/usr/bin/env python3
"""50 AWS instances launched and destroyed in parallel (each task launches one, waits until it
is `running`, then terminates it and waits until it is `terminated`) against the AWS stand-in
throttled at 20 requests/s (its `rate_limit`: RequestLimitExceeded above 20 in any sliding
second). The throttle bounds the time from below: (requests the stand-in let through) / 20 per
second. Target: total <= 1.2x that bound, with the run succeeding (no RequestLimitExceeded
reaching the recipe; those the stand-in gave are counted).

Two bounds are printed: for the requests this run had let through, and for the fewest any
client could send: per instance a RunInstances and a TerminateInstances; for the run a key
pair import and delete, a security group create, ingress rule and delete, one image look-up,
one listing that finds every instance running and one that finds them all terminated.

usage: bench/aws_fleet.py [--bin build/ephrun] [--runs 3] [--count 50] [--rate-limit 20] [--timeline]
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
from aws import AwsStandin  # noqa: E402

TARGET = 1.2


def one_run(a, args, i):
    image = a.image_id()
    start = len(a.state()["log"])
    tmp = tempfile.mkdtemp(prefix="ephrun-bench-aws-fleet-")
    env = dict(os.environ, EPHRUN_HOME=os.path.join(tmp, "home"), EPHRUN_AWS_IMAGE=image, **a.env())
    r = subprocess.run([os.path.abspath(args.bin), os.path.join(ROOT, "bench", "aws_fleet.lua"),
                        "count=%d" % args.count, "--yes"], capture_output=True, text=True, env=env, timeout=900)
    if r.returncode != 0:
        sys.exit("run %d failed:\n%s%s" % (i, r.stdout, r.stderr))
    m = dict(re.findall(r"(\w+)=([\d.]+)", r.stdout.split("FLEET", 1)[1]))
    log = a.state()["log"][start:]   # before the leftovers check, whose own calls are logged too
    left = a.leftovers()
    if any(left.values()):
        sys.exit("run %d left %s" % (i, left))
    throttled = sum(1 for c in log if c["status"] == 503)
    through = len(log) - throttled
    by_action = {}
    for c in log:
        by_action[c["action"]] = by_action.get(c["action"], 0) + 1
    fewest = 2 * args.count + 8
    t0 = log[0]["t"] if log else 0
    phases = {}
    for c in log:
        first, last, n = phases.get(c["action"], (c["t"] - t0, 0, 0))
        phases[c["action"]] = (first, c["t"] - t0, n + 1)
    return dict(phases=phases, total=float(m["total_s"]), launch=float(m["last_running_s"]), destroy=float(m["last_destroy_s"]),
                sent=len(log), through=through, throttled=throttled, bound=through / args.rate_limit,
                fewest=fewest / args.rate_limit, describes=by_action.get("DescribeInstances", 0),
                actions=by_action)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "ephrun"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--rate-limit", type=int, default=20)
    ap.add_argument("--timeline", action="store_true",
                    help="print when each action was first and last answered, per run (s from the first request)")
    args = ap.parse_args()
    rows = []
    for i in range(args.runs):
        # A fresh stand-in per run: its throttle window and log start empty.
        with AwsStandin(rate_limit=args.rate_limit) as a:
            rows.append(one_run(a, args, i))
    print("| run | total s | last running at s | last destroy took s | requests | throttled | let through "
          "| DescribeInstances | bound s | total/bound | fewest-requests bound s | total/fewest |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows):
        print("| %d | %.2f | %.2f | %.2f | %d | %d | %d | %d | %.2f | %.2f× | %.2f | %.2f× |" % (
            i + 1, r["total"], r["launch"], r["destroy"], r["sent"], r["throttled"], r["through"], r["describes"],
            r["bound"], r["total"] / r["bound"], r["fewest"], r["total"] / r["fewest"]))
    if args.timeline:
        for i, r in enumerate(rows):
            print("timeline run %d: " % (i + 1) + ", ".join(
                "%s %d %.2f-%.2f" % (k, v[2], v[0], v[1]) for k, v in sorted(r["phases"].items(), key=lambda kv: kv[1][0])))
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    ratio = statistics.median(r["total"] / r["bound"] for r in rows)
    print()
    print("requests by action (run 1): " + ", ".join("%s %d" % kv for kv in sorted(rows[0]["actions"].items())))
    print("median: total %.2f s, %d requests let through, bound %.2f s, total/bound %.2f× (target <= %.1f×: %s); "
          "fewest-requests bound %.2f s, total/that %.2f×" % (
              med("total"), med("through"), med("bound"), ratio, TARGET, "met" if ratio <= TARGET else "NOT met",
              med("fewest"), statistics.median(r["total"] / r["fewest"] for r in rows)))


if __name__ == "__main__":
    main()
