"""--dry-run: a readable plan, JSON, redaction, and proof that nothing happens:
no request but GET/HEAD reaches a recording server and no program is executed."""
import http.server
import json
import os
import subprocess
import tempfile
import threading
import unittest

from common import BIN, RECIPES, SRC, env, run

SECRET = "tok-9f8e7d6c5b4a"


class Recorder(http.server.BaseHTTPRequestHandler):
    log = []

    def _answer(self):
        Recorder.log.append((self.command, self.path))
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = b'{"price": 0.5}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, *a):
        pass


class DryRun(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        cls.url = "http://127.0.0.1:%d" % cls.server.server_address[1]
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()

    def setUp(self):
        Recorder.log.clear()
        self.dir = tempfile.mkdtemp(prefix="ephrun-dry-")
        self.marker = os.path.join(self.dir, "m")

    def effects(self, *extra, wrapper=()):
        args = list(wrapper) + [BIN, "--dry-run", *extra, os.path.join(RECIPES, "effects.lua"),
                                "url=" + self.url, "marker=" + self.marker]
        return subprocess.run(args, capture_output=True, text=True, timeout=60,
                              env=env(EFFECTS_TOKEN=SECRET))

    def test_only_get_and_head_are_sent_and_nothing_is_written(self):
        r = self.effects()
        self.assertEqual(r.returncode, 0, r.stderr)
        methods = sorted({m for m, _ in Recorder.log})
        self.assertEqual(methods, ["GET", "HEAD"], Recorder.log)
        self.assertEqual(os.listdir(self.dir), [])

    def test_no_program_is_executed(self):
        trace = os.path.join(self.dir, "trace")
        r = self.effects(wrapper=("strace", "-f", "-qq", "-e", "trace=execve,execveat", "-o", trace))
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(trace) as f:
            execs = [l for l in f if "execve" in l]
        os.remove(trace)
        self.assertEqual(len(execs), 1, "".join(execs))  # ephrun itself, nothing else
        self.assertEqual(os.listdir(self.dir), [])

    def test_plan_is_numbered_with_totals_and_redacted(self):
        r = self.effects()
        out = r.stdout
        self.assertIn("Plan for effects", out)
        self.assertIn("POST", out)
        self.assertIn("touch", out)
        self.assertIn("Total worst-case cost: $1.25", out)
        self.assertRegex(out, r"(?m)^\s+1\. ")
        self.assertNotIn(SECRET, out + r.stderr)
        self.assertIn("<secret:EFFECTS_TOKEN>", out)

    def test_json_plan(self):
        r = self.effects("--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        plan = json.loads(r.stdout)
        self.assertEqual(plan["recipe"], "effects")
        self.assertTrue(plan["dry_run"])
        kinds = [s["kind"] for s in plan["steps"]]
        self.assertIn("launch", kinds)
        self.assertIn("spawn", kinds)
        self.assertEqual(plan["total_cost"], 1.25)
        self.assertEqual([s["n"] for s in plan["steps"]], list(range(1, len(kinds) + 1)))
        self.assertNotIn(SECRET, r.stdout)

    def test_deploy_fast_prints_its_full_plan(self):
        r = run(["--dry-run", "deploy-fast", "src=" + os.path.join(SRC, "examples", "hello"),
                 "deploy=./deploy.sh", "ttl=45m"])
        self.assertEqual(r.returncode, 0, r.stderr)
        kinds = [line.split()[1] for line in r.stdout.splitlines() if line[:4].strip().rstrip(".").isdigit()]
        self.assertEqual(kinds, ["keys", "launch", "ssh", "sync", "run", "run", "fetch", "destroy"])
        self.assertIn("lifetime 45m 00s", r.stdout)
        self.assertIn("node_modules", r.stdout)
        self.assertIn("cd app && make", r.stdout)
        self.assertIn("Total worst-case cost", r.stdout)


if __name__ == "__main__":
    unittest.main(verbosity=2)
