"""The team lock (`ephrun.lock`) with real `ephrun` processes: the file backend under
EPHRUN_HOME (a second run is refused naming the holder and the lease left; the lock is free
once the first run ends; after a SIGKILL the lease lapses and the next run takes it over;
a live holder renews its lease), `ephrun lock ls` / `ephrun lock break`, the dry-run, and
the S3 backend against the AWS stand-in (moto honours If-None-Match / If-Match)."""
import json
import os
import signal
import subprocess
import tempfile
import time
import unittest

from common import BIN, env, wait_ready

HOLD = r'''
local ephrun = require "ephrun"
return ephrun.recipe { name = "lock-test", params = {
    lease = { default = "30s", type = "duration" }, go = { default = "" },
    backend = { default = "file" }, bucket = { default = "" } },
  run = function(p)
  local l = ephrun.lock("build", { lease = p.lease, backend = p.backend, bucket = p.bucket ~= "" and p.bucket or nil })
  print("READY " .. ephrun.run_id() .. " " .. l.where)
  io.stdout:flush()
  -- holds until the test creates the `go` file
  while p.go ~= "" and not ephrun.fs.exists(p.go) do ephrun.time.sleep(0.05) end
  print("DONE")
end }
'''


def wait_for(cond, timeout=60, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ephrun-lock-")
        self.home = os.path.join(self.dir, "home")
        self.path = os.path.join(self.dir, "hold.lua")
        with open(self.path, "w") as f:
            f.write(HOLD)
        self.go = os.path.join(self.dir, "go")
        self.extra_env = {}
        self.procs = []

    def tearDown(self):
        open(self.go, "a").close()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)

    def env(self):
        e = env(EPHRUN_HOME=self.home, **self.extra_env)
        e.pop("EPHRUN_NOTIFY_URL", None)
        return e

    def ephrun(self, args, timeout=60):
        return subprocess.run([BIN] + args, capture_output=True, text=True, timeout=timeout, env=self.env(),
                              stdin=subprocess.DEVNULL)

    def hold(self, *args):
        p = subprocess.Popen([BIN, self.path, "go=" + self.go] + list(args), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=self.env())
        self.procs.append(p)
        line = wait_ready(p, timeout=30)
        return p, line.split()[1]

    def release(self, p):
        open(self.go, "a").close()
        out, err = p.communicate(timeout=30)
        os.remove(self.go)
        return p.returncode, out, err


class FileLockTest(Base):
    def lockfile(self):
        return os.path.join(self.home, "locks", "build.json")

    def test_second_run_is_refused_then_free_after_the_first_ends(self):
        first, run_id = self.hold()
        with open(self.lockfile()) as f:
            holder = json.load(f)
        self.assertEqual(holder["run_id"], run_id)
        self.assertEqual(oct(os.stat(self.lockfile()).st_mode & 0o777), "0o600")
        r = self.ephrun([self.path])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("lock 'build' is held by", r.stderr)
        self.assertIn("run " + run_id, r.stderr)
        self.assertIn("%s@" % holder["user"], r.stderr)
        self.assertRegex(r.stderr, r"its lease has (\d+s|\d+\.\d+s) left")
        self.assertIn("ephrun lock break build", r.stderr)
        self.assertIn("hold.lua:", r.stderr)  # the recipe's line
        code, out, err = self.release(first)
        self.assertEqual(code, 0, err)
        self.assertFalse(os.path.exists(self.lockfile()))
        r = self.ephrun([self.path])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("DONE", r.stdout)

    def test_lease_is_renewed_while_the_run_lives(self):
        first, run_id = self.hold("lease=3s")
        with open(self.lockfile()) as f:
            before = json.load(f)["expires"]

        def renewed():
            with open(self.lockfile()) as f:
                return json.load(f)["expires"] > before

        wait_for(renewed, timeout=20, what="the lease to be renewed")
        # past the first lease, still held
        wait_for(lambda: time.time() > before + 0.5, what="the first lease to lapse")
        r = self.ephrun([self.path])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("run " + run_id, r.stderr)
        self.assertEqual(self.release(first)[0], 0)

    def test_sigkilled_holder_lapses_and_is_taken_over(self):
        # long enough that the refused run below starts well within it, even on a busy machine
        first, run_id = self.hold("lease=8s")
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        r = self.ephrun([self.path])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("run " + run_id, r.stderr)
        with open(self.lockfile()) as f:
            expires = json.load(f)["expires"]
        wait_for(lambda: time.time() > expires + 0.2, what="the killed run's lease to lapse")
        r = self.ephrun(["lock", "ls", "--json"])
        self.assertEqual(r.returncode, 0, r.stderr)
        (row,) = json.loads(r.stdout)["locks"]
        self.assertTrue(row["expired"])
        r = self.ephrun([self.path])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("taking over the expired lease", r.stderr)
        self.assertIn(run_id, r.stderr)
        self.assertFalse(os.path.exists(self.lockfile()))

    def test_lock_ls_and_break(self):
        r = self.ephrun(["lock", "ls"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("No locks held", r.stdout)
        first, run_id = self.hold()
        r = self.ephrun(["lock", "ls"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("build", r.stdout)
        self.assertIn(run_id, r.stdout)
        # no terminal to ask on: refused, the lock stays
        r = self.ephrun(["lock", "break", "build"])
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--yes", r.stderr)
        self.assertIn(run_id, r.stderr)  # the question names whose lock it is
        self.assertTrue(os.path.exists(self.lockfile()))
        r = self.ephrun(["lock", "break", "build", "--yes"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Broke lock 'build'", r.stdout)
        self.assertIn(run_id, r.stdout)
        self.assertFalse(os.path.exists(self.lockfile()))
        # the holder notices at its next renewal; here it is simply ended
        self.release(first)

    def test_a_broken_lock_stops_its_holder_at_the_next_renewal(self):
        first, run_id = self.hold("lease=3s")
        r = self.ephrun(["lock", "break", "build", "--yes"])
        self.assertEqual(r.returncode, 0, r.stderr)
        out, err = first.communicate(timeout=30)  # never told to go on: it must stop by itself
        self.assertEqual(first.returncode, 1, err)
        self.assertIn("lock 'build' was taken from this run", err)
        self.assertNotIn("DONE", out)

    def test_dry_run_reads_the_holder_and_takes_nothing(self):
        r = self.ephrun([self.path, "--dry-run", "--json"])
        self.assertEqual(r.returncode, 0, r.stderr)
        plan = json.loads(r.stdout[r.stdout.index("{"):])
        kinds = [s["kind"] for s in plan["steps"]]
        self.assertIn("lock", kinds)
        self.assertIn("unlock", kinds)
        self.assertFalse(os.path.exists(self.lockfile()))
        first, run_id = self.hold()
        r = self.ephrun([self.path, "--dry-run"])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("run " + run_id, r.stdout + r.stderr)
        self.release(first)


CONDITIONAL = r'''
local ephrun = require "ephrun"
local lock = require "ephrun.lock"
return ephrun.recipe { name = "s3-conditional", run = function()
  local a = lock.backend("cond", { backend = "s3", bucket = "team-locks" })
  local b = lock.backend("cond", { backend = "s3", bucket = "team-locks" })
  local h = { run_id = "A", since = 1, lease = 60, expires = ephrun.time.now() + 60 }
  assert(a:create(h) == true, "first create")
  -- the race the GET beforehand cannot close: If-None-Match makes S3 refuse
  assert(b:create({ run_id = "B", since = 2, lease = 60, expires = 0 }) == false, "second create must get 412")
  local seen = b:read()
  assert(seen.run_id == "A" and seen.etag, "holder read back with its etag")
  -- A renews: the ETag B saw is stale, so B's takeover must not delete A's lock
  h.expires = h.expires + 60
  assert(a:renew(h) == true, "renew under If-Match")
  b:take_over(seen)
  assert(b:read().run_id == "A", "a renewed lock survives a takeover with a stale ETag")
  -- a renewal by someone whose ETag is stale is refused, naming the holder
  b.etag = seen.etag
  local ok, cur = b:renew({ run_id = "B" })
  assert(ok == false and cur.run_id == "A", "stale renew refused")
  a:release(h)
  assert(a:read() == nil, "released")
  print("CONDITIONAL OK")
end }
'''


class S3LockTest(Base):
    def test_conditional_writes_close_the_races(self):
        from aws import AwsStandin
        with AwsStandin(start_sshd=False) as a:
            self.extra_env = a.env()
            a.aws_cli("s3api", "create-bucket", "--bucket", "team-locks",
                      "--create-bucket-configuration", "LocationConstraint=eu-west-1")
            path = os.path.join(self.dir, "cond.lua")
            with open(path, "w") as f:
                f.write(CONDITIONAL)
            r = self.ephrun([path])
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("CONDITIONAL OK", r.stdout)

    def test_s3_lock_refuses_renews_and_takes_over(self):
        from aws import AwsStandin
        with AwsStandin(start_sshd=False) as a:
            self.extra_env = a.env()
            a.aws_cli("s3api", "create-bucket", "--bucket", "team-locks",
                      "--create-bucket-configuration", "LocationConstraint=eu-west-1")
            first, run_id = self.hold("backend=s3", "bucket=team-locks", "lease=3s")

            def holder():
                _, out, _ = a.aws_cli("s3api", "get-object", "--bucket", "team-locks", "--key",
                            "ephrun-locks/build.json", os.path.join(self.dir, "obj"))
                with open(os.path.join(self.dir, "obj")) as f:
                    return out["ETag"], json.load(f)

            etag, h = holder()
            self.assertEqual(h["run_id"], run_id)
            r = self.ephrun([self.path, "backend=s3", "bucket=team-locks"])
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("run " + run_id, r.stderr)
            self.assertIn("left", r.stderr)
            # renewed: the object is rewritten under If-Match
            wait_for(lambda: holder()[1]["expires"] > h["expires"], timeout=20, what="an S3 renewal")
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=30)
            expires = holder()[1]["expires"]
            wait_for(lambda: time.time() > expires + 0.2, what="the lease to lapse")
            r = self.ephrun([self.path, "backend=s3", "bucket=team-locks"])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("taking over the expired lease", r.stderr)
            # released at the end of the run
            r = self.ephrun(["lock", "ls", "backend=s3", "bucket=team-locks", "name=build", "--json"])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout)["locks"], [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
