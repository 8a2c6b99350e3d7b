"""Cost before money is spent: a paid launch is confirmed on a terminal (a real pty) or by
--yes, refused without either, refused above --max-cost / the recipe's budget / the config's
max_cost (also in --dry-run), and an unknown worst case is above any limit. Against the AWS
stand-in (a timer that ends billing, so a known worst case) and the Vultr stand-in (a timer
that only stops the CPU: unknown without a reaper)."""
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from common import BIN, RECIPES, env
from aws import AwsStandin
from vultr import VultrStandin

RECIPE = os.path.join(RECIPES, "cost_launch.lua")


class PtyRun:
    """ephrun on a real pseudo-terminal as its controlling terminal (stdin, stdout, stderr)."""

    def __init__(self, args, e):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execve(BIN, [BIN] + args, e)
        self.out = b""

    def expect(self, pattern, timeout=60):
        deadline = time.monotonic() + timeout
        while not re.search(pattern.encode(), self.out):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no %r on the terminal; it shows:\n%s" % (pattern, self.text()))
            r, _, _ = select.select([self.fd], [], [], left)
            if r:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise AssertionError("the terminal closed before %r:\n%s" % (pattern, self.text()))
                self.out += chunk

    def send(self, data):
        os.write(self.fd, data)

    def wait(self, timeout=120):
        deadline = time.monotonic() + timeout
        while True:
            r, _, _ = select.select([self.fd], [], [], 0.5)
            if r:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:
                    chunk = b""
                self.out += chunk
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                raise AssertionError("ephrun did not exit:\n" + self.text())

    def text(self):
        return self.out.decode(errors="replace")

    def close(self):
        os.close(self.fd)


class CostOnAws(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = AwsStandin(pending_seconds=0.2, stopping_seconds=0.2, shutting_down_seconds=0.2).__enter__()
        cls.image = cls.a.image_id()

    @classmethod
    def tearDownClass(cls):
        cls.a.__exit__(None, None, None)

    def setUp(self):
        self.home = tempfile.mkdtemp(prefix="ephrun-cost-")
        self.xdg = tempfile.mkdtemp(prefix="ephrun-cost-xdg-")
        self.env = env(EPHRUN_HOME=self.home, XDG_CONFIG_HOME=self.xdg, EPHRUN_AWS_POLL="0.2",
                       EPHRUN_AWS_IMAGE=self.image, **self.a.env())
        for k in ("EPHRUN_MAX_COST", "EPHRUN_WARN_COST", "COST_TEST_BUDGET"):
            self.env.pop(k, None)
        self.runs_before = len(self.a.calls("RunInstances"))

    def tearDown(self):
        self.assertEqual(self.a.leftovers()["instances"], [])
        shutil.rmtree(self.home, ignore_errors=True)
        shutil.rmtree(self.xdg, ignore_errors=True)

    def ephrun(self, *args, timeout=180, **extra):
        e = dict(self.env)
        e.update(extra)
        return subprocess.run([BIN, RECIPE] + list(args), capture_output=True, text=True, env=e,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def created(self):
        return len(self.a.calls("RunInstances")) - self.runs_before

    def assertNothingMade(self):
        self.assertEqual(self.created(), 0)
        # not even this run's keys
        self.assertFalse(os.path.exists(os.path.join(self.home, "runs")) and os.listdir(os.path.join(self.home, "runs")))

    def write_config(self, text):
        os.makedirs(os.path.join(self.xdg, "ephrun"), exist_ok=True)
        path = os.path.join(self.xdg, "ephrun", "config")
        with open(path, "w") as f:
            f.write(text)
        return path

    def worst(self, *args):
        """The plan's exact worst case (the text plan rounds to cents)."""
        r = self.ephrun("--dry-run", "--json", *args)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout[r.stdout.index("{"):])["total_cost"]  # after the recipe's own prints

    # -- item 1: confirmation
    def test_without_terminal_or_yes_refuses_before_anything_is_made(self):
        r = self.ephrun()
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("no terminal to confirm on", r.stderr)
        self.assertIn("--yes", r.stderr)
        self.assertIn("--max-cost", r.stderr)
        self.assertRegex(r.stderr, r"worst case \$\d+\.\d\d")
        self.assertNotIn("Traceback", r.stderr)
        self.assertNothingMade()

    def test_yes_answers_it(self):
        r = self.ephrun("--yes")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("LAUNCHED i-", r.stdout)
        self.assertEqual(self.created(), 1)

    def test_terminal_prompt_shows_the_whole_runs_worst_case_and_yes_launches(self):
        one = self.worst()
        two = self.worst("count=2")
        self.assertAlmostEqual(two, 2 * one, places=9)
        t = PtyRun([RECIPE, "count=2"], self.env)
        try:
            t.expect(r"worst case \$[\d.]+.*This run's worst case so far: \$[\d.]+ \(1 paid launch\)\. Proceed\? \[y/N\]")
            self.assertIn("so far: $%.2f (1 paid launch)" % one, t.text())
            t.send(b"y\n")
            t.expect(r"LAUNCHED i-")
            t.expect(r"so far: \$[\d.]+ \(2 paid launches\)\. Proceed\? \[y/N\]")
            self.assertIn("so far: $%.2f (2 paid launches)" % two, t.text())
            t.send(b"y\n")
            self.assertEqual(t.wait(), 0, t.text())
        finally:
            t.close()
        self.assertEqual(len(re.findall(r"LAUNCHED i-", t.text())), 2)
        self.assertEqual(self.created(), 2)

    def test_terminal_no_declines_and_nothing_is_made(self):
        t = PtyRun([RECIPE], self.env)
        try:
            t.expect(r"Proceed\? \[y/N\]")
            t.send(b"n\n")
            self.assertEqual(t.wait(), 1, t.text())
        finally:
            t.close()
        self.assertIn("declined at the prompt; nothing was created", t.text())
        self.assertNothingMade()

    def test_ctrl_c_at_the_prompt_exits_cleanly_and_nothing_is_made(self):
        t = PtyRun([RECIPE], self.env)
        try:
            t.expect(r"Proceed\? \[y/N\]")
            t.send(b"\x03")  # the terminal turns it into SIGINT for ephrun's process group
            self.assertEqual(t.wait(timeout=30), 130, t.text())
        finally:
            t.close()
        self.assertNotIn("Traceback", t.text())
        self.assertNothingMade()

    def test_local_launch_never_asks(self):
        r = self.ephrun("provider=local", "plan=local-1c-256m", "ttl=5m", "--max-cost", "0")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("LAUNCHED", r.stdout)

    # -- item 2: limits
    def test_max_cost_refuses_above_it_in_a_real_run_and_in_a_dry_run(self):
        worst = self.worst("plan=c5n.metal", "ttl=3h")
        limit = "%.2f" % (worst / 2)
        for extra in ([], ["--dry-run"]):
            r = self.ephrun("plan=c5n.metal", "ttl=3h", "--yes", "--max-cost", limit, *extra)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("would be $%.2f, above the limit $%s (--max-cost)" % (worst, limit), r.stderr)
            self.assertIn("nothing was created", r.stderr)
        self.assertNothingMade()

    def test_spot_is_bounded_by_its_max_price(self):
        # c7i.8xlarge has no on-demand price in eu-west-1's table: only MaxPrice bounds it
        spot = dict(EPHRUN_AWS_SPOT="true", EPHRUN_AWS_MAX_PRICE="0.05")
        r = self.ephrun("--dry-run", "--json", "plan=c7i.8xlarge", "ttl=2h", **spot)
        self.assertEqual(r.returncode, 0, r.stderr)
        worst = json.loads(r.stdout[r.stdout.index("{"):])["total_cost"]
        self.assertGreater(worst, 0.10)   # 2 h × $0.05 plus the gp3 volume
        self.assertLess(worst, 0.11)
        r = self.ephrun("plan=c7i.8xlarge", "ttl=2h", "--max-cost", "0.10", **spot)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        # cents would show both as $0.10: the figures say which is more
        self.assertIn("would be $%.4f, above the limit $0.1000 (--max-cost)" % worst, r.stderr)
        r = self.ephrun("plan=c7i.8xlarge", "ttl=2h", "--max-cost", "0.10")
        self.assertIn("aws has no price for c7i.8xlarge", r.stderr)   # on demand there: unknown
        self.assertNothingMade()

    def test_within_max_cost_needs_no_yes(self):
        r = self.ephrun("--max-cost", "%.2f" % (self.worst() + 1))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.created(), 1)

    def test_the_run_is_summed_so_the_launch_that_crosses_the_limit_is_refused(self):
        one = self.worst()
        r = self.ephrun("count=3", "--max-cost", "%.4f" % (one * 2.5))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertEqual(len(re.findall(r"LAUNCHED i-", r.stdout)), 2)
        self.assertIn("(this launch $%.2f + $%.2f before it)" % (one, 2 * one), r.stderr)
        self.assertEqual(self.created(), 2)  # and the cleanup destroyed both (tearDown checks)

    def test_the_lower_of_budget_and_max_cost_wins(self):
        worst = self.worst("plan=c5n.metal")
        r = self.ephrun("plan=c5n.metal", "--dry-run", "--max-cost", "%.2f" % (worst + 5), COST_TEST_BUDGET="2")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("above the limit $2.00 (budget = 2 in recipe cost-launch", r.stderr)
        r = self.ephrun("plan=c5n.metal", "--dry-run", "--max-cost", "2", COST_TEST_BUDGET="%.2f" % (worst + 5))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("above the limit $2.00 (--max-cost)", r.stderr)
        # a budget alone limits but does not answer the question
        r = self.ephrun(COST_TEST_BUDGET="%.2f" % (worst + 5))
        self.assertIn("no terminal to confirm on", r.stderr)
        self.assertNothingMade()

    def test_ttl_false_is_unknown_so_above_any_limit(self):
        for extra in ([], ["--dry-run"]):
            r = self.ephrun("no_ttl=true", "--max-cost", "100", *extra)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("the worst case of this run is unknown, so it is above any limit ($100.00 from --max-cost): "
                          "ttl=false: no lifetime bounds how long it bills. Give it a lifetime (ttl=2h)", r.stderr)
        self.assertNothingMade()

    def test_bad_max_cost_is_a_usage_error(self):
        r = self.ephrun("--max-cost", "ten")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--max-cost expects an amount of USD such as 5 or 12.50, not 'ten'", r.stderr)

    # -- item 3: the config file
    def test_config_max_cost_refuses_and_the_flag_overrides_it(self):
        worst = self.worst("plan=c5n.metal")
        path = self.write_config("# mine\nwarn_cost = 1\nmax_cost = 2\n")
        r = self.ephrun("plan=c5n.metal", "--dry-run")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("above the limit $2.00 (max_cost in %s:3)" % path, r.stderr)
        r = self.ephrun("plan=c5n.metal", "--dry-run", EPHRUN_MAX_COST="%.2f" % (worst + 1))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("over the $1.00 limit", r.stderr)
        r = self.ephrun("plan=c5n.metal", "--dry-run", "--max-cost", "%.2f" % (worst + 1), "--warn-cost", "1000")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("cost warning", r.stderr)

    def test_bad_config_names_file_and_line(self):
        path = self.write_config("max_cost = 5\n\nwarn_cost = lots\n")
        r = self.ephrun("--dry-run")
        self.assertEqual(r.returncode, 1)
        self.assertIn("%s:3: warn_cost expects an amount of USD" % path, r.stderr)
        path = self.write_config("notify = https://hooks.example/T000/B000/XXXX\n")
        r = self.ephrun("--dry-run")
        self.assertEqual(r.returncode, 1)
        self.assertIn("%s:1: notify must name where the webhook is kept, @env:VAR or @file:PATH" % path, r.stderr)
        self.assertNotIn("hooks.example/T000", r.stderr)
        path = self.write_config("max_cots = 5\n")
        r = self.ephrun("--dry-run")
        self.assertIn("%s:1: unknown key 'max_cots'" % path, r.stderr)


class CostOnVultr(unittest.TestCase):
    """Vultr's timer only stops the CPU: without a reaper the worst case is unknown."""

    @classmethod
    def setUpClass(cls):
        cls.v = VultrStandin(lock_seconds=0).__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.v.__exit__(None, None, None)

    def test_unknown_worst_case_is_above_any_limit_and_says_what_to_do(self):
        home = tempfile.mkdtemp(prefix="ephrun-cost-")
        e = env(EPHRUN_HOME=home, XDG_CONFIG_HOME=home, **self.v.env())
        for extra in ([], ["--dry-run"]):
            r = subprocess.run([BIN, RECIPE, "provider=vultr", "plan=vc2-1c-1gb", "--max-cost", "1000"] + extra,
                               capture_output=True, text=True, env=e, timeout=120, stdin=subprocess.DEVNULL)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("worst case of this run is unknown, so it is above any limit ($1000.00 from --max-cost)",
                          r.stderr)
            self.assertIn("ephrun reaper install", r.stderr)
        self.assertEqual(self.v.leftovers()["instances"], [])
        self.assertFalse([q for q in self.v.state()["log"] if q["method"] == "POST"])
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
