"""Shared helpers for black-box tests of the ephrun binary."""
import os
import subprocess
import sys
import tempfile
import threading

BIN = os.environ.get("EPHRUN_BIN", os.path.join(os.path.dirname(__file__), "../../build/ephrun"))
SRC = os.environ.get("EPHRUN_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
RECIPES = os.path.join(SRC, "tests", "integration", "recipes")
sys.path.insert(0, os.path.join(SRC, "tests", "support"))


def env(**extra):
    e = dict(os.environ)
    e.setdefault("EPHRUN_HOME", tempfile.mkdtemp(prefix="ephrun-home-"))
    e.update({k: str(v) for k, v in extra.items()})
    return e


def run(args, timeout=60, **kw):
    return subprocess.run([BIN] + args, capture_output=True, text=True, timeout=timeout, env=env(), **kw)


def start(args, **kw):
    return subprocess.Popen([BIN] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(), **kw)


def wait_ready(p, token="READY", timeout=20):
    # readline blocks on a silent process: past the deadline the process is killed, which
    # ends the read, so the deadline holds either way.
    timer = threading.Timer(timeout, p.kill)
    timer.start()
    try:
        while True:
            line = p.stdout.readline()
            if not line:
                break
            if token in line:
                return line.strip()
    finally:
        timer.cancel()
    p.wait()
    raise AssertionError("process never printed %s within %ss; stderr: %s" % (token, timeout, p.stderr.read()))
