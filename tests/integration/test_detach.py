"""Detached runs on the local provider: a recipe starts its job detached and its launcher
ends; the instance stays (journalled `detached`, left by `reap`), and `ephrun status`,
`attach` and `finish` work from another shell: status shows the job running, then done;
attach follows the log and Ctrl-C leaves the job running; finish runs the recipe's finish
step with its parameters back (the secret read again), destroys, verifies and forgets the
run's keys. A run whose instance its TTL ended shows `forced`. The run's directory under
EPHRUN_HOME alone is enough for status when the journal does not know the run."""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import unittest

from common import BIN, RECIPES, env
from aws import AwsStandin
from vultr import VultrStandin
from test_notify import Receiver

RECIPE = os.path.join(RECIPES, "detach_job.lua")
SPOT = os.path.join(RECIPES, "detach_spot.lua")
TOKEN = "detach-secret-token-8d1c0a"


class DetachLocal(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-detach-")
        self.home = os.path.join(self.tmp, "state")
        self.env = env(EPHRUN_HOME=self.home, DETACH_TOKEN=TOKEN)
        self.env.pop("EPHRUN_LUA_DIR", None)

    def tearDown(self):
        # Whatever a failed test left: the local provider's by-hand destroy.
        local = os.path.join(self.home, "local")
        for name in os.listdir(local) if os.path.isdir(local) else []:
            script = os.path.join(local, name, "destroy.sh")
            if os.path.exists(script):
                subprocess.run(["sh", script], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def ephrun(self, *args, timeout=60, home=None, **kw):
        e = dict(self.env)
        if home:
            e["EPHRUN_HOME"] = home
        e.update(kw)
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, env=e,
                              stdin=subprocess.DEVNULL)

    def ok(self, *args, **kw):
        r = self.ephrun(*args, **kw)
        self.assertEqual(r.returncode, 0, "ephrun %s\nstdout: %s\nstderr: %s" % (" ".join(args), r.stdout, r.stderr))
        return r

    def launch(self, *params):
        r = self.ok(RECIPE, "note=hello", *params)
        line = [l for l in r.stdout.splitlines() if l.startswith("DETACHED ")][0]
        _, run, inst = line.split()
        self.assertIn("ephrun status " + run, r.stderr)
        self.assertIn("ephrun attach " + run, r.stderr)
        self.assertIn("ephrun finish " + run, r.stderr)
        return run, inst

    def status(self, run, home=None):
        # --yes: a status that finds a spot instance gone relaunches it, a paid launch
        return json.loads(self.ok("status", run, "--json", "--yes", home=home).stdout)

    def wait_status(self, run, want, timeout=30):
        deadline = time.time() + timeout
        while True:
            s = self.status(run)
            if s["status"] == want:
                return s
            if time.time() > deadline:
                self.fail("run %s never became %s: %s" % (run, want, s))
            time.sleep(0.2)

    def read_until(self, p, marker):
        while True:
            line = p.stdout.readline()
            if not line:
                self.fail("attach ended before showing %r: %s" % (marker, p.stderr.read()))
            if marker in line:
                return

    def instance_dir(self, inst):
        return os.path.join(self.home, "local", inst)

    def open_gate(self, inst):
        with open(os.path.join(self.instance_dir(inst), "meta.json")) as f:
            work = json.load(f)["workdir"]
        open(os.path.join(work, "gate"), "w").close()

    def test_launcher_ends_status_then_finish_from_another_shell(self):
        run, inst = self.launch()
        [res] = json.loads(self.ok("ls", "--json").stdout)["resources"]
        self.assertEqual((res["id"], res["status"], res["state"]), (inst, "detached", "detached"))
        self.assertIn("Nothing to reap", self.ok("reap", "--yes").stdout)
        self.assertIn("Nothing to reap", self.ok("reap", "--yes", "--expired").stdout)
        self.assertTrue(os.path.isdir(self.instance_dir(inst)), "reap removed a detached instance")

        s = self.status(run)
        self.assertEqual((s["status"], s["state"], s["job"]["state"], s["recipe"]), ("running", "running", "running",
                                                                                    "detach-job"))
        self.assertIn("job-started", s["log_tail"])
        self.assertGreater(s["ttl_left"], 500)
        self.assertEqual(s["cost"], 0)
        text = self.ok("status", run).stdout
        self.assertIn("job       running", text)
        self.assertIn("ephrun finish " + run, text)
        # Without a run id: every detached run of the journal.
        self.assertEqual([r["run"] for r in json.loads(self.ok("status", "--json").stdout)["runs"]], [run])

        self.open_gate(inst)
        s = self.wait_status(run, "done")
        self.assertEqual((s["job"]["state"], s["job"]["exit_code"]), ("exited", 0))

        r = self.ok("finish", run)
        self.assertIn("FINISH-SAW COMPLETE note=hello token=%d done=true" % len(TOKEN), r.stdout)
        self.assertIn("verified: local instance %s is terminated" % inst, r.stdout)
        self.assertIn("run %s finished: 1 instance, cost of the whole run $0.00" % run, r.stdout)
        self.assertNotIn(TOKEN, r.stdout + r.stderr)
        self.assertFalse(os.path.exists(self.instance_dir(inst)))
        self.assertEqual(self.status(run)["status"], "finished")
        self.assertEqual(json.loads(self.ok("ls", "--json").stdout)["resources"], [])
        self.assertEqual(os.listdir(os.path.join(self.home, "runs")), [], "finish leaves the run's keys")
        self.assertIn("already finished", self.ok("finish", run).stdout)
        # The secret was never journalled, only the other parameters.
        db = sqlite3.connect(os.path.join(self.home, "journal.sqlite"))
        extra = json.loads(db.execute("SELECT extra FROM resources").fetchone()[0])
        db.close()
        self.assertIn("note=hello", extra["detach"]["params"])
        self.assertNotIn(TOKEN, json.dumps(extra))

    def test_finish_asks_before_ending_a_running_job(self):
        run, inst = self.launch()
        r = self.ephrun("finish", run)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("still running", r.stderr)
        self.assertIn("--yes", r.stderr)
        self.assertTrue(os.path.isdir(self.instance_dir(inst)))
        r = self.ok("finish", run, "--yes")
        self.assertIn("FINISH-SAW incomplete", r.stdout)
        self.assertFalse(os.path.exists(self.instance_dir(inst)))

    def test_attach_follows_and_ctrl_c_leaves_the_job_running(self):
        run, inst = self.launch()
        p = subprocess.Popen([BIN, "attach", run], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=self.env, stdin=subprocess.DEVNULL)
        try:
            self.read_until(p, "job-started")
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
        self.assertEqual(p.returncode, 130, err)
        self.assertIn("detached from run %s; its job keeps running" % run, err)
        self.assertEqual(self.status(run)["job"]["state"], "running")

        # Followed to its end, attach says the job is over and how to finish.
        p = subprocess.Popen([BIN, "attach", run], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=self.env, stdin=subprocess.DEVNULL)
        try:
            self.read_until(p, "job-started")
            self.open_gate(inst)
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
        self.assertEqual(p.returncode, 0, err)
        self.assertIn("COMPLETE", out)
        self.assertIn("ephrun finish %s ends the run" % run, out)
        self.ok("finish", run)

    def test_an_instance_its_ttl_ended_shows_forced(self):
        run, inst = self.launch("ttl=3s")
        deadline = time.time() + 60
        while os.path.exists(self.instance_dir(inst)):
            self.assertLess(time.time(), deadline, "the TTL never ended the instance")
            time.sleep(0.2)
        # Nobody was there when the TTL ended it: the first status that finds it gone says so
        # to the webhook, once.
        hook = Receiver()
        self.addCleanup(hook.close)
        s = json.loads(self.ok("status", run, "--json", EPHRUN_NOTIFY_URL=hook.url).stdout)
        self.assertEqual((s["status"], s["state"]), ("forced", "terminated"))
        self.assertIn("TTL", s["why"])
        self.assertIn("ended: its TTL", self.ok("status", run, EPHRUN_NOTIFY_URL=hook.url).stdout)
        self.assertEqual(hook.events(), ["terminated"])
        msg = hook.messages()[0]
        self.assertEqual((msg["run_id"], msg["id"]), (run, inst))
        self.assertIn("TTL", msg["detail"])
        # Expired: `reap --expired` takes the journal entry; it stays forced.
        self.assertIn("(expired)", self.ok("reap", "--yes", "--expired").stdout)
        self.assertEqual(self.status(run)["status"], "forced")
        r = self.ok("finish", run)
        self.assertIn("already gone", r.stdout)

    def test_a_killed_launchers_instance_its_ttl_ended_shows_forced(self):
        recipe = os.path.join(self.tmp, "held.lua")
        with open(recipe, "w") as f:
            f.write('local ephrun = require "ephrun"\n'
                    'return ephrun.recipe { name = "held", run = function()\n'
                    '  local box <close> = ephrun.provider("local"):launch { ttl = "3s" }\n'
                    '  print("READY " .. ephrun.run_id() .. " " .. box.id)\n'
                    '  io.stdout:flush()\n'
                    '  ephrun.time.sleep(600)\n'
                    'end }\n')
        p = subprocess.Popen([BIN, recipe], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=self.env, stdin=subprocess.DEVNULL)
        try:
            line = p.stdout.readline()
            self.assertTrue(line.startswith("READY "), p.stderr.read() if not line else line)
            _, run, inst = line.split()
            p.send_signal(signal.SIGKILL)
        finally:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=30)
        deadline = time.time() + 60
        while os.path.exists(self.instance_dir(inst)):
            self.assertLess(time.time(), deadline, "the TTL never ended the instance")
            time.sleep(0.2)
        s = self.status(run)
        self.assertEqual((s["status"], s["instance"], s["detached"]), ("forced", inst, False))
        self.assertIn("TTL", s["why"])

    def test_the_runs_directory_is_enough_without_the_journal(self):
        run, inst = self.launch()
        # The journal lost (or this is not the journal that launched it): runs/RUN/ is enough.
        aside = os.path.join(self.tmp, "journal-aside")
        os.mkdir(aside)
        for f in os.listdir(self.home):
            if f.startswith("journal.sqlite"):
                os.rename(os.path.join(self.home, f), os.path.join(aside, f))
        s = self.status(run)
        self.assertEqual((s["status"], s["instance"]), ("running", inst))
        self.assertIn("job-started", s["log_tail"])
        for f in os.listdir(aside):
            os.rename(os.path.join(aside, f), os.path.join(self.home, f))
        # Nothing at all: the error says where it looked and what to give.
        r = self.ephrun("status", "20990101-000000-00000000", home=os.path.join(self.tmp, "empty"))
        self.assertEqual(r.returncode, 1)
        self.assertIn("providers=aws", r.stderr)
        self.ok("finish", run, "--yes")


class DetachAws(unittest.TestCase):
    """On the AWS stand-in, spot: another machine finds the run by its tags; a spot
    interruption seen by `attach` runs on_interrupt, which copies the checkpoint out,
    relaunches and resumes; `finish` ends the new instance and leaves nothing behind."""

    @classmethod
    def setUpClass(cls):
        cls.aws = AwsStandin(pending_seconds=0.3, shutting_down_seconds=0.3).__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.aws.__exit__(None, None, None)

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-detach-aws-")
        self.env = env(EPHRUN_HOME=os.path.join(self.tmp, "state"), EPHRUN_SPOT_POLL="1",
                       **self.aws.env(EPHRUN_AWS_SPOT="true", EPHRUN_AWS_MAX_PRICE="0.05",
                                      EPHRUN_AWS_IMAGE=self.aws.image_id()))
        self.env.pop("EPHRUN_LUA_DIR", None)

    def tearDown(self):
        left = self.aws.leftovers()
        for i in left["instances"]:
            self.aws.ec2().terminate_instances(InstanceIds=[i])
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.assertEqual(left, {"instances": [], "key_pairs": [], "security_groups": []})

    def ephrun(self, *args, timeout=120, **kw):
        e = dict(self.env)
        e.update(kw)
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, env=e,
                              stdin=subprocess.DEVNULL)

    def ok(self, *args, **kw):
        r = self.ephrun(*args, **kw)
        self.assertEqual(r.returncode, 0, "ephrun %s\nstdout: %s\nstderr: %s" % (" ".join(args), r.stdout, r.stderr))
        return r

    def read_until(self, p, marker):
        lines = []
        while True:
            line = p.stdout.readline()
            if not line:
                self.fail("attach ended before showing %r: %s %s" % (marker, lines, p.stderr.read()))
            lines.append(line)
            if marker in line:
                return line

    def test_an_instance_its_lifetime_timer_shut_down_shows_forced(self):
        self.aws.config(minute_seconds=5)
        try:
            r = self.ok(SPOT, "--yes", "ttl=1m")
        finally:
            self.aws.config(minute_seconds=60)
        _, run, inst = r.stdout.split()[:3]
        self.aws.wait_state(inst, "terminated", timeout=60)
        s = json.loads(self.ok("status", run, "--json").stdout)
        self.assertEqual((s["status"], s["reason"]), ("forced", "Client.InstanceInitiatedShutdown"))
        self.assertIn("lifetime timer (TTL)", s["why"])
        self.assertIn("already gone", self.ok("finish", run).stdout)
        self.ok("reap", "--yes")

    def test_a_kept_instance_keeps_its_security_group_until_reaped(self):
        recipe = os.path.join(self.tmp, "keep.lua")
        with open(recipe, "w") as f:
            f.write('local ephrun = require "ephrun"\n'
                    'return ephrun.recipe { name = "keep-aws", run = function()\n'
                    '  local box = ephrun.provider("aws"):launch { plan = "t3.micro", ttl = "10m", keep = true }\n'
                    '  print("KEPT " .. box.id)\n'
                    'end }\n')
        # Before: the run's cleanup tried to delete the group the kept instance uses and failed.
        r = self.ok(recipe, "--yes", EPHRUN_AWS_CLEANUP_DEADLINE="5s", EPHRUN_AWS_SPOT="false")
        inst = r.stdout.split()[1]
        left = self.aws.leftovers()
        self.assertEqual(left["instances"], [inst])
        self.assertEqual(len(left["security_groups"]), 1)
        self.assertIn("Nothing to reap", self.ok("reap", "--yes").stdout)
        r = self.ok("reap", "--yes", "--kept")
        self.assertIn("destroyed aws %s (kept)" % inst, r.stdout)

    def test_spot_interruption_relaunches_and_resumes_from_the_checkpoint(self):
        r = self.ok(SPOT, "--yes")
        _, run, first = r.stdout.split()[:3]
        self.assertTrue(self.aws.instance(first)["spot"])
        # Another machine: a fresh EPHRUN_HOME finds it by its tags and says what it cannot know.
        fresh = os.path.join(self.tmp, "other-machine")
        s = json.loads(self.ok("status", run, "providers=aws", "--json", EPHRUN_HOME=fresh).stdout)
        self.assertEqual((s["instance"], s["state"], s["from_tags"], s["recipe"]), (first, "running", True,
                                                                                      "detach-spot"))
        self.assertGreater(s["ttl_left"], 1500)
        self.assertIn("need the run's key", s["unknown"][0])
        self.assertIn("ephrun status %s providers=aws" % run,
                      self.ephrun("status", run, EPHRUN_HOME=os.path.join(self.tmp, "nothing")).stderr)
        # Reap leaves the detached instance and the security group it still uses.
        self.assertIn("Nothing to reap", self.ok("reap", "--yes").stdout)

        p = subprocess.Popen([BIN, "attach", "--yes", run], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=self.env, stdin=subprocess.DEVNULL)
        try:
            self.read_until(p, "job-started from 0")
            self.aws.interrupt(first, seconds=12)
            self.read_until(p, "spot interruption notice")
            saved = int(self.read_until(p, "CHECKPOINT").split()[1])
            self.assertGreater(saved, 0)
            second = self.read_until(p, "DETACHED %s " % run).split()[2]
            self.assertNotEqual(second, first)
            resumed = int(self.read_until(p, "job-started from").split()[-1])
            self.assertEqual(resumed, saved)
            open(os.path.join(self.aws.instance(second)["home"], "gate"), "w").close()
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
        self.assertEqual(p.returncode, 0, err)
        self.assertIn("the job is over: ephrun finish %s" % run, out)
        self.aws.wait_state(first, "terminated", timeout=60)
        s = json.loads(self.ok("status", run, "--json").stdout)
        self.assertEqual((s["instance"], s["status"], s["interruptions"]), (second, "done", 1))

        r = self.ok("finish", run)
        self.assertIn("FINISH COMPLETE at", r.stdout)
        self.assertIn("verified: aws instance %s is terminated" % second, r.stdout)
        self.assertIn("run %s finished: 2 instances" % run, r.stdout)
        self.assertEqual(self.aws.instance(second)["state"], "terminated")
        self.ok("reap", "--yes")



class DetachVultr(unittest.TestCase):
    """On the Vultr stand-in, whose instance has no address until it runs: status and finish
    reach the job at the address the run had when it detached."""

    def test_status_and_finish_reach_the_job(self):
        tmp = tempfile.mkdtemp(prefix="ephrun-detach-vultr-")
        self.addCleanup(shutil.rmtree, tmp, True)
        with VultrStandin() as v:
            e = env(EPHRUN_HOME=os.path.join(tmp, "state"), DETACH_TOKEN=TOKEN, **v.env())
            e.pop("EPHRUN_LUA_DIR", None)

            def ok(*args):
                r = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=120, env=e,
                                   stdin=subprocess.DEVNULL)
                self.assertEqual(r.returncode, 0, "%s\n%s\n%s" % (args, r.stdout, r.stderr))
                return r
            r = ok(RECIPE, "provider=vultr", "plan=vc2-1c-1gb", "region=ewr", "--yes")
            _, run, inst = [l for l in r.stdout.splitlines() if l.startswith("DETACHED ")][0].split()
            s = json.loads(ok("status", run, "--json").stdout)
            self.assertEqual((s["status"], s["job"]["state"]), ("running", "running"), s)
            self.assertIn("job-started", s["log_tail"])
            self.assertIn("Nothing to reap", ok("reap", "--yes").stdout)
            r = ok("finish", run, "--yes")
            self.assertIn("verified: vultr instance %s is terminated" % inst, r.stdout)
            self.assertEqual([i["id"] for i in v.state()["instances"]], [])


if __name__ == "__main__":
    unittest.main()
