"""Notifications (`--notify URL` / `EPHRUN_NOTIFY_URL`) against a real HTTP receiver on
loopback: start and success, failure with the error, a forced termination by `ephrun reap`,
a cost warning at launch, a receiver answering 500 before 200 (retried), and a dead receiver
that must not fail the run. The URL is a secret: it never appears in ephrun's output."""
import json
import os
import signal
import subprocess
import tempfile
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import BIN, env, wait_ready
from vultr import VultrStandin

OK_RECIPE = r'''
local ephrun = require "ephrun"
return ephrun.recipe { name = "notify-ok", run = function()
  ephrun.defer(function() print("CLEANED") end, "marker")
  print("BODY")
end }
'''

FAIL_RECIPE = r'''
local ephrun = require "ephrun"
return ephrun.recipe { name = "notify-fail", run = function()
  ephrun.phase("build")
  error("the build broke")
end }
'''

LAUNCH_RECIPE = r'''
local ephrun = require "ephrun"
return ephrun.recipe { name = "notify-launch", params = { unbounded = { default = false },
  warn_cost = { default = 0, type = "number", min = 0 }, hold = { default = false },
  provider = { default = "local" }, plan = { default = "" }, region = { default = "" } },
  run = function(p)
  local cloud = ephrun.provider(p.provider)
  local box <close> = cloud:launch { ttl = not p.unbounded and "1h", warn_cost = p.warn_cost > 0 and p.warn_cost or nil,
    plan = p.plan ~= "" and p.plan or nil, region = p.region ~= "" and p.region or nil }
  print("READY " .. box.id)
  io.stdout:flush()
  if p.hold then ephrun.time.sleep(600) end
end }
'''


class Receiver:
    """A webhook on 127.0.0.1 that records every JSON body and answers the statuses
    given for its path in turn (the last one repeats; 200 by default)."""

    def __init__(self, statuses=None):
        self.statuses = list(statuses or [200])
        self.bodies = []
        self.cond = threading.Condition()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                with outer.cond:
                    i = len(outer.bodies)
                    outer.bodies.append((self.path, self.headers.get("Content-Type"), raw))
                    outer.cond.notify_all()
                status = outer.statuses[min(i, len(outer.statuses) - 1)]
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.url = "http://127.0.0.1:%d/services/T000/B000/s3cr3tH00kPath" % self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def events(self):
        with self.cond:
            return [json.loads(b)["event"] for _, _, b in self.bodies]

    def messages(self):
        with self.cond:
            return [json.loads(b) for _, _, b in self.bodies]

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


class NotifyTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ephrun-notify-")
        self.home = os.path.join(self.dir, "home")

    def recipe(self, text, name="r.lua"):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def ephrun(self, args, url=None, timeout=90, **extra):
        e = env(EPHRUN_HOME=self.home, **extra)
        e.pop("EPHRUN_NOTIFY_URL", None)
        if url:
            e["EPHRUN_NOTIFY_URL"] = url
        return subprocess.run([BIN] + args, capture_output=True, text=True, timeout=timeout, env=e)

    def assert_secret(self, url, r):
        self.assertNotIn("s3cr3tH00kPath", r.stdout + r.stderr)

    def test_start_and_success_after_cleanup(self):
        rec = Receiver()
        self.addCleanup(rec.close)
        r = self.ephrun([self.recipe(OK_RECIPE), "--notify", rec.url, "-vv"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(rec.events(), ["start", "success"])
        start, done = rec.messages()
        self.assertEqual(rec.bodies[0][1], "application/json")
        for m in (start, done):
            self.assertEqual(m["recipe"], "notify-ok")
            self.assertTrue(m["run_id"])
            self.assertIn("notify-ok", m["text"])
            self.assertIsInstance(m["attachments"][0]["fields"], list)
        self.assertEqual(start["run_id"], done["run_id"])
        self.assertIn("succeeded", done["text"])
        self.assert_secret(rec.url, r)

    def test_failure_carries_the_error(self):
        rec = Receiver()
        self.addCleanup(rec.close)
        r = self.ephrun([self.recipe(FAIL_RECIPE)], url=rec.url)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(rec.events(), ["start", "failure"])
        fail = rec.messages()[1]
        self.assertIn("the build broke", fail["detail"])
        self.assertIn("failed", fail["text"])
        self.assert_secret(rec.url, r)

    def test_interrupted_run_notifies_failure(self):
        rec = Receiver()
        self.addCleanup(rec.close)
        e = env(EPHRUN_HOME=self.home, EPHRUN_NOTIFY_URL=rec.url)
        hold = OK_RECIPE.replace('print("BODY")', 'print("READY") io.stdout:flush() ephrun.time.sleep(600)')
        p = subprocess.Popen([BIN, self.recipe(hold)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
        wait_ready(p, timeout=30)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 130, err)
        self.assertIn("CLEANED", out)
        self.assertEqual(rec.events(), ["start", "failure"])
        self.assertIn("interrupted by SIGINT", rec.messages()[1]["detail"])

    def test_server_error_is_retried(self):
        rec = Receiver(statuses=[500, 200])
        self.addCleanup(rec.close)
        r = self.ephrun([self.recipe(OK_RECIPE)], url=rec.url)
        self.assertEqual(r.returncode, 0, r.stderr)
        # the first start was answered 500 and sent again
        self.assertEqual(rec.events(), ["start", "start", "success"])

    def test_dead_receiver_does_not_fail_the_run(self):
        rec = Receiver()
        url = rec.url
        rec.close()  # nothing listens on that port any more
        r = self.ephrun([self.recipe(OK_RECIPE)], url=url, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("BODY", r.stdout)
        self.assertIn("CLEANED", r.stdout)
        self.assertIn("not delivered", r.stderr)
        self.assert_secret(url, r)

    def test_failing_receiver_does_not_fail_a_failed_run_differently(self):
        rec = Receiver(statuses=[400])
        self.addCleanup(rec.close)
        r = self.ephrun([self.recipe(FAIL_RECIPE)], url=rec.url)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("the build broke", r.stderr)
        self.assertIn("not delivered", r.stderr)

    def test_dry_run_sends_nothing_and_plans_the_posts(self):
        rec = Receiver()
        self.addCleanup(rec.close)
        r = self.ephrun([self.recipe(FAIL_RECIPE.replace("error(", "print(")), "--dry-run", "--json"], url=rec.url)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(rec.events(), [])
        plan = json.loads(r.stdout[r.stdout.index("{"):])
        self.assertEqual([s["kind"] for s in plan["steps"]].count("http"), 2, r.stdout)
        self.assert_secret(rec.url, r)

    def test_cost_warning_at_launch(self):
        rec = Receiver()
        self.addCleanup(rec.close)
        # a paid launch with no TTL: the worst case is unbounded, over any limit
        with VultrStandin(lock_seconds=0) as v:
            r = self.ephrun([self.recipe(LAUNCH_RECIPE), "provider=vultr", "plan=vc2-1c-1gb", "region=ewr", "unbounded=true",
                             "warn_cost=5", "--yes"], url=rec.url, EPHRUN_VULTR_POLL="0.2", **v.env())
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(rec.events(), ["start", "cost_warning", "success"])
        self.assertIn("unbounded", rec.messages()[1]["detail"])
        self.assertIn("cost warning", r.stderr)
        # a free launch costs nothing, even without a TTL: it says nothing
        for args in (["warn_cost=5"], ["warn_cost=5", "unbounded=true"]):
            rec2 = Receiver()
            self.addCleanup(rec2.close)
            r = self.ephrun([self.recipe(LAUNCH_RECIPE), "--yes"] + args, url=rec2.url)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(rec2.events(), ["start", "success"])

    def test_the_config_file_names_the_webhook_by_reference(self):
        rec = Receiver()
        self.addCleanup(rec.close)
        xdg = os.path.join(self.dir, "xdg")
        os.makedirs(os.path.join(xdg, "ephrun"))
        with open(os.path.join(xdg, "ephrun", "config"), "w") as f:
            f.write("notify = @env:TEAM_HOOK   # the URL is a secret: kept in the environment\n")
        r = self.ephrun([self.recipe(OK_RECIPE)], XDG_CONFIG_HOME=xdg, TEAM_HOOK=rec.url)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(rec.events(), ["start", "success"])
        self.assert_secret(rec.url, r)
        r = self.ephrun([self.recipe(OK_RECIPE)], XDG_CONFIG_HOME=xdg)
        self.assertEqual(r.returncode, 1)
        self.assertIn("notify in %s:1: environment variable TEAM_HOOK is not set" % os.path.join(xdg, "ephrun", "config"),
                      r.stderr)

    def test_reap_notifies_forced_termination(self):
        rec = Receiver()
        self.addCleanup(rec.close)
        e = env(EPHRUN_HOME=self.home)
        e.pop("EPHRUN_NOTIFY_URL", None)
        p = subprocess.Popen([BIN, self.recipe(LAUNCH_RECIPE), "hold=true", "--yes"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=e)
        line = wait_ready(p, timeout=60)
        iid = line.split()[1]
        p.send_signal(signal.SIGKILL)  # the launcher dies: its instance is orphaned
        p.communicate(timeout=30)
        r = self.ephrun(["reap", "--yes"], url=rec.url)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(rec.events(), ["terminated"], r.stdout)
        m = rec.messages()[0]
        self.assertEqual(m["id"], iid)
        self.assertEqual(m["recipe"], "notify-launch")
        self.assertIn("ephrun reap", m["detail"])
        self.assert_secret(rec.url, r)


if __name__ == "__main__":
    unittest.main(verbosity=2)
