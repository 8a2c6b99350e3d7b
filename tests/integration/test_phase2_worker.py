"""recipes/phase2-worker.lua end to end. On the AWS stand-in: a spot c7i.8xlarge with its
MaxPrice, one-time, a 100 GB gp3 volume and the Name/Phase/Lifecycle tags; the init's
secret reaches the instance over SSH and never its user-data; the launcher ends printing
status/attach/finish; `finish` refuses while the log has no COMPLETE, then terminates,
verifies and prints the whole run's cost; a spot interruption relaunches from the job's
checkpoint. On the local provider (the default): the same launch and finish, offline. The
dry-run shows the worst case (MaxPrice × TTL)."""
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

from common import BIN, env
from aws import AwsStandin

TOKEN = "phase2-git-token-5b0c77e1"
# Counts from its checkpoint until a `gate` file appears, then says COMPLETE. The checkpoint is
# replaced by a rename, as the recipe asks: written in place, a copy taken between the truncation
# and the write would be empty.
JOB = ('n=$(cat "$PHASE2_CHECKPOINT" 2>/dev/null || echo 0); echo "worker from $n"; '
       'while [ ! -f gate ]; do n=$((n + 1)); echo $n > "$PHASE2_CHECKPOINT.tmp" && '
       'mv "$PHASE2_CHECKPOINT.tmp" "$PHASE2_CHECKPOINT"; sleep 0.1; done; echo COMPLETE')
INIT = 'mkdir -p app && printf %s "$PHASE2_TOKEN" | wc -c > app/token-length'


class Base(unittest.TestCase):
    def ephrun(self, *args, timeout=120, **kw):
        e = dict(self.env)
        e.update(kw)
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, env=e,
                              stdin=subprocess.DEVNULL)

    def ok(self, *args, **kw):
        r = self.ephrun(*args, **kw)
        self.assertEqual(r.returncode, 0, "ephrun %s\nstdout: %s\nstderr: %s" % (" ".join(args), r.stdout, r.stderr))
        return r

    def launch(self, *params):
        r = self.ok("phase2-worker", "job=" + JOB, "init=" + INIT, "--yes", *params)
        run = r.stdout.split("phase2-worker run ", 1)[1].split(":", 1)[0]
        inst = r.stdout.split(" instance ", 1)[1].split()[0]
        for cmd in ("status", "attach", "finish"):
            self.assertIn("ephrun %s %s" % (cmd, run), r.stdout)
        self.assertNotIn(TOKEN, r.stdout + r.stderr)
        return run, inst

    def status(self, run):
        # --yes: a status that finds the spot instance gone relaunches it, a paid launch
        return json.loads(self.ok("status", run, "--json", "--yes").stdout)

    def wait_status(self, run, want, timeout=30):
        deadline = time.time() + timeout
        while True:
            s = self.status(run)
            if s["status"] == want:
                return s
            self.assertLess(time.time(), deadline, "run %s never became %s: %s" % (run, want, s))
            time.sleep(0.2)


class Phase2Aws(Base):
    @classmethod
    def setUpClass(cls):
        cls.aws = AwsStandin(pending_seconds=0.3, shutting_down_seconds=0.3).__enter__()

    @classmethod
    def tearDownClass(cls):
        cls.aws.__exit__(None, None, None)

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-phase2-")
        self.env = env(EPHRUN_HOME=os.path.join(self.tmp, "state"), EPHRUN_SPOT_POLL="1", PHASE2_TOKEN=TOKEN,
                       **self.aws.env(EPHRUN_AWS_IMAGE=self.aws.image_id()))
        self.env.pop("EPHRUN_LUA_DIR", None)

    def tearDown(self):
        left = self.aws.leftovers()
        for i in left["instances"]:
            self.aws.ec2().terminate_instances(InstanceIds=[i])
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.assertEqual(left, {"instances": [], "key_pairs": [], "security_groups": []})

    def describe(self, iid):
        [res] = self.aws.ec2().describe_instances(InstanceIds=[iid])["Reservations"]
        return res["Instances"][0]

    def test_dry_run_shows_the_spot_worst_case(self):
        r = self.ok("--dry-run", "phase2-worker", "provider=aws", "ttl=10h")
        self.assertIn("aws plan=c7i.8xlarge", r.stdout)
        self.assertIn("price $1.0", r.stdout)
        self.assertIn("× 10h", r.stdout)
        self.assertNotIn("destroy ", r.stdout.split("detach ", 1)[1], "a detached run is not destroyed")
        self.assertEqual(self.aws.calls("RunInstances"), [])

    def test_launch_init_finish_on_spot(self):
        run, inst = self.launch("provider=aws")
        d = self.describe(inst)
        self.assertEqual(d["InstanceType"], "c7i.8xlarge")
        self.assertEqual(d.get("InstanceLifecycle"), "spot")
        tags = {t["Key"]: t["Value"] for t in d["Tags"]}
        self.assertEqual((tags["Name"], tags["Phase"], tags["Lifecycle"], tags["ephrun-detach"]),
                         ("phase2-worker", "2", "temporary", run))
        st = self.aws.instance(inst)
        self.assertTrue(st["spot"])
        self.assertNotIn(TOKEN, base64.b64decode(st["user_data"]).decode())
        with open(os.path.join(st["home"], "app", "token-length")) as f:
            self.assertEqual(int(f.read()), len(TOKEN), "the init's secret did not arrive over SSH")
        vols = self.aws.ec2().describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [inst]}])
        self.assertEqual([(v["Size"], v["VolumeType"]) for v in vols["Volumes"]], [(100, "gp3")])

        self.assertEqual(self.wait_status(run, "running")["job"]["state"], "running")
        # Not complete: finish says so and leaves the worker.
        r = self.ephrun("finish", run, "--yes")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("has no COMPLETE line", r.stderr)
        self.assertIn("incomplete_ok=true", r.stderr)
        self.assertEqual(self.aws.instance(inst)["state"], "running")

        open(os.path.join(st["home"], "gate"), "w").close()
        self.wait_status(run, "done")
        r = self.ok("finish", run)
        self.assertIn("verified: aws instance %s is terminated" % inst, r.stdout)
        self.assertRegex(r.stdout, r"run %s finished: 1 instance, cost of the whole run \$\d+\.\d\d" % run)
        self.assertEqual(self.describe(inst)["State"]["Name"], "terminated")

    def test_spot_interruption_relaunches_from_the_checkpoint(self):
        run, first = self.launch("provider=aws")
        self.wait_status(run, "running")
        self.aws.interrupt(first, seconds=1)
        self.aws.wait_state(first, "terminated", timeout=60)
        # Found gone with the spot reason by status: on_interrupt relaunches (the instance
        # is gone, so from the start); then an attach-driven one copies the checkpoint out.
        s = self.status(run)
        second = s["instance"]
        self.assertNotEqual(second, first)
        self.assertEqual((s["interruptions"], s["status"]), (1, "running"))
        p = subprocess.Popen([BIN, "attach", "--yes", run], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=self.env, stdin=subprocess.DEVNULL)
        try:
            while "worker from" not in p.stdout.readline():
                self.assertIsNone(p.poll(), p.stderr.read() if p.poll() is not None else "")
            self.aws.interrupt(second, seconds=15)
            resumed = None
            while resumed is None:
                line = p.stdout.readline()
                self.assertTrue(line, "attach ended: %s" % p.stderr.read() if not line else "")
                if line.startswith("worker from") and not line.strip().endswith(" 0"):
                    resumed = int(line.split()[-1])
            self.assertGreater(resumed, 0)
            third = [i["id"] for i in self.aws.state()["instances"]
                     if i["state"] == "running" and i["id"] not in (first, second)][0]
            open(os.path.join(self.aws.instance(third)["home"], "gate"), "w").close()
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
        self.assertEqual(p.returncode, 0, err)
        self.aws.wait_state(second, "terminated", timeout=60)
        r = self.ok("finish", run)
        self.assertIn("run %s finished: 3 instances" % run, r.stdout)


class Phase2Local(Base):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-phase2-local-")
        self.home = os.path.join(self.tmp, "state")
        self.env = env(EPHRUN_HOME=self.home, PHASE2_TOKEN=TOKEN)
        self.env.pop("EPHRUN_LUA_DIR", None)

    def tearDown(self):
        local = os.path.join(self.home, "local")
        for name in os.listdir(local) if os.path.isdir(local) else []:
            script = os.path.join(local, name, "destroy.sh")
            if os.path.exists(script):
                subprocess.run(["sh", script], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_runs_offline_on_the_local_provider(self):
        run, inst = self.launch()
        with open(os.path.join(self.home, "local", inst, "meta.json")) as f:
            meta = json.load(f)
        self.assertEqual((meta["tags"]["Phase"], meta["tags"]["Lifecycle"]), ("2", "temporary"))
        with open(os.path.join(meta["workdir"], "app", "token-length")) as f:
            self.assertEqual(int(f.read()), len(TOKEN))
        self.wait_status(run, "running")
        open(os.path.join(meta["workdir"], "gate"), "w").close()
        self.wait_status(run, "done")
        r = self.ok("finish", run)
        self.assertIn("verified: local instance %s is terminated" % inst, r.stdout)
        self.assertIn("cost of the whole run $0.00", r.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.home, "local", inst)))
        # A final snapshot on a provider that cannot take one says so, before anything is destroyed.
        run, inst = self.launch()
        open(os.path.join(self._workdir(inst), "gate"), "w").close()
        self.wait_status(run, "done")
        r = self.ephrun("finish", run, "snapshot=true")
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot take snapshots", r.stderr)
        self.assertTrue(os.path.exists(os.path.join(self.home, "local", inst)))
        self.ok("finish", run)

    def _workdir(self, inst):
        with open(os.path.join(self.home, "local", inst, "meta.json")) as f:
            return json.load(f)["workdir"]


if __name__ == "__main__":
    unittest.main()
