"""The AWS provider (providers/aws.lua) and deploy-fast on it, against the AWS stand-in
(tests/fakes/aws: moto behind a proxy whose instances are real sshds on 127.0.2.N).

What a launch makes (tags on instance and volume, IMDSv2, shutdown behaviour, gp3 root,
the run's key pair and security group, the journal's token as ClientToken); deploy-fast
provider=aws end to end; faults: SIGINT while the instance boots, SIGKILL then `ephrun reap`,
a throttling storm, a security group in use (DependencyViolation), a capacity error on
create and on the start of a resize, SSH never ready. After every test: no instance alive,
no key pair, no security group, and the secret key in no output. One stand-in serves the
whole class (it takes seconds to start)."""
import base64
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import unittest

from common import BIN, RECIPES, SRC, env, wait_ready
from aws import AwsStandin, SECRET_KEY

OPS = os.path.join(RECIPES, "aws_ops.lua")
NOTHING = {"instances": [], "key_pairs": [], "security_groups": []}


class AwsProvider(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = AwsStandin(pending_seconds=0.5, stopping_seconds=0.5, shutting_down_seconds=0.5).__enter__()
        cls.image = cls.a.image_id()

    @classmethod
    def tearDownClass(cls):
        cls.a.__exit__(None, None, None)

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-aws-test-")
        self.home = os.path.join(self.tmp, "home")
        self.src = os.path.join(self.tmp, "hello")
        shutil.copytree(os.path.join(SRC, "examples", "hello"), self.src)
        self.env = env(EPHRUN_HOME=self.home, EPHRUN_AWS_POLL="0.25", EPHRUN_AWS_IMAGE=self.image, **self.a.env())
        self.outputs = []
        self.procs = []
        self.first_call = len(self.a.calls())

    def tearDown(self):
        try:
            for p in self.procs:
                self.stop(p)
            self.a.clear_faults()
            self.a.config(start_sshd=True, pending_seconds=0.5)
            for text in self.outputs:
                self.assertNotIn(SECRET_KEY, text, "the secret key leaked into output")
            left = self.a.leftovers()
            if left != NOTHING:
                self.remove(left)   # so that one failure does not fail the tests after it
            self.assertEqual(left, NOTHING, "left in the stand-in")
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def remove(self, left):
        if left["instances"]:
            self.a.aws_cli("ec2", "terminate-instances", "--instance-ids", *left["instances"])
            for iid in left["instances"]:
                self.a.wait_state(iid, "terminated")
        for name in left["security_groups"]:
            self.a.aws_cli("ec2", "delete-security-group", "--group-name", name)
        for name in left["key_pairs"]:
            self.a.aws_cli("ec2", "delete-key-pair", "--key-name", name)

    def ephrun(self, *args, timeout=180):
        r = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, env=self.env, cwd=self.tmp)
        self.outputs += [r.stdout, r.stderr]
        return r

    def start(self, *args):
        p = subprocess.Popen([BIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=self.env, cwd=self.tmp)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:   # a test failed before its signal: end the run, which cleans up
            p.send_signal(signal.SIGINT)
            self.outputs += list(p.communicate(timeout=120))

    def ready(self, p):
        try:
            return wait_ready(p, "READY", 60).split()[1]
        except AssertionError:
            p.kill()
            out, err = p.communicate()
            raise AssertionError("no READY; stderr: " + err)

    def finish(self, p, sig):
        p.send_signal(sig)
        out, err = p.communicate(timeout=120)
        self.outputs += [out, err]
        return p.returncode, out, err

    def statuses(self, action):
        return [c["status"] for c in self.a.state()["log"][self.first_call:] if c["action"] == action]

    def cli(self, *args):
        return self.a.aws_cli(*args)[1]

    def describe(self, iid):
        return self.a.ec2().describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]

    # -- what a launch makes ------------------------------------------------------------------

    def test_a_launch_makes_what_the_design_says_and_sigint_removes_it_all(self):
        p = self.start("--yes", OPS, "mode=hang")
        iid = self.ready(p)
        inst = self.describe(iid)
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        run = tags["ephrun-run"]
        self.assertEqual(tags["ephrun-recipe"], "aws-ops")
        self.assertIn("ephrun-expires", tags)
        self.assertEqual(inst["InstanceType"], "t3.micro")
        self.assertEqual(inst["ImageId"], self.image)
        self.assertEqual(inst["MetadataOptions"]["HttpTokens"], "required")
        self.assertEqual(inst["KeyName"], "ephrun-run-" + run)
        behaviour = self.cli("ec2", "describe-instance-attribute", "--instance-id", iid,
                             "--attribute", "instanceInitiatedShutdownBehavior")
        self.assertEqual(behaviour["InstanceInitiatedShutdownBehavior"]["Value"], "terminate")
        # the journal's token, written before the create, is the ClientToken
        db = sqlite3.connect(os.path.join(self.home, "journal.sqlite"))
        (token,) = db.execute("SELECT token FROM resources WHERE resource_id = ?", (iid,)).fetchone()
        db.close()
        self.assertTrue(token)
        self.assertEqual(inst["ClientToken"], token[:64])
        # the root volume: gp3, the configured size, the run's tags
        vols = self.cli("ec2", "describe-volumes", "--filters", "Name=attachment.instance-id,Values=" + iid)["Volumes"]
        self.assertEqual([(v["VolumeType"], v["Size"]) for v in vols], [("gp3", 8)])
        self.assertEqual({t["Key"]: t["Value"] for t in vols[0]["Tags"]}["ephrun-run"], run)
        # the run's security group opens 22 to the caller only
        (group,) = inst["SecurityGroups"]
        self.assertEqual(group["GroupName"], "ephrun-run-" + run)
        g = self.cli("ec2", "describe-security-groups", "--group-ids", group["GroupId"])["SecurityGroups"][0]
        self.assertEqual([(r["FromPort"], r["ToPort"], [x["CidrIp"] for x in r["IpRanges"]]) for r in g["IpPermissions"]],
                         [(22, 22, ["127.0.0.1/32"])])
        ud = self.cli("ec2", "describe-instance-attribute", "--instance-id", iid, "--attribute", "userData")
        text = base64.b64decode(ud["UserData"]["Value"]).decode()
        self.assertTrue(text.startswith("#cloud-config"))
        self.assertIn("shutdown -h +30", text)
        self.assertNotIn(SECRET_KEY, text)
        rc, out, err = self.finish(p, signal.SIGINT)
        self.assertEqual(rc, 130, err)
        self.assertEqual(self.a.instance(iid)["state"], "terminated")

    def test_deploy_fast_on_aws(self):
        out = os.path.join(self.tmp, "out")
        r = self.ephrun("--yes", "deploy-fast", "provider=aws", "plan=t3.micro", "region=eu-west-1", "src=" + self.src,
                        "out=" + out, "-v", "--log-file", os.path.join(self.tmp, "run.log"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("destroyed: aws instance", r.stdout)
        hello = os.path.join(out, "dist", "hello")
        self.assertEqual(subprocess.run([hello], capture_output=True, text=True).stdout, "hello from an ephrun build\n")
        with open(os.path.join(self.tmp, "run.log")) as f:
            self.outputs.append(f.read())
        self.assertEqual(self.statuses("RunInstances"), [200])
        self.assertEqual(self.statuses("ImportKeyPair"), [200])
        self.assertEqual(self.statuses("DeleteKeyPair"), [200])
        self.assertEqual(self.statuses("DeleteSecurityGroup")[-1], 200)

    def test_dry_run_prices_from_the_table_and_sends_nothing(self):
        r = self.ephrun("deploy-fast", "provider=aws", "plan=c5n.metal", "region=eu-west-1", "ttl=3h",
                        "src=" + self.src, "--dry-run")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # $4.32 on-demand + 8 GB gp3 at $0.088/GB-month
        self.assertIn("$4.3210/hour", r.stdout)
        self.assertIn("$12.96", r.stdout)
        sent = [c["action"] for c in self.a.state()["log"][self.first_call:]]
        self.assertFalse([x for x in sent if not x.startswith("Describe")], sent)

    def test_a_region_that_is_not_aws_is_refused_naming_the_parameter(self):
        r = self.ephrun("deploy-fast", "provider=aws", "plan=t3.micro", "src=" + self.src, "--dry-run")
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("aws: region 'ewr' is not an AWS region: pass region=us-east-1", r.stderr)
        self.assertNotIn("stack traceback", r.stderr)

    def test_spot_with_a_max_price_is_priced_at_it_and_launched_as_spot(self):
        self.env.update(EPHRUN_AWS_SPOT="true", EPHRUN_AWS_MAX_PRICE="0.05")
        r = self.ephrun("deploy-fast", "provider=aws", "plan=c7i.8xlarge", "region=eu-west-1", "ttl=2h",
                        "src=" + self.src, "--dry-run")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("$0.0510/hour", r.stdout)   # MaxPrice + 8 GB gp3, not the on-demand price
        p = self.start("--yes", OPS, "mode=hang")
        iid = self.ready(p)
        self.assertEqual(self.describe(iid)["InstanceLifecycle"], "spot")
        rc, _, err = self.finish(p, signal.SIGINT)
        self.assertEqual(rc, 130, err)

    def test_without_an_image_and_no_official_one_found_it_says_what_to_set(self):
        del self.env["EPHRUN_AWS_IMAGE"]
        r = self.ephrun("--yes", "deploy-fast", "provider=aws", "plan=t3.micro", "region=eu-west-1", "src=" + self.src)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("no official Debian 12 or Ubuntu 24.04 x86_64 image found in eu-west-1", r.stderr)
        self.assertIn("EPHRUN_AWS_IMAGE", r.stderr)
        self.assertNotIn("stack traceback", r.stderr)
        self.assertEqual(self.statuses("RunInstances"), [])
        owners = [c for c in self.a.state()["log"][self.first_call:] if c["action"] == "DescribeImages"]
        self.assertEqual(len(owners), 2, "Debian's owner, then Canonical's")

    # -- faults -------------------------------------------------------------------------------

    def test_sigint_while_the_instance_boots(self):
        self.a.config(pending_seconds=60)
        p = self.start("--yes", OPS, "mode=hang")
        deadline = time.monotonic() + 60
        while 200 not in self.statuses("RunInstances"):
            self.assertLess(time.monotonic(), deadline, "no RunInstances")
            time.sleep(0.05)
        rc, out, err = self.finish(p, signal.SIGINT)
        self.assertEqual(rc, 130, err)
        self.assertEqual(self.statuses("TerminateInstances"), [200])

    def test_sigkill_leaves_what_reap_removes(self):
        p = self.start("--yes", OPS, "mode=hang")
        iid = self.ready(p)
        p.kill()
        p.communicate()
        left = self.a.leftovers()
        self.assertEqual((left["instances"], len(left["key_pairs"]), len(left["security_groups"])), ([iid], 1, 1))
        r = self.ephrun("reap", "--yes", "providers=aws")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("destroyed aws " + iid, r.stdout)

    def test_reap_scans_the_regions_it_is_given(self):
        p = self.start("--yes", OPS, "mode=hang")   # launches in eu-west-1
        iid = self.ready(p)
        p.kill()
        p.communicate()
        self.env.update(AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
                        EPHRUN_AWS_REGIONS="us-east-1, eu-west-1")
        r = self.ephrun("reap", "--yes")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("destroyed aws " + iid, r.stdout)
        self.assertRegex(r.stdout, r"destroyed aws sg-\w+")
        self.assertIn("destroyed aws ephrun-run-", r.stdout)

    def test_a_throttling_storm_does_not_reach_the_recipe(self):
        self.a.fault("*", "RequestLimitExceeded", count=8)
        r = self.ephrun("--yes", OPS, "mode=ops", "count=2")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("OPS OK", r.stdout)
        self.assertGreaterEqual(sum(1 for c in self.a.state()["log"][self.first_call:] if c["status"] == 503), 8)
        self.assertEqual(self.statuses("RunInstances").count(200), 2)

    def test_parallel_waits_of_a_run_share_one_describe_per_interval(self):
        # Twelve instances pending for 2 s while their launches wait: one listing of the
        # run's instances per poll answers every wait, never one DescribeInstances each.
        self.a.config(pending_seconds=2)
        r = self.ephrun("--yes", OPS, "mode=fleet", "count=12")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("FLEET DESTROYED", r.stdout)
        log = self.a.state()["log"][self.first_call:]
        describes = [c for c in log if c["action"] == "DescribeInstances"]
        self.assertEqual([c["path"] for c in describes if "InstanceId" in c["path"]], [],
                         "a wait asked for its own instance")
        listings = [c for c in describes if "tag%3Aephrun-run" in c["path"]]
        self.assertGreater(len(listings), 1)
        # the board takes a listing at most every 0.25 s (EPHRUN_AWS_POLL), however many wait
        gaps = [b["t"] - a["t"] for a, b in zip(listings, listings[1:])]
        self.assertGreaterEqual(min(gaps), 0.2, gaps)

    def test_a_security_group_in_use_is_locked_until_its_instance_is_terminated(self):
        r = self.ephrun("--yes", OPS, "mode=in-use")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("IN USE: aws security group", r.stdout)
        self.assertIn("GROUP DELETED", r.stdout)
        self.assertEqual(self.statuses("DeleteSecurityGroup")[0], 400)

    def test_no_capacity_on_create_fails_cleanly(self):
        self.a.fault("RunInstances", "InsufficientInstanceCapacity", count=1,
                     message="We currently do not have sufficient t3.micro capacity.")
        r = self.ephrun("--yes", "deploy-fast", "provider=aws", "plan=t3.micro", "region=eu-west-1", "src=" + self.src)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("InsufficientInstanceCapacity", r.stderr)
        self.assertNotIn("Traceback", r.stderr)
        self.assertEqual(self.statuses("RunInstances"), [500])

    def test_a_500_on_create_is_sent_again_without_a_second_instance(self):
        self.a.fault("RunInstances", "InternalError", count=2)
        r = self.ephrun("--yes", OPS, "mode=ops", "count=1")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.statuses("RunInstances"), [500, 500, 200])

    def test_a_create_whose_reply_is_lost_is_found_by_its_tag_not_made_twice(self):
        self.a.fault("RunInstances", "InternalError", after=True)
        r = self.ephrun("--yes", OPS, "mode=ops", "count=1")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.statuses("RunInstances"), [500])
        self.assertIn("exists; using it", r.stderr)

    def test_sigint_while_the_create_is_in_flight_terminates_what_it_made(self):
        before = {i["id"] for i in self.a.state()["instances"]}
        self.a.fault("RunInstances", "InternalError", after=True, delay=8)
        p = self.start("--yes", OPS, "mode=hang")
        deadline = time.monotonic() + 60
        while not {i["id"] for i in self.a.state()["instances"]} - before:
            self.assertLess(time.monotonic(), deadline, "the create was not carried out")
            time.sleep(0.05)
        rc, _, err = self.finish(p, signal.SIGINT)
        self.assertEqual(rc, 130, err)
        # only the mid-create guard can have terminated it: the launch never returned
        self.assertEqual(self.statuses("TerminateInstances"), [200])
        # the late reply is logged when it leaves: wait for it, so no later test counts it
        deadline = time.monotonic() + 60
        while self.statuses("RunInstances") != [500]:
            self.assertLess(time.monotonic(), deadline, self.statuses("RunInstances"))
            time.sleep(0.1)

    def test_resize_puts_the_old_type_back_when_the_start_has_no_capacity(self):
        self.a.fault("StartInstances", "InsufficientInstanceCapacity", count=1)
        r = self.ephrun("--yes", OPS, "mode=resize", "to=t3.large")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("RESIZE failed capacity t3.micro running", r.stdout)

    def test_resize(self):
        r = self.ephrun("--yes", OPS, "mode=resize", "to=t3.small")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("RESIZE ok - t3.small running", r.stdout)

    def test_ssh_never_ready_destroys_everything(self):
        self.a.config(start_sshd=False)
        r = self.ephrun("--yes", "deploy-fast", "provider=aws", "plan=t3.micro", "region=eu-west-1", "src=" + self.src,
                        "ssh_deadline=3s")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("ssh", r.stderr)
        self.assertEqual(self.statuses("TerminateInstances"), [200])


if __name__ == "__main__":
    unittest.main(verbosity=2)
