"""Shared helpers for black-box tests of the ephrun binary."""
import os
import subprocess
import sys
import tempfile
import threading
import time

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


class Output:
    """Collects a process's merged output in a thread; wait() for a line containing a token."""

    def __init__(self, stream, timeout=60):
        self.timeout = timeout  # wait()'s default: seconds
        self.lines, self.cond = [], threading.Condition()
        self.closed = False
        self.closing = False
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for line in stream:
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
                if self.closing:  # the reading thread closes its own end: no read is in flight
                    stream.close()
                    break
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait(self, token, timeout=None):
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        with self.cond:
            while True:
                for line in self.lines:
                    if token in line:
                        return line
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    raise AssertionError("never printed %r:\n%s" % (token, self.text()))
                self.cond.wait(left)

    def close(self):
        """Closes the pipe after the next line, as `head` or a pager quitting does."""
        with self.cond:
            self.closing = True

    def text(self):
        with self.cond:
            return "".join(self.lines)
