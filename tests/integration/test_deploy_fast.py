"""deploy-fast for real on the local provider: examples/hello is synced, built with make,
fetched, and the instance destroyed, with a summary; keep=true keeps it; a failing build
or a Ctrl-C still destroys it; --dry-run starts nothing. The default src is the current
directory, and a missing src fails before anything is launched, in a dry-run too. No sshd
is left behind."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from common import BIN, SRC, env


def our_processes(home):
    r = subprocess.run(["pgrep", "-f", home], capture_output=True, text=True)
    return r.stdout.split()


class DeployFast(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-deploy-test-")
        self.home = os.path.join(self.tmp, "home")
        self.src = os.path.join(self.tmp, "hello")
        shutil.copytree(os.path.join(SRC, "examples", "hello"), self.src)
        os.makedirs(os.path.join(self.src, "node_modules", "left-pad"))
        with open(os.path.join(self.src, "node_modules", "left-pad", "index.js"), "w") as f:
            f.write("module.exports = 1\n")
        with open(os.path.join(self.src, ".env"), "w") as f:
            f.write("TOKEN=never-leaves\n")
        self.out = os.path.join(self.tmp, "out")
        self.env = env(EPHRUN_HOME=self.home)

    def tearDown(self):
        ldir = os.path.join(self.home, "local")
        for d in os.listdir(ldir) if os.path.isdir(ldir) else []:
            script = os.path.join(ldir, d, "destroy.sh")
            if os.path.exists(script):
                subprocess.run(["sh", script], capture_output=True)
        left = our_processes(self.home)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.assertEqual(left, [], "processes left behind")

    def deploy(self, *args, timeout=120):
        return subprocess.run([BIN, "deploy-fast", "src=" + self.src, "out=" + self.out, *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env, cwd=self.tmp)

    def instances(self):
        ldir = os.path.join(self.home, "local")
        return sorted(os.listdir(ldir)) if os.path.isdir(ldir) else []

    def test_end_to_end_produces_the_artifact_and_a_summary(self):
        r = self.deploy()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        hello = os.path.join(self.out, "dist", "hello")
        self.assertTrue(os.access(hello, os.X_OK))
        self.assertEqual(subprocess.run([hello], capture_output=True, text=True).stdout,
                         "hello from an ephrun build\n")
        with open(os.path.join(self.out, "dist", "hello.sha256")) as f:
            self.assertIn("dist/hello", f.read())
        out = r.stdout
        self.assertIn("deploy-fast summary", out)
        for phase in ("launch", "ssh", "sync", "build", "fetch", "destroy", "total"):
            self.assertRegex(out, r"(?m)^\s+%s\s+\d+\.\d\ds$" % phase)
        self.assertRegex(out, r"synced:\s+2 of 2 files sent")   # Makefile, hello.c: not .env, not node_modules
        self.assertIn("cost:      $0.0000", out)
        self.assertRegex(out, r"destroyed: local instance loc-\w+; nothing left running")
        self.assertEqual(self.instances(), [])
        self.assertEqual(os.listdir(os.path.join(self.home, "runs")), [])
        self.assertNotIn("never-leaves", out + r.stderr)

    def test_keep_true_keeps_the_instance(self):
        r = self.deploy("keep=true")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("keep=true", r.stderr)
        self.assertIn("KEPT:", r.stdout)
        ids = self.instances()
        self.assertEqual(len(ids), 1, r.stdout)
        d = os.path.join(self.home, "local", ids[0])
        with open(os.path.join(d, "meta.json")) as f:
            meta = json.load(f)
        self.assertNotEqual(our_processes(self.home), [], "the kept instance's sshd should still run")
        # The run's key stays too, so the kept instance can be reached by hand.
        run_dirs = os.listdir(os.path.join(self.home, "runs"))
        self.assertEqual(len(run_dirs), 1)
        key = os.path.join(self.home, "runs", run_dirs[0], "id_ed25519")
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)
        who = subprocess.run(["ssh", "-i", key, "-p", str(meta["port"]), "-o", "StrictHostKeyChecking=no",
                              "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                              meta["user"] + "@127.0.0.1", "ls app/dist"], capture_output=True, text=True,
                             timeout=30)
        self.assertIn("hello", who.stdout, who.stderr)
        subprocess.run(["sh", os.path.join(d, "destroy.sh")], check=True)
        self.assertEqual(self.instances(), [])
        self.assertEqual(our_processes(self.home), [])

    def test_failing_build_still_destroys_and_names_the_phase(self):
        r = self.deploy("build=echo broken >&2; exit 3")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("build", r.stderr)
        self.assertIn("exited with code 3", r.stderr)
        self.assertEqual(self.instances(), [])

    def test_sigint_during_build_destroys(self):
        p = subprocess.Popen([BIN, "deploy-fast", "src=" + self.src, "out=" + self.out,
                              "build=echo BUILDING; sleep 60"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=self.env, cwd=self.tmp)
        seen = []
        deadline = time.time() + 30
        while time.time() < deadline:
            line = p.stdout.readline()
            seen.append(line)
            if "BUILDING" in line or not line:
                break
        self.assertIn("BUILDING", "".join(seen))
        p.send_signal(signal.SIGINT)
        rest, _ = p.communicate(timeout=30)
        self.assertEqual(p.returncode, 130, "".join(seen) + rest)
        self.assertEqual(self.instances(), [])

    def launched(self):
        r = subprocess.run([BIN, "ls", "all=true", "--json"], capture_output=True, text=True, timeout=60,
                           env=self.env)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)["resources"]

    def test_default_src_is_the_current_directory(self):
        r = subprocess.run([BIN, "deploy-fast", "out=" + self.out], capture_output=True, text=True, timeout=120,
                           env=self.env, cwd=self.src)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"synced:\s+2 of 2 files sent")
        self.assertTrue(os.access(os.path.join(self.out, "dist", "hello"), os.X_OK))

    def test_missing_src_fails_before_launch_naming_the_param(self):
        missing = os.path.join(self.tmp, "no-such-src")
        for flags in ((), ("--dry-run",)):
            with self.subTest(flags=flags):
                r = subprocess.run([BIN, *flags, "deploy-fast", "src=" + missing, "out=" + self.out],
                                   capture_output=True, text=True, timeout=120, env=self.env, cwd=self.tmp)
                self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                self.assertIn("error in phase 'check': src=%s: no such directory" % missing, r.stderr)
                self.assertIn("pass src=DIR", r.stderr)
                self.assertNotIn("launch", r.stdout)
                self.assertNotIn("Traceback", r.stderr)
        self.assertEqual(self.launched(), [])
        self.assertEqual(self.instances(), [])

    def test_dry_run_starts_nothing(self):
        r = self.deploy("--dry-run")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Plan for deploy-fast", r.stdout)
        self.assertFalse(os.path.exists(self.home) and os.listdir(self.home), os.listdir(self.home)
                         if os.path.exists(self.home) else "")
        self.assertFalse(os.path.exists(self.out))
        self.assertEqual(our_processes(self.home), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
