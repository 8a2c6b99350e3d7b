#!/usr/bin/env python3
"""SSH benchmarks against loopback sshd instances (tests/support/sshd.py), side by side
with OpenSSH-based peers, in one run. Prints markdown tables of medians and ratios.

- cold sync of a generated tree (5,000 files / ~200 MB, mixed sizes, fixed seed):
  `ephrun bench/sync.lua` vs `tar c | ssh tar x`, `rsync -a -e ssh`, `scp -r`
  (remote directories wiped between runs); target <= 1.1x tar|ssh and faster than rsync
- warm sync, no change and one file changed: ephrun vs rsync; target <= rsync
- `true` on 16 sshd instances: `ephrun bench/parallel_true.lua` (ephrun.parallel) vs
  `parallel-ssh -p 16`; target <= pssh
- bulk: `ssh host 'cat >/dev/null' < 1 GB file` (the link's ceiling) vs ephrun syncing
  that one file (and `tar c | ssh tar x` of it, which also writes to disk)
- first command: `ephrun bench/first_command.lua` (connect + `true`) vs `ssh host true`;
  target <= 300 ms

Every ephrun number is the wall time of a whole `ephrun` process (start-up, connect,
host-key check, work, exit), like the peers, which are whole `ssh`/`rsync`/... runs.
The peers skip host-key checking; ephrun pins each host key via a known_hosts file.
Must run as root (it starts sshd and logs in as the plain user ephrun-test).

usage: bench/ssh.py [--bin build-bench/ephrun] [--runs 3] [--small-runs 5]
                    [--big-mb 1024] [--hosts 16] [--bulk-tar]
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "support"))
from sshd import Sshd  # noqa: E402

SEED = 20240611
FILES = 5000


def make_tree(root, seed=SEED):
    """5,000 files in 50 directories (a third in a `sub/` below): every 100th is 2 MiB,
    the others 1-40 kB; random bytes from a fixed seed; every 50th file is executable."""
    rng = random.Random(seed)
    total = 0
    for i in range(FILES):
        d = os.path.join(root, "d%d" % (i // 100), "sub" if i % 3 == 0 else "")
        os.makedirs(d, exist_ok=True)
        size = (2 << 20) if i % 100 == 0 else rng.randrange(1000, 40000)
        p = os.path.join(d, "f%d.dat" % i)
        with open(p, "wb") as f:
            f.write(rng.randbytes(size))
        if i % 50 == 0:
            os.chmod(p, 0o755)
        total += size
    return total


def make_big(path, mb, seed=SEED):
    """`mb` MiB of seeded random bytes (a 64 MiB block, each copy with a distinct head)."""
    block = bytearray(random.Random(seed).randbytes(64 << 20))
    with open(path, "wb") as f:
        left = mb << 20
        n = 0
        while left > 0:
            block[:8] = n.to_bytes(8, "little")
            chunk = block[:min(left, len(block))]
            f.write(chunk)
            left -= len(chunk)
            n += 1


def timed(cmd, env=None, shell=False):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, shell=shell, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit("command failed (%d): %s\n%s%s" % (r.returncode, cmd, r.stdout[-2000:], r.stderr[-2000:]))
    return wall, r.stdout


def bench_json(out):
    for line in out.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])
    sys.exit("no BENCH line in ephrun output:\n" + out)


def count_files(d):
    return sum(len(fs) for _, _, fs in os.walk(d))


def med(xs):
    return statistics.median(xs)


class Bench:
    def __init__(self, a, tmp):
        self.a = a
        self.tmp = tmp
        self.env = dict(os.environ, EPHRUN_HOME=os.path.join(tmp, "ephrun-home"))
        self.env.pop("EPHRUN_LUA_DIR", None)
        self.key = os.path.join(tmp, "id_ed25519")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", self.key],
                       check=True)
        with open(self.key + ".pub") as f:
            self.pub = f.read()
        self.ssh_opts = ["-i", self.key, "-o", "StrictHostKeyChecking=no", "-o",
                         "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]

    def known_hosts(self, name, daemons):
        p = os.path.join(self.tmp, name)
        with open(p, "w") as f:
            for d in daemons:
                f.write("[127.0.0.1]:%d %s\n" % (d.port, d.host_key_pub))
        return p

    def ssh_e(self, d):
        return "ssh " + " ".join(self.ssh_opts) + " -p %d" % d.port

    def ssh_cmd(self, d):
        return self.ssh_e(d) + " %s@127.0.0.1" % d.user

    def ephrun(self, recipe, **params):
        argv = [self.a.bin, os.path.join(ROOT, "bench", recipe)] + ["%s=%s" % kv for kv in params.items()]
        wall, out = timed(argv, env=self.env)
        return wall, bench_json(out)


def fresh_remote(path):
    """Wiped and recreated (owned by the login user), outside the timed region."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    shutil.chown(path, "ephrun-test", "ephrun-test")


def table(title, header, rows):
    print("### " + title)
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()


def verdict(ok):
    return "met" if ok else "**NOT met**"


def main():
    ap = argparse.ArgumentParser()
    default_bin = os.path.join(ROOT, "build-bench", "ephrun")
    if not os.path.exists(default_bin):
        default_bin = os.path.join(ROOT, "build", "ephrun")
    ap.add_argument("--bin", default=default_bin)
    ap.add_argument("--runs", type=int, default=3, help="runs of the big measures (median)")
    ap.add_argument("--small-runs", type=int, default=5, help="runs of the small measures (median)")
    ap.add_argument("--big-mb", type=int, default=1024, help="size of the bulk stream / file")
    ap.add_argument("--hosts", type=int, default=16, help="sshd instances for the parallel test")
    ap.add_argument("--bulk-tar", action="store_true",
                    help="also time `tar c | ssh tar x` of the bulk file (slow on a loaded machine)")
    a = ap.parse_args()
    a.bin = os.path.abspath(a.bin)
    if os.geteuid() != 0:
        sys.exit("bench/ssh.py must run as root (it starts sshd instances)")
    for tool in ("ssh", "rsync", "scp", "tar", "parallel-ssh"):
        if not shutil.which(tool):
            sys.exit("missing tool: " + tool)

    started = time.perf_counter()
    load0 = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="ephrun-bench-ssh-")
    os.chmod(tmp, 0o755)
    b = Bench(a, tmp)
    R, S = a.runs, a.small_runs
    try:
        with Sshd() as d:
            d.authorize(b.pub)
            kh = b.known_hosts("known_hosts", [d])
            conn = dict(port=d.port, key_file=b.key, known_hosts=kh)
            src = os.path.join(tmp, "tree")
            t0 = time.perf_counter()
            total_bytes = make_tree(src)
            print("tree: %d files, %.1f MB (generated in %.1f s); bin %s; runs %d/%d; loadavg %.2f %.2f %.2f"
                  % (FILES, total_bytes / 1e6, time.perf_counter() - t0, a.bin, R, S, *load0), file=sys.stderr)
            rbase = os.path.join(d.home, "bench-%d" % d.port)
            fresh_remote(rbase)
            dest = {k: os.path.join(rbase, k) for k in ("ephrun", "tar", "rsync", "scp")}
            rsync_cmd = "rsync -a -e '%s' %s/ %s@127.0.0.1:%s/" % (b.ssh_e(d), src, d.user, dest["rsync"])

            # --- cold: each round wipes every remote dir, then runs the four in a rotated order.
            cold = {k: [] for k in dest}
            ephrun_sent = []

            def run_cold(k):
                if k == "ephrun":
                    w, j = b.ephrun("sync.lua", src=src, dest=dest[k], **conn)
                    ephrun_sent.append(int(j["files_sent"]))
                elif k == "tar":
                    w, _ = timed("tar -C %s -cf - . | %s 'mkdir -p %s && tar -x -C %s -f -'"
                                 % (src, b.ssh_cmd(d), dest[k], dest[k]), shell=True)
                elif k == "rsync":
                    w, _ = timed(rsync_cmd, shell=True)
                else:
                    w, _ = timed(["scp", "-q", "-r", "-P", str(d.port)] + b.ssh_opts +
                                 [src, "%s@127.0.0.1:%s" % (d.user, dest[k])])
                n = count_files(dest[k])
                if n != FILES:
                    sys.exit("cold %s left %d files, expected %d" % (k, n, FILES))
                cold[k].append(w)

            order = ["ephrun", "tar", "rsync", "scp"]
            for r in range(R):
                for k in dest:
                    shutil.rmtree(dest[k], ignore_errors=True)
                subprocess.run(["sync"])
                for k in order[r % 4:] + order[:r % 4]:
                    run_cold(k)
            print("cold done (%.0f s)" % (time.perf_counter() - started), file=sys.stderr)

            # --- warm: ephrun and rsync dirs are populated from the last cold round.
            warm0 = {"ephrun": [], "rsync": []}
            warm1 = {"ephrun": [], "rsync": []}
            sent0, sent1 = [], []
            for r in range(S):
                for k in (["ephrun", "rsync"] if r % 2 == 0 else ["rsync", "ephrun"]):
                    if k == "ephrun":
                        w, j = b.ephrun("sync.lua", src=src, dest=dest[k], **conn)
                        sent0.append(int(j["files_sent"]))
                    else:
                        w, _ = timed(rsync_cmd, shell=True)
                    warm0[k].append(w)
            for r in range(S):
                # one file changed: a different one each round, appended to (size and mtime change)
                with open(os.path.join(src, "d%d" % (7 + r), "f%d.dat" % (701 + 100 * r)), "ab") as f:
                    f.write(b"change %d\n" % r)
                for k in (["ephrun", "rsync"] if r % 2 == 0 else ["rsync", "ephrun"]):
                    if k == "ephrun":
                        w, j = b.ephrun("sync.lua", src=src, dest=dest[k], **conn)
                        sent1.append(int(j["files_sent"]))
                    else:
                        w, _ = timed(rsync_cmd, shell=True)
                    warm1[k].append(w)
            shutil.rmtree(rbase, ignore_errors=True)
            print("warm done (%.0f s)" % (time.perf_counter() - started), file=sys.stderr)

            # --- first command: connect + `true`
            first = {"ephrun": [], "ephrun_inproc": [], "ssh": []}
            for r in range(S):
                w, j = b.ephrun("first_command.lua", **conn)
                first["ephrun"].append(w)
                first["ephrun_inproc"].append(j["total"])
                w, _ = timed(b.ssh_cmd(d) + " true", shell=True)
                first["ssh"].append(w)

            # --- bulk: 1 GB
            bigdir = os.path.join(tmp, "big")
            os.makedirs(bigdir)
            big = os.path.join(bigdir, "blob.bin")
            make_big(big, a.big_mb)
            bulk = {"cat": [], "ephrun": [], "ephrun_sync": [], "tar": []}
            bdest = os.path.join(rbase, "big")
            for r in range(R):
                w, _ = timed("%s 'cat > /dev/null' < %s" % (b.ssh_cmd(d), big), shell=True)
                bulk["cat"].append(w)
                fresh_remote(rbase)
                subprocess.run(["sync"])
                w, j = b.ephrun("sync.lua", src=bigdir, dest=bdest, **conn)
                bulk["ephrun"].append(w)
                bulk["ephrun_sync"].append(j["sync"])
                if not a.bulk_tar:
                    continue
                fresh_remote(rbase)
                subprocess.run(["sync"])
                w, _ = timed("tar -C %s -cf - . | %s 'mkdir -p %s && tar -x -C %s -f -'"
                             % (bigdir, b.ssh_cmd(d), bdest, bdest), shell=True)
                bulk["tar"].append(w)
            shutil.rmtree(rbase, ignore_errors=True)
            os.remove(big)
            print("bulk done (%.0f s)" % (time.perf_counter() - started), file=sys.stderr)

        # --- parallel: `true` on N instances
        par = {"ephrun": [], "ephrun_inproc": [], "pssh": []}
        with_all = []
        try:
            for _ in range(a.hosts):
                x = Sshd()
                x.__enter__()
                with_all.append(x)
                x.authorize(b.pub)
            khp = b.known_hosts("known_hosts_par", with_all)
            hosts = os.path.join(tmp, "pssh_hosts")
            with open(hosts, "w") as f:
                f.writelines("127.0.0.1:%d\n" % x.port for x in with_all)
            ports = ",".join(str(x.port) for x in with_all)
            pssh = ["parallel-ssh", "-h", hosts, "-p", str(a.hosts), "-l", "ephrun-test", "-t", "60",
                    "-x", " ".join(b.ssh_opts), "true"]
            for r in range(S):
                for k in (["ephrun", "pssh"] if r % 2 == 0 else ["pssh", "ephrun"]):
                    if k == "ephrun":
                        w, j = b.ephrun("parallel_true.lua", ports=ports, key_file=b.key, known_hosts=khp,
                                        limit=a.hosts)
                        if j["ok"] != a.hosts:
                            sys.exit("parallel: %d of %d ok" % (j["ok"], a.hosts))
                        par["ephrun_inproc"].append(j["total"])
                    else:
                        w, out = timed(pssh)
                        if out.count("[SUCCESS]") != a.hosts:
                            sys.exit("pssh: not all succeeded:\n" + out)
                    par[k].append(w)
        finally:
            for x in with_all:
                x.__exit__(None, None, None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # --- tables
    mb = total_bytes / 1e6
    c = {k: med(v) for k, v in cold.items()}
    rows = []
    for k, name in (("ephrun", "ephrun `bench/sync.lua`"), ("tar", "`tar c \\| ssh tar x`"),
                    ("rsync", "`rsync -a -e ssh`"), ("scp", "`scp -r`")):
        rows.append((name, "%.2f" % c[k], "%.0f" % (mb / c[k]), "%.2f×" % (c["ephrun"] / c[k]),
                     " ".join("%.2f" % x for x in cold[k])))
    table("Cold sync: %d files / %.0f MB, median of %d" % (FILES, mb, R),
          ["tool", "median (s)", "MB/s", "ephrun ÷ tool", "runs (s)"], rows)
    ok1 = c["ephrun"] <= 1.1 * c["tar"]
    ok2 = c["ephrun"] < c["rsync"]
    print("Targets: ≤ 1.1× tar|ssh — %s (%.2f×); faster than rsync — %s (%.2f×). "
          "ephrun files_sent per run: %s." % (verdict(ok1), c["ephrun"] / c["tar"], verdict(ok2),
                                              c["ephrun"] / c["rsync"], ephrun_sent))
    print()

    rows = []
    for name, w, sent in (("no change", warm0, sent0), ("one file changed", warm1, sent1)):
        e, r_ = med(w["ephrun"]), med(w["rsync"])
        rows.append((name, "%.3f" % e, "%.3f" % r_, "%.2f×" % (e / r_), verdict(e <= r_),
                     ",".join(str(s) for s in sent)))
    table("Warm sync (same tree), median of %d" % S,
          ["case", "ephrun (s)", "rsync (s)", "ephrun ÷ rsync", "target ≤ rsync", "ephrun files_sent"], rows)

    e, p_ = med(par["ephrun"]), med(par["pssh"])
    table("`true` on %d sshd instances, median of %d" % (a.hosts, S),
          ["tool", "median (s)", "runs (s)"],
          [("ephrun `bench/parallel_true.lua` (ephrun.parallel)", "%.3f" % e,
            " ".join("%.3f" % x for x in par["ephrun"])),
           ("  of which in-process (connect + run, all hosts)", "%.3f" % med(par["ephrun_inproc"]), ""),
           ("`parallel-ssh -p %d`" % a.hosts, "%.3f" % p_, " ".join("%.3f" % x for x in par["pssh"]))])
    print("Target ≤ pssh — %s (%.2f×)." % (verdict(e <= p_), e / p_))
    print()

    gb = (a.big_mb << 20) / 1e6
    rows = [("`ssh host 'cat >/dev/null'` (link ceiling)", "%.2f" % med(bulk["cat"]), "%.0f" % (gb / med(bulk["cat"])), "1.00×"),
            ("ephrun sync of the one file (whole process)", "%.2f" % med(bulk["ephrun"]),
             "%.0f" % (gb / med(bulk["ephrun"])), "%.2f×" % (med(bulk["cat"]) / med(bulk["ephrun"]))),
            ("  of which `session:sync` alone", "%.2f" % med(bulk["ephrun_sync"]),
             "%.0f" % (gb / med(bulk["ephrun_sync"])), "%.2f×" % (med(bulk["cat"]) / med(bulk["ephrun_sync"])))]
    if bulk["tar"]:
        rows.append(("`tar c \\| ssh tar x` of the one file (writes to disk too)", "%.2f" % med(bulk["tar"]),
                     "%.0f" % (gb / med(bulk["tar"])), "%.2f×" % (med(bulk["cat"]) / med(bulk["tar"]))))
    table("Bulk: one %d MiB file of random bytes, median of %d" % (a.big_mb, R),
          ["what", "median (s)", "MB/s", "fraction of ceiling"], rows)

    fe, fi, fs = med(first["ephrun"]), med(first["ephrun_inproc"]), med(first["ssh"])
    table("First command: connect + `true`, median of %d" % S,
          ["what", "median (ms)", "runs (ms)"],
          [("ephrun `bench/first_command.lua` (whole process)", "%.0f" % (fe * 1000),
            " ".join("%.0f" % (x * 1000) for x in first["ephrun"])),
           ("  of which connect + `true` in-process", "%.0f" % (fi * 1000),
            " ".join("%.0f" % (x * 1000) for x in first["ephrun_inproc"])),
           ("`ssh host true`", "%.0f" % (fs * 1000), " ".join("%.0f" % (x * 1000) for x in first["ssh"]))])
    print("Target ≤ 300 ms: in-process connect + `true` (from the TCP connect, i.e. what follows sshd's "
          "accept) — %s (%.0f ms); whole ephrun process including its own start-up — %s (%.0f ms)."
          % (verdict(fi <= 0.3), fi * 1000, verdict(fe <= 0.3), fe * 1000))
    print()
    load1 = os.getloadavg()
    print("Run took %.0f s; load average %.2f %.2f %.2f at start, %.2f %.2f %.2f at end (nproc %d)."
          % (time.perf_counter() - started, *load0, *load1, os.cpu_count()))


if __name__ == "__main__":
    main()
