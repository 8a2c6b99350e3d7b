"""recipes/resize-instance.lua end to end: snapshot, stop, change the type, start, verify
`nproc` and memory over SSH against the new size; a capacity failure on start puts the old
type back, starts it again and is reported. On the local provider (whose plans the kernel
enforces), the AWS stand-in and the Vultr stand-in, both with `enforce_size` so a guest
shows its type's vCPUs and memory."""
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from common import BIN, env
from aws import AwsStandin
from vultr import VultrStandin

RESIZED = re.compile(r"resize-instance: (\w+) instance (\S+) resized from (\S+) to (\S+); verified: "
                     r"nproc (\d+), (\d+) MiB")

KEEP_RECIPE = r'''
local ephrun = require "ephrun"
return ephrun.recipe { name = "keep-one", params = { plan = { default = "local-2c-1g" } }, run = function(p)
  local box = ephrun.provider("local"):launch { plan = p.plan, ttl = "10m", keep = true }
  print("KEPT " .. box.id)
end }
'''


class ResizeLocal(unittest.TestCase):
    def setUp(self):
        self.home = tempfile.mkdtemp(prefix="ephrun-resize-")
        self.env = env(EPHRUN_HOME=self.home)

    def tearDown(self):
        shutil.rmtree(self.home, ignore_errors=True)

    def ephrun(self, *args, timeout=120):
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, env=self.env,
                              stdin=subprocess.DEVNULL)

    def alive(self):
        base = os.path.join(self.home, "local")
        return sorted(os.listdir(base)) if os.path.isdir(base) else []

    def test_round_trip_is_verified_by_what_the_instance_sees(self):
        r = self.ephrun("resize-instance")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        m = RESIZED.search(r.stdout)
        self.assertTrue(m, r.stdout)
        self.assertEqual(m.group(3, 4, 5, 6), ("local-2c-1g", "local-1c-512m", "1", "512"))
        self.assertIn("local cannot take snapshots: resizing", r.stderr)
        self.assertEqual(self.alive(), [])  # the demo instance is destroyed

    def test_limits_given_by_a_resize_are_removed_with_the_instance(self):
        # launched with a plan that is only a label (no limits), then resized to a local plan
        r = self.ephrun("resize-instance", "from=plain", "to=local-1c-512m")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        m = RESIZED.search(r.stdout)
        self.assertEqual(m.group(3, 4, 5, 6), ("plain", "local-1c-512m", "1", "512"))
        name = "ephrun-" + m.group(2)   # the names make_cgroups gives (v2, and v1's hierarchies)
        left = glob.glob("/sys/fs/cgroup/" + name) + glob.glob("/sys/fs/cgroup/*/" + name)
        self.assertEqual(left, [])
        self.assertEqual(self.alive(), [])

    def test_no_capacity_puts_the_old_plan_back_and_says_so(self):
        cpus = os.cpu_count()
        r = self.ephrun("resize-instance", "to=local-%dc-1g" % (cpus + 1))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("no capacity to start local instance", r.stderr)
        self.assertRegex(r.stderr, r"it runs again as local-2c-1g, verified: nproc %d, 1024 MiB" % min(2, cpus))
        self.assertNotIn("Traceback", r.stderr)
        self.assertEqual(self.alive(), [])

    def test_an_existing_kept_instance_is_resized_and_left_alive(self):
        path = os.path.join(self.home, "keep.lua")
        with open(path, "w") as f:
            f.write(KEEP_RECIPE)
        r = self.ephrun(path)
        self.assertEqual(r.returncode, 0, r.stderr)
        iid = re.search(r"KEPT (\S+)", r.stdout).group(1)
        try:
            r = self.ephrun("resize-instance", "instance=" + iid, "to=local-1c-256m")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertEqual(RESIZED.search(r.stdout).group(2, 4, 5, 6), (iid, "local-1c-256m", "1", "256"))
            self.assertEqual(self.alive(), [iid])
            with open(os.path.join(self.home, "local", iid, "meta.json")) as f:
                self.assertEqual(json.load(f)["plan"], "local-1c-256m")
            r = self.ephrun("resize-instance", "instance=loc-nosuch", "to=local-1c-256m")
            self.assertEqual(r.returncode, 1)
            self.assertIn("local instance loc-nosuch does not exist", r.stderr)
        finally:
            subprocess.run(["sh", os.path.join(self.home, "local", iid, "destroy.sh")], check=False)

    def test_dry_run_shows_every_step(self):
        r = self.ephrun("resize-instance", "--dry-run")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        kinds = re.findall(r"^\s+\d+\. (\w+)", r.stdout, re.M)
        for k in ("launch", "halt", "resize", "ssh", "run"):
            self.assertIn(k, kinds, r.stdout)
        self.assertLess(kinds.index("halt"), kinds.index("resize"))


class ResizeAws(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = AwsStandin(pending_seconds=0.3, stopping_seconds=0.3, shutting_down_seconds=0.3,
                           enforce_size=True).__enter__()
        cls.image = cls.a.image_id()

    @classmethod
    def tearDownClass(cls):
        cls.a.__exit__(None, None, None)

    def setUp(self):
        self.home = tempfile.mkdtemp(prefix="ephrun-resize-aws-")
        self.env = env(EPHRUN_HOME=self.home, EPHRUN_AWS_POLL="0.2", EPHRUN_AWS_IMAGE=self.image, **self.a.env())
        self.first = len(self.a.calls())

    def tearDown(self):
        self.a.clear_faults()
        self.assertEqual(self.a.leftovers()["instances"], [])
        for img in self.a.ec2().describe_images(Owners=["self"])["Images"]:
            self.a.ec2().deregister_image(ImageId=img["ImageId"])
        shutil.rmtree(self.home, ignore_errors=True)

    def ephrun(self, *args):
        return subprocess.run([BIN, "resize-instance", "provider=aws", "--yes", *args], capture_output=True,
                              text=True, timeout=240, env=self.env, stdin=subprocess.DEVNULL)

    def actions(self):
        return [c["action"] for c in self.a.calls()[self.first:]]

    def test_snapshot_stop_change_start_verify(self):
        r = self.ephrun("from=t3.large", "to=t3.micro")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        m = RESIZED.search(r.stdout)
        self.assertTrue(m, r.stdout)
        # t3.large: 2 vCPU, 8 GiB; t3.micro: 2 vCPU, 1 GiB (moto's table), as the guest shows them
        self.assertEqual(m.group(3, 4, 5, 6), ("t3.large", "t3.micro", "2", "1024"))
        acts = [a for a in self.actions() if a in ("CreateImage", "StopInstances", "ModifyInstanceAttribute",
                                                    "StartInstances", "TerminateInstances")]
        self.assertEqual(acts[:4], ["CreateImage", "StopInstances", "ModifyInstanceAttribute", "StartInstances"])
        self.assertRegex(r.stdout, r"snapshot ami-\w+ kept")

    def test_capacity_failure_on_start_goes_back_to_the_old_type(self):
        self.a.fault("StartInstances", "InsufficientInstanceCapacity", count=1)
        r = self.ephrun("from=t3.large", "to=t3.micro")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("no capacity to start aws instance", r.stderr)
        self.assertRegex(r.stderr, r"it runs again as t3\.large, verified: nproc 2, 8192 MiB")
        types = [c.get("params", {}) for c in self.a.calls("ModifyInstanceAttribute")[-2:]]
        self.assertEqual(len(self.a.calls("ModifyInstanceAttribute")[-2:]), 2, types)
        self.assertEqual(self.actions().count("StartInstances"), 2)


class ResizeVultr(unittest.TestCase):
    def test_plan_change_is_verified(self):
        with VultrStandin(lock_seconds=0, boot_seconds=0.3, resize_seconds=0.3, snapshot_seconds=0.3,
                          enforce_size=True) as v:
            home = tempfile.mkdtemp(prefix="ephrun-resize-vultr-")
            try:
                r = subprocess.run([BIN, "resize-instance", "provider=vultr", "--yes"], capture_output=True,
                                   text=True, timeout=240, env=env(EPHRUN_HOME=home, EPHRUN_VULTR_POLL="0.2",
                                                                   **v.env()), stdin=subprocess.DEVNULL)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                m = RESIZED.search(r.stdout)
                self.assertTrue(m, r.stdout)
                self.assertEqual(m.group(3, 4, 5, 6), ("vc2-1c-1gb", "vc2-2c-4gb", str(min(2, os.cpu_count())),
                                                       "4096"))
                calls = [(e["method"], re.sub(r"/instances/[^/]+", "/instances/ID", e["path"]))
                         for e in v.state()["log"] if e["method"] in ("POST", "PATCH", "DELETE")]
                order = [c for c in calls if c in (("POST", "/v2/snapshots"), ("POST", "/v2/instances/ID/halt"),
                                                   ("PATCH", "/v2/instances/ID"),
                                                   ("POST", "/v2/instances/ID/start"))]
                self.assertEqual(order, [("POST", "/v2/snapshots"), ("POST", "/v2/instances/ID/halt"),
                                         ("PATCH", "/v2/instances/ID"), ("POST", "/v2/instances/ID/start")])
                self.assertEqual(v.leftovers()["instances"], [])
            finally:
                shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
