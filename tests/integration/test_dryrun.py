"""--dry-run: a readable plan, JSON, redaction, and proof that nothing happens:
no request but GET/HEAD reaches a recording server and no program is executed.
The plan session has every method of a real session (checked against a real sshd)
and each of them records a step under --dry-run without connecting."""
import http.server
import json
import os
import re
import subprocess
import tempfile
import threading
import unittest

from common import BIN, RECIPES, SRC, env, run
from sshd import Sshd

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
        self.assertEqual(kinds, ["keys", "launch", "ssh", "sync", "run", "run", "fetch", "destroy", "report"])
        self.assertIn("lifetime 45m 00s", r.stdout)
        self.assertIn("node_modules", r.stdout)
        self.assertIn("cd app && make", r.stdout)
        self.assertIn("Total worst-case cost", r.stdout)

    def test_an_unknown_price_reads_as_unknown_never_as_zero(self):
        recipe = os.path.join(RECIPES, "unknown_cost.lua")
        r = run(["--dry-run", recipe])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Total worst-case cost: unknown (no price for: 1. a machine nobody could price)\n", r.stdout)
        self.assertNotIn("$0.00", r.stdout)
        r = run(["--dry-run", recipe, "known=2.5"])
        self.assertIn("Total worst-case cost: at least $2.50; unknown: 2. a machine nobody could price\n", r.stdout)
        r = run(["--dry-run", "--json", recipe, "known=2.5"])
        plan = json.loads(r.stdout)
        self.assertIsNone(plan["total_cost"])
        self.assertEqual(plan["cost_at_least"], 2.5)
        self.assertEqual(plan["unknown"], ["2. a machine nobody could price"])

    def test_recipes_providers_and_sessions_never_ask_whether_it_is_a_dry_run(self):
        """The effect gate is the one place a dry-run is decided; a branch on dry_run() elsewhere is how a
        dry-run starts telling something other than the truth."""
        files = [os.path.join(d, f) for d in ("recipes", "providers") for f in os.listdir(os.path.join(SRC, d))
                 if f.endswith(".lua")]
        files += [os.path.join("stdlib", "ephrun", f) for f in ("ssh.lua", "cloud.lua")]
        found = []
        for rel in files:
            with open(os.path.join(SRC, rel)) as f:
                for n, line in enumerate(f, 1):
                    if re.search(r"\bdry_run\s*\(", line.split("--", 1)[0]):
                        found.append("%s:%d: %s" % (rel, n, line.strip()))
        self.assertGreater(len(files), 6)
        self.assertEqual(found, [])


class PlanSession(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ephrun-plan-session-")
        cls.key = os.path.join(cls.tmp, "id_ed25519")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", cls.key], check=True)
        cls.sshd = Sshd().__enter__()
        with open(cls.key + ".pub") as f:
            cls.sshd.authorize(f.read())

    @classmethod
    def tearDownClass(cls):
        cls.sshd.__exit__(None, None, None)

    def recipe(self, *flags):
        out = os.path.join(self.tmp, "out")
        return subprocess.run([BIN, *flags, os.path.join(RECIPES, "plan_session.lua"), "port=%d" % self.sshd.port,
                               "user=" + self.sshd.user, "key_file=" + self.key,
                               "host_key=" + self.sshd.host_key_pub, "src=" + os.path.join(SRC, "examples", "hello"),
                               "out=" + out], capture_output=True, text=True, timeout=60, env=env())

    def test_every_method_of_a_real_session_exists_on_the_plan_session(self):
        r = self.recipe()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"real session: \d+ methods; missing on the plan session: none\n")

    def test_each_method_records_a_step_under_dry_run_and_connects_to_nothing(self):
        before = self.sshd.log().count("Connection from")
        r = self.recipe("--dry-run")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        called = [l.split()[1] for l in r.stdout.splitlines() if l.startswith("called ")]
        self.assertIn("put_string", called)
        self.assertIn("close", called)
        self.assertGreaterEqual(len(called), 19, r.stdout)
        out = re.sub(r" +", " ", r.stdout)
        self.assertIn("called run -> {", out)
        self.assertRegex(out, r'called run -> .*"code":0')
        self.assertRegex(out, r'called sync -> .*"files_total":2')
        self.assertIn("called stat -> false", out)
        for step in ("ssh connect to %s@127.0.0.1:%d (pinned host key)" % (self.sshd.user, self.sshd.port),
                     "run echo planned @ 127.0.0.1", "run sleep 600", "write remote/put.txt (12 B, mode 600)",
                     "read remote/get.txt", "mkdir mkdir -p remote/dir (mode 700)", "remove remote/gone",
                     "upload %s/examples/hello/Makefile → up/Makefile" % SRC, "download remote/file",
                     "sync %s/examples/hello → app" % SRC, "fetch app/dist", "excludes: .env* *.pem id_* .git node_modules",
                     "ssh reconnect to 127.0.0.1"):
            self.assertIn(step, out)
        self.assertEqual(self.sshd.log().count("Connection from"), before, "a dry run connected")
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "out")))


if __name__ == "__main__":
    unittest.main(verbosity=2)
