#!/usr/bin/env python3
"""A 2 GiB file uploaded to the AWS stand-in (moto behind its proxy) by ephrun.s3 and by the
official `aws s3 cp`, in the same run, the order rotated each round; medians and the ratio.

Each upload is timed from the start of its process to its end (ephrun: its multipart upload
with SHA-256 on every part, the whole-file SHA-256 it stores as metadata, and the HEAD that
verifies the result; `aws s3 cp`: its multipart upload with its default checksums). CPU
seconds are counted for the client (its process tree, from os.times' children) and for the stand-in
(utime+stime of its process, which runs the proxy and moto in one Python interpreter): when
the stand-in's CPU time is close to the wall time, it is the bottleneck for both clients,
since one Python interpreter runs on one core at a time.

usage: bench/s3_upload.py [--bin build/ephrun] [--runs 3] [--size-mib 2048]
                          [--part-mib 16] [--parallel 4]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
from aws import AwsStandin  # noqa: E402

BUCKET = "bench-bucket"
TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def timed(cmd, env, standin_pid):
    s0, t0 = proc_cpu(standin_pid), time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    out, err = p.communicate(timeout=1800)
    status = p.returncode
    wall = time.monotonic() - t0
    if status != 0:
        sys.exit("%s failed (%d):\n%s%s" % (cmd[0], status, out, err))
    return wall, proc_cpu(standin_pid) - s0, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "ephrun"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--part-mib", type=int, default=16)
    ap.add_argument("--parallel", type=int, default=4)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ephrun-bench-s3-")
    path = os.path.join(tmp, "upload.bin")
    with open(path, "wb") as f:
        for _ in range(a.size_mib):
            f.write(os.urandom(1 << 20))
    size = os.path.getsize(path)
    rows = {"ephrun": [], "aws s3 cp": []}
    try:
        with AwsStandin() as s:
            s.aws_cli("s3api", "create-bucket", "--bucket", BUCKET,
                      "--create-bucket-configuration", "LocationConstraint=eu-west-1")
            env = dict(os.environ, EPHRUN_HOME=os.path.join(tmp, "home"), **s.env())
            env.pop("AWS_PROFILE", None)
            env.pop("EPHRUN_NOTIFY_URL", None)
            cmds = {
                "ephrun": lambda key: [os.path.abspath(a.bin), os.path.join(ROOT, "bench", "s3_upload.lua"),
                                       "file=" + path, "url=s3://%s/%s" % (BUCKET, key),
                                       "part_mib=%d" % a.part_mib, "parallel=%d" % a.parallel],
                "aws s3 cp": lambda key: ["aws", "--endpoint-url", s.url, "s3", "cp", "--only-show-errors", path,
                                          "s3://%s/%s" % (BUCKET, key)],
            }
            order = list(cmds)
            for i in range(a.runs):
                for name in (order if i % 2 == 0 else order[::-1]):
                    key = "bench/%d-%s" % (i, name.split()[0])
                    r0 = os.times()
                    wall, standin_cpu, _ = timed(cmds[name](key), env, s.proc.pid)
                    r1 = os.times()
                    client_cpu = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
                    _, head, _ = s.aws_cli("s3api", "head-object", "--bucket", BUCKET, "--key", key)
                    if head["ContentLength"] != size:
                        sys.exit("%s stored %d bytes, not %d" % (name, head["ContentLength"], size))
                    s.aws_cli("s3api", "delete-object", "--bucket", BUCKET, "--key", key)
                    rows[name].append((wall, client_cpu, standin_cpu))
                    print("run %d %-10s %6.1f s  %6.1f MB/s  client CPU %5.1f s  stand-in CPU %5.1f s"
                          % (i, name, wall, size / wall / 1e6, client_cpu, standin_cpu), flush=True)
            _, left, _ = s.aws_cli("s3api", "list-multipart-uploads", "--bucket", BUCKET)
            if (left or {}).get("Uploads"):
                sys.exit("multipart uploads left: %r" % left["Uploads"])
    finally:
        os.remove(path)
    print()
    print("| client | median s | MB/s | client CPU s | stand-in CPU s | stand-in CPU / wall |")
    print("|---|---|---|---|---|---|")
    med = {}
    for name, rs in rows.items():
        w = statistics.median(r[0] for r in rs)
        c = statistics.median(r[1] for r in rs)
        sc = statistics.median(r[2] for r in rs)
        med[name] = w
        print("| %s | %.1f | %.0f | %.1f | %.1f | %.2f |" % (name, w, size / w / 1e6, c, sc, sc / w))
    # On a shared machine the load changes between rounds: the two uploads of one round ran
    # back to back, so their ratio is the steadier figure.
    paired = statistics.median(e[0] / c[0] for e, c in zip(rows["ephrun"], rows["aws s3 cp"]))
    print()
    print("ephrun / aws s3 cp = %.2f (medians), %.2f (median of the per-round ratios); %d runs, %d MiB, "
          "ephrun parts %d MiB x %d in flight, load average %.1f"
          % (med["ephrun"] / med["aws s3 cp"], paired, a.runs, a.size_mib, a.part_mib, a.parallel, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
