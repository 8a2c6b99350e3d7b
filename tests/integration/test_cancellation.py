"""Cancellation cannot be swallowed: Ctrl-C inside a pcall, and during the Vultr price lookup,
with the real binary."""
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from common import BIN, RECIPES, env, start, wait_ready

CANCEL_PCALL = os.path.join(RECIPES, "cancel_pcall.lua")
OPS = os.path.join(RECIPES, "vultr_ops.lua")


def marks(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().splitlines()


class CtrlCInsidePcall(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ephrun-cancel-")
        self.marker = os.path.join(self.dir, "marker")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def interrupt(self, mode):
        p = start([CANCEL_PCALL, "marker=" + self.marker, "mode=" + mode])
        wait_ready(p)
        p.send_signal(signal.SIGINT)
        try:
            out, err = p.communicate(timeout=30)
        except Exception:
            p.kill()
            p.communicate()
            raise
        self.assertEqual(p.returncode, 130, err)
        self.assertIn("interrupted by SIGINT", err)
        # Nothing after the pcall ran; the scope and the cleanup did, and their waits worked.
        self.assertEqual(marks(self.marker), ["scope closed", "cleanup ran"], err)

    def test_sigint_inside_pcall_stops_the_run(self):
        self.interrupt("pcall")

    def test_sigint_inside_xpcall_with_a_traceback_handler_stops_the_run(self):
        self.interrupt("xpcall")

    def test_sigint_inside_nested_pcalls_around_a_process_stops_the_run(self):
        self.interrupt("nested")


class CtrlCDuringThePriceLookup(unittest.TestCase):
    def setUp(self):
        from vultr import VultrStandin
        self.tmp = tempfile.mkdtemp(prefix="ephrun-cancel-vultr-")
        self.v = VultrStandin(api_key="vultr-cancel-key-0123456789")
        self.v.__enter__()

    def tearDown(self):
        self.v.__exit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_no_instance_is_made(self):
        # /plans answers only after 30 s: the run is inside vultr.price's pcall when interrupted.
        self.v._control("POST", "/_standin/faults",
                        {"method": "GET", "path": "^/v2/plans", "status": 500, "count": 1, "delay": 30})
        e = env(EPHRUN_HOME=os.path.join(self.tmp, "home"), EPHRUN_VULTR_POLL="0.5", **self.v.env())
        p = subprocess.Popen([BIN, "--yes", OPS, "mode=hang"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=e, cwd=self.tmp)
        try:
            deadline = time.monotonic() + 30
            # The fault is used up once the request arrived and is being held.
            while self.v._control("GET", "/_standin/faults")["faults"]:
                self.assertIsNone(p.poll(), "ephrun ended before asking for /plans")
                self.assertLess(time.monotonic(), deadline, "ephrun never asked for /plans")
                time.sleep(0.02)
            p.send_signal(signal.SIGINT)
            try:
                out, err = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.fail("the run went on after the Ctrl-C: %r" % self.v.state()["log"][-5:])
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        self.assertEqual(p.returncode, 130, err)
        self.assertNotIn("could not read plan prices", err)
        made = [x for x in self.v.state()["log"] if x["method"] != "GET"]
        self.assertEqual(made, [], "the launch went ahead after the Ctrl-C")
        self.assertEqual(self.v.leftovers(), {"instances": [], "ssh_keys": []})


if __name__ == "__main__":
    unittest.main(verbosity=2)
