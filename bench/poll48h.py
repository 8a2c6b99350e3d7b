#!/usr/bin/env python3
"""A simulated 48-hour poll loop: `ephrun bench/poll48h.lua` makes 10,000 HTTP polls of a
local status server and 100,000 sleeps (time compressed), and reports its threads and
RSS. Targets: at most 8 threads, RSS within 2 MB of where it started (after warm-up).
This script also samples /proc/PID/status from outside every 50 ms.

usage: bench/poll48h.py [--bin build/ephrun] [--polls 10000] [--ticks 10] [--tick 0.0001]
Exit status 1 when a target is missed.
"""
import argparse
import http.server
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


class Status(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave in two writes

    def do_GET(self):
        body = json.dumps({"state": "running", "progress": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def sample(pid, out, stop):
    while not stop.is_set():
        try:
            with open("/proc/%d/status" % pid) as f:
                d = dict(line.split(":", 1) for line in f)
            out.append((int(d["Threads"]), int(d["VmRSS"].split()[0])))
        except (OSError, KeyError):
            pass
        stop.wait(0.05)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "ephrun"))
    ap.add_argument("--polls", type=int, default=10000)
    ap.add_argument("--ticks", type=int, default=10)
    ap.add_argument("--tick", type=float, default=0.0001)
    a = ap.parse_args()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Status)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = "http://127.0.0.1:%d/status" % srv.server_address[1]
    env = dict(os.environ, EPHRUN_HOME=os.environ.get("EPHRUN_HOME", "/tmp/ephrun-bench-poll48h"))
    t0 = time.monotonic()
    p = subprocess.Popen([a.bin, os.path.join(ROOT, "bench", "poll48h.lua"), "url=" + url,
                          "polls=%d" % a.polls, "ticks=%d" % a.ticks, "tick=%g" % a.tick],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    samples, stop = [], threading.Event()
    threading.Thread(target=sample, args=(p.pid, samples, stop), daemon=True).start()
    out, err = p.communicate()
    stop.set()
    wall = time.monotonic() - t0
    srv.shutdown()
    if p.returncode != 0:
        sys.exit("ephrun exited %d:\n%s%s" % (p.returncode, out, err))
    line = [l for l in out.splitlines() if l.startswith("RESULT ")][0]
    r = dict(kv.split("=") for kv in line.split()[1:])
    r = {k: float(v) for k, v in r.items()}
    outside_threads = max(s[0] for s in samples) if samples else 0
    print("polls %d, sleeps %d, loop %.1f s (whole process %.1f s)" % (r["polls"], r["sleeps"], r["elapsed"], wall))
    print("threads: start %d, peak %d, end %d (peak sampled from outside: %d)"
          % (r["threads_start"], r["threads_peak"], r["threads_end"], outside_threads))
    growth = (r["rss_end_kb"] - r["rss_start_kb"]) / 1024
    print("RSS: start %.1f MB, peak %.1f MB, end %.1f MB (end - start %+.2f MB; peak - start %+.2f MB)"
          % (r["rss_start_kb"] / 1024, r["rss_peak_kb"] / 1024, r["rss_end_kb"] / 1024, growth,
             (r["rss_peak_kb"] - r["rss_start_kb"]) / 1024))
    ok = max(r["threads_peak"], outside_threads) <= 8 and (r["rss_peak_kb"] - r["rss_start_kb"]) <= 2048
    print("targets (<= 8 threads, RSS within 2 MB): %s" % ("met" if ok else "MISSED"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
