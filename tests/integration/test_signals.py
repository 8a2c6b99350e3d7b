"""Signals, exit codes and cleanup ordering, with the real binary."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from common import BIN, RECIPES, env, run, start, wait_ready

SIGNALS = os.path.join(RECIPES, "signals.lua")
FAILING = os.path.join(RECIPES, "failing.lua")


def marks(path):
    with open(path) as f:
        return f.read().splitlines()


class Signals(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ephrun-sig-")
        self.marker = os.path.join(self.dir, "marker")

    def interrupt(self, mode, sig, expect_code, extra=()):
        p = start([SIGNALS, "marker=" + self.marker, "mode=" + mode, *extra])
        wait_ready(p)
        time.sleep(0.2)
        t0 = time.monotonic()
        p.send_signal(sig)
        out, err = p.communicate(timeout=30)
        elapsed = time.monotonic() - t0
        self.assertEqual(p.returncode, expect_code, err)
        return marks(self.marker), err, elapsed

    def test_sigint_during_sleep_runs_cleanups_lifo_and_exits_130(self):
        m, err, elapsed = self.interrupt("sleep", signal.SIGINT, 130)
        self.assertEqual(m, ["scope closed", "inner cleanup", "outer cleanup"])
        self.assertLess(elapsed, 5)
        self.assertIn("SIGINT", err)
        self.assertIn("phase 'run'", err)

    def test_sigterm_exits_143(self):
        m, _, _ = self.interrupt("sleep", signal.SIGTERM, 143)
        self.assertEqual(m, ["scope closed", "inner cleanup", "outer cleanup"])

    def test_sighup_exits_129(self):
        m, _, _ = self.interrupt("sleep", signal.SIGHUP, 129)
        self.assertIn("outer cleanup", m)

    def test_sigint_reaches_a_task_and_its_cleanup(self):
        m, _, elapsed = self.interrupt("task", signal.SIGINT, 130)
        self.assertEqual(m[0], "task closed")
        self.assertEqual(m[1:], ["scope closed", "inner cleanup", "outer cleanup"])
        self.assertLess(elapsed, 5)

    def test_sigint_stops_a_busy_lua_loop(self):
        m, _, elapsed = self.interrupt("busy", signal.SIGINT, 130)
        self.assertEqual(m, ["scope closed", "inner cleanup", "outer cleanup"])
        self.assertLess(elapsed, 5)

    def test_sigint_interrupts_a_process_wait_and_children_are_stopped(self):
        m, _, elapsed = self.interrupt("proc", signal.SIGINT, 130)
        self.assertLess(elapsed, 5)
        self.assertEqual(m[1:], ["scope closed", "inner cleanup", "outer cleanup"])
        self.assertTrue(m[0].startswith("child "))
        # Patterns unique to this recipe: other tests run in parallel.
        for _ in range(50):
            out = subprocess.run(["pgrep", "-f", "sleep (61[.]5|60[.]25)"], capture_output=True,
                                 text=True).stdout
            if not out:
                break
            time.sleep(0.1)
        self.assertEqual(out, "", "a child outlived ephrun")

    def test_sigint_interrupts_an_http_transfer(self):
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = "http://127.0.0.1:%d/slow" % server.getsockname()[1]
        try:  # accepts and never answers
            m, _, elapsed = self.interrupt("http", signal.SIGINT, 130, extra=("url=" + url,))
        finally:
            server.close()
        self.assertLess(elapsed, 5)
        self.assertEqual(m, ["scope closed", "inner cleanup", "outer cleanup"])

    def test_second_sigint_says_what_is_still_being_cleaned(self):
        p = start([SIGNALS, "marker=" + self.marker, "mode=slow-cleanup"])
        wait_ready(p)
        p.send_signal(signal.SIGINT)
        time.sleep(0.7)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 130, err)
        self.assertIn("still cleaning up", err)
        self.assertIn("slow marker cleanup", err)
        self.assertIn("write outer marker", err)
        # The second Ctrl-C does not abandon the cleanup.
        self.assertEqual(marks(self.marker), ["scope closed", "inner cleanup", "outer cleanup"])


class ClosedOutput(unittest.TestCase):
    """A closed output pipe (`| head`, a pager quit early) stops the run like a signal: every
    cleanup runs and ephrun exits 141 (128 + SIGPIPE) instead of dying of the signal."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ephrun-pipe-")
        self.marker = os.path.join(self.dir, "marker")

    def test_closed_stdout_runs_the_cleanups_and_exits_141(self):
        p = start([SIGNALS, "marker=" + self.marker, "mode=print"])
        wait_ready(p)
        p.stdout.close()
        err = p.stderr.read()
        p.wait(timeout=30)
        self.assertEqual(p.returncode, 141, err)
        self.assertEqual(marks(self.marker), ["scope closed", "inner cleanup", "outer cleanup"])
        self.assertIn("SIGPIPE", err)
        self.assertIn("phase 'run'", err)

    def test_a_reader_gone_while_the_run_is_silent_stops_it(self):
        """A pager quit during a quiet step: no write has to fail for the run to stop."""
        p = start([SIGNALS, "marker=" + self.marker, "mode=sleep"])  # READY, then sleeps 60 s
        wait_ready(p)
        p.stdout.close()
        err = p.stderr.read()
        p.wait(timeout=30)
        self.assertEqual(p.returncode, 141, err)
        self.assertEqual(marks(self.marker), ["scope closed", "inner cleanup", "outer cleanup"])

    def test_closed_stderr_log_writes_do_not_kill_the_cleanup(self):
        p = start([SIGNALS, "marker=" + self.marker, "mode=log"])
        wait_ready(p)
        p.stderr.close()
        p.wait(timeout=30)
        p.stdout.close()
        self.assertEqual(p.returncode, 141)
        self.assertEqual(marks(self.marker), ["scope closed", "inner cleanup", "outer cleanup"])

    def test_pipe_closed_mid_build_destroys_the_instance(self):
        """The issue's `ephrun deploy-fast ... 2>&1 | head -3`, on the local provider."""
        if not os.path.exists("/usr/sbin/sshd"):
            self.skipTest("no /usr/sbin/sshd for the local provider")
        src = os.path.join(self.dir, "src")
        os.makedirs(src)
        with open(os.path.join(src, "f.txt"), "w") as f:
            f.write("x\n")
        home = os.path.join(self.dir, "home")
        e = env(EPHRUN_HOME=home)
        p = subprocess.Popen([BIN, "deploy-fast", "src=" + src, "out=" + os.path.join(self.dir, "out"),
                              "build=for i in $(seq 2000); do echo line $i; done; sleep 60"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e, cwd=self.dir)
        seen = []
        for line in p.stdout:  # as `head` does: read into the build's output, then quit
            seen.append(line)
            if "line 3" in line:
                break
        p.stdout.close()
        p.wait(timeout=60)
        self.assertEqual(p.returncode, 141, "".join(seen))
        r = subprocess.run([BIN, "ls", "all=true", "--json"], capture_output=True, text=True, env=e)
        [res] = json.loads(r.stdout)["resources"]
        self.assertEqual(res["status"], "destroyed")
        self.assertFalse(os.listdir(os.path.join(home, "local")), "the instance's directory is left")
        r = subprocess.run([BIN, "history", "--json"], capture_output=True, text=True, env=e)
        [run] = json.loads(r.stdout)["runs"]
        self.assertEqual(run["status"], "interrupted")
        self.assertIn("SIGPIPE in phase 'build'", run["detail"])


class OsExit(unittest.TestCase):
    """os.exit(n) in a recipe unwinds, runs every cleanup, then exits n."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ephrun-exit-")
        self.marker = os.path.join(self.dir, "marker")

    def test_os_exit_runs_the_cleanups_and_exits_its_code(self):
        r = run([SIGNALS, "marker=" + self.marker, "mode=exit"])
        self.assertEqual(r.returncode, 7, r.stderr)
        self.assertEqual(marks(self.marker), ["scope closed", "inner cleanup", "outer cleanup"])
        self.assertIn("os.exit(7) in phase 'run'", r.stderr)

    def test_a_pcall_does_not_swallow_os_exit(self):
        r = run([SIGNALS, "marker=" + self.marker, "mode=exit-pcall"])
        self.assertEqual(r.returncode, 5, r.stderr)
        self.assertEqual(marks(self.marker), ["scope closed", "inner cleanup", "outer cleanup"])

    def test_os_exit_in_a_task_stops_the_whole_run(self):
        r = run([SIGNALS, "marker=" + self.marker, "mode=exit-task"], timeout=30)
        self.assertEqual(r.returncode, 6, r.stderr)
        self.assertEqual(marks(self.marker), ["scope closed", "inner cleanup", "outer cleanup"])


class Failures(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ephrun-fail-")
        self.marker = os.path.join(self.dir, "marker")

    def test_error_names_file_line_and_phase_and_cleanups_run(self):
        r = run([FAILING, "marker=" + self.marker])
        self.assertEqual(r.returncode, 1)
        self.assertIn("failing.lua:18: the build broke", r.stderr)
        self.assertIn("phase 'build'", r.stderr)
        self.assertNotIn("stack traceback", r.stderr)
        self.assertEqual(marks(self.marker), ["second cleanup", "first cleanup"])

    def test_verbose_adds_the_traceback(self):
        r = run(["-v", FAILING, "marker=" + self.marker])
        self.assertEqual(r.returncode, 1)
        self.assertIn("stack traceback", r.stderr)
        self.assertIn("in local 'inner'", r.stderr)

    def test_failing_cleanup_is_reported_and_the_others_still_run(self):
        r = run([FAILING, "marker=" + self.marker, "fail_cleanup=true"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("cleanup 'remove the thing' failed", r.stderr)
        self.assertIn("cannot remove the thing", r.stderr)
        self.assertIn("thing-cli remove THING-1", r.stderr)
        self.assertEqual(marks(self.marker), ["first cleanup"])

    def test_usage_errors_exit_2(self):
        r = run([FAILING, "marker=x", "bogus=1"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("unknown parameter 'bogus'", r.stderr)
        r = run([FAILING])
        self.assertEqual(r.returncode, 2)
        self.assertIn("missing required parameter 'marker'", r.stderr)
        r = run(["no-such-recipe"])
        self.assertEqual(r.returncode, 2)
        self.assertIn("no recipe 'no-such-recipe'", r.stderr)
        r = run(["--frobnicate", FAILING])
        self.assertEqual(r.returncode, 2)

    def test_recipe_help_lists_params(self):
        r = run([SIGNALS, "--help"])
        self.assertEqual(r.returncode, 0)
        self.assertIn("marker", r.stdout)
        self.assertIn("required", r.stdout)
        self.assertIn("(sleep | task | busy", r.stdout)

    def test_version(self):
        r = run(["--version"])
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^ephrun \d+\.\d+\.\d+")


if __name__ == "__main__":
    unittest.main(verbosity=2)
