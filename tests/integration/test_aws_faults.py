"""The AWS rows of the fault matrix, the EventBridge Scheduler timer, and `ephrun reap` of every
AWS resource across regions, against the AWS stand-in (tests/fakes/aws: moto behind a proxy).

The stand-in checks every request's SigV4 signature (botocore's signer, with the secret it was
given): ephrun signs with temporary credentials (a session token), the test's own checks (botocore,
the `aws` CLI) with other keys. The recipe (tests/integration/recipes/aws_faults.lua) prints
`FAULT-POINT <phase> <id>` when the run is in the phase; the test waits for that marker (or, in
the destroy phase, for the TerminateInstances call in the stand-in's log), never for a fixed time.

Cells: a failing step, SIGINT, SIGTERM and SIGKILL-then-`ephrun reap` while the instance boots,
after launch, while waiting for SSH, during the build and during the destroy. The throttling
storm, DependencyViolation, a capacity error on create and on the start of a resize, and SSH
never ready are rows of tests/integration/test_aws_provider.py (not repeated here).

After every test: no instance alive, no key pair, no security group, no EventBridge schedule, no
unfinished multipart upload in any bucket, and no credential (access key id, secret key, session
token) in any output of ephrun nor in any file under EPHRUN_HOME."""
import calendar
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from common import BIN, RECIPES, SRC, Output, env
from aws import ACCESS_KEY, REGION, SECRET_KEY, AwsStandin

RECIPE = os.path.join(RECIPES, "aws_faults.lua")
OPS = os.path.join(RECIPES, "aws_ops.lua")
ROLE = "arn:aws:iam::123456789012:role/ephrun-scheduler"
# What ephrun signs with: temporary credentials, so the session token is checked too.
TEMP_AK = "ASIAEPHRUNTESTTEMP01"
TEMP_SK = "tEmPsEcReT/ephrun+fault+matrix/0123456789"
TOKEN = "FwoGZXIvYXdzEPHRUN//////////session+token/for+the+fault+matrix=="
CREDENTIALS = {ACCESS_KEY: {"secret": SECRET_KEY}, TEMP_AK: {"secret": TEMP_SK, "token": TOKEN}}
NOTHING = {"instances": [], "key_pairs": [], "security_groups": [], "schedules": [], "multipart_uploads": []}
PHASES = ["boot", "launch", "ssh", "build", "destroy"]
FAULTS = ["fail", "SIGINT", "SIGTERM", "SIGKILL"]
ROW = {"boot": "while the instance boots", "launch": "after launch", "ssh": "waiting for SSH",
       "build": "during build", "destroy": "during destroy"}
NAMED = {"boot": "launch", "launch": "launch", "ssh": "ssh", "build": "build", "destroy": "destroy"}
CODE = {"fail": 1, "SIGINT": 130, "SIGTERM": 143, "SIGKILL": -9}
SIG = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
FAST = {"pending_seconds": 0.5, "stopping_seconds": 0.5, "shutting_down_seconds": 0.5, "start_sshd": True}
TIMEOUT = 120


class AwsFaults(unittest.TestCase):
    results = {}

    @classmethod
    def setUpClass(cls):
        cls.a = AwsStandin(credentials=CREDENTIALS, **FAST).__enter__()
        cls.image = cls.a.image_id()
        cls.t0 = time.monotonic()

    @classmethod
    def tearDownClass(cls):
        cls.a.__exit__(None, None, None)
        if cls.results:
            sys.stderr.write("\n" + render(cls.results, time.monotonic() - cls.t0) + "\n")

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-aws-faults-")
        self.home = os.path.join(self.tmp, "home")
        self.env = env(EPHRUN_HOME=self.home, EPHRUN_AWS_POLL="0.25", EPHRUN_AWS_IMAGE=self.image,
                       EPHRUN_AWS_SCHEDULER_ROLE=ROLE,
                       **self.a.env(AWS_ACCESS_KEY_ID=TEMP_AK, AWS_SECRET_ACCESS_KEY=TEMP_SK,
                                    AWS_SESSION_TOKEN=TOKEN))
        for k in ("AWS_PROFILE", "EPHRUN_AWS_REGIONS", "EPHRUN_AWS_SCHEDULER", "EPHRUN_LUA_DIR"):
            self.env.pop(k, None)
        self.outputs = []
        self.procs = []
        self.first_call = len(self.a.calls())

    def tearDown(self):
        try:
            for p in self.procs:
                if p.poll() is None:   # a test failed before its signal: end the run, which cleans up
                    p.send_signal(signal.SIGINT)
                    p.wait(timeout=TIMEOUT)
            self.a.clear_faults()
            self.a.config(**FAST)
            for text in self.outputs + self.home_files():
                for secret in (TEMP_AK, TEMP_SK, TOKEN, SECRET_KEY):
                    self.assertNotIn(secret, text, "a credential leaked")
            left = self.leftovers()
            if left != NOTHING:
                self.remove(left)   # so that one failure does not fail the tests after it
            self.assertEqual(left, NOTHING, "left in the stand-in")
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- helpers ------------------------------------------------------------------------------

    def home_files(self):
        out = []
        for root, _, files in os.walk(self.home):
            for name in files:
                try:
                    with open(os.path.join(root, name), "rb") as f:
                        out.append(f.read().decode("latin-1"))
                except OSError:
                    pass
        return out

    def leftovers(self, regions=(REGION, "us-east-1")):
        left = {"instances": [], "key_pairs": [], "security_groups": []}
        for region in regions:
            ec2 = self.a.client("ec2", region)
            res = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": [
                "pending", "running", "shutting-down", "stopping", "stopped"]}])
            left["instances"] += [(region, i["InstanceId"]) for r in res["Reservations"] for i in r["Instances"]]
            left["key_pairs"] += [(region, k["KeyName"]) for k in ec2.describe_key_pairs()["KeyPairs"]
                                  if k["KeyName"].startswith("ephrun-")]
            left["security_groups"] += [(region, g["GroupId"]) for g in ec2.describe_security_groups()["SecurityGroups"]
                                        if g["GroupName"].startswith("ephrun-")]
        left["schedules"] = sorted(self.a.schedules(regions))
        left["multipart_uploads"] = [u for region in regions for u in self.a.multipart_uploads(region)]
        return left

    def cli_leftovers(self, regions=(REGION, "us-east-1")):
        """The same, as the official `aws` CLI sees it."""
        left = {"instances": [], "key_pairs": [], "security_groups": [], "schedules": []}
        for region in regions:
            r = ["--region", region]
            res = self.a.aws_cli("ec2", "describe-instances", *r, "--filters",
                                 "Name=instance-state-name,Values=pending,running,shutting-down,stopping,stopped")[1]
            left["instances"] += [i["InstanceId"] for x in res["Reservations"] for i in x["Instances"]]
            left["key_pairs"] += [k["KeyName"] for k in self.a.aws_cli("ec2", "describe-key-pairs", *r)[1]["KeyPairs"]
                                  if k["KeyName"].startswith("ephrun-")]
            left["security_groups"] += [g["GroupName"] for g in self.a.aws_cli(
                "ec2", "describe-security-groups", *r)[1]["SecurityGroups"] if g["GroupName"].startswith("ephrun-")]
            left["schedules"] += [s["Name"] for s in self.a.aws_cli(
                "scheduler", "list-schedules", *r, "--name-prefix", "ephrun-")[1]["Schedules"]]
        return left

    def remove(self, left):
        for region, iid in left["instances"]:
            self.a.client("ec2", region).terminate_instances(InstanceIds=[iid])
            self.a.wait_state(iid, "terminated")
        for region, gid in left["security_groups"]:
            self.a.client("ec2", region).delete_security_group(GroupId=gid)
        for region, name in left["key_pairs"]:
            self.a.client("ec2", region).delete_key_pair(KeyName=name)
        for name in left["schedules"]:
            for region in (REGION, "us-east-1"):
                try:
                    self.a.client("scheduler", region).delete_schedule(Name=name)
                except Exception:
                    pass

    @staticmethod
    def confirmed(args):
        """A recipe run launches paid instances: without a terminal it needs --yes."""
        return ["--yes", *args] if args and args[0].endswith(".lua") else list(args)

    def ephrun(self, *args, timeout=TIMEOUT, **extra_env):
        e = dict(self.env)
        e.update(extra_env)
        r = subprocess.run([BIN, *self.confirmed(args)], capture_output=True, text=True, timeout=timeout, env=e, cwd=self.tmp,
                           stdin=subprocess.DEVNULL)
        self.outputs += [r.stdout, r.stderr]
        return r

    def start(self, *args):
        p = subprocess.Popen([BIN, *self.confirmed(args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=self.env, cwd=self.tmp, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p, Output(p.stdout, timeout=TIMEOUT)

    def finish(self, p, out):
        try:
            p.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            self.fail("ephrun did not exit within %ds:\n%s" % (TIMEOUT, out.text()))
        out.thread.join(10)
        self.outputs.append(out.text())
        return out.text()

    def calls(self, action, status=None):
        return [c for c in self.a.state()["log"][self.first_call:]
                if c["action"] == action and (status is None or c["status"] == status)]

    def wait_for(self, what, cond, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            v = cond()
            if v:
                return v
            self.assertLess(time.monotonic(), deadline, "never: " + what)
            time.sleep(0.05)

    def image_in(self, region):
        """An AMI moto has in `region` (with a root device), for launches there."""
        images = self.a.client("ec2", region).describe_images(Filters=[
            {"Name": "architecture", "Values": ["x86_64"]}, {"Name": "root-device-type", "Values": ["ebs"]}])["Images"]
        return sorted(i["ImageId"] for i in images if i.get("RootDeviceName"))[0]

    def reap(self, *args):
        r = self.ephrun("reap", "--yes", *args)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r

    # -- the matrix ---------------------------------------------------------------------------

    def cell(self, phase, fault):
        if phase == "boot":
            self.a.config(pending_seconds=600)
        if phase == "ssh":
            self.a.config(start_sshd=False)
        if phase == "destroy":
            self.a.config(shutting_down_seconds=600)
        mode = "fail" if fault == "fail" else "hold"
        p, out = self.start(RECIPE, "fault_at=" + phase, "fault=" + mode)
        t = time.monotonic()
        if fault != "fail":
            iid = out.wait("FAULT-POINT %s " % phase).split()[2]
            if phase == "destroy":
                self.wait_for("TerminateInstances", lambda: self.calls("TerminateInstances", 200))
            t = time.monotonic()
            p.send_signal(SIG[fault])
            # What held the run at its point can end now: the stand-in's timings apply at once.
            self.a.config(**FAST)
        text = self.finish(p, out)
        elapsed = time.monotonic() - t
        self.assertEqual(p.returncode, CODE[fault], text)
        self.assertEqual(len(self.calls("RunInstances", 200)), 1, "one instance per run")
        if fault == "fail":
            want = "error in phase '%s'" % NAMED[phase]
        elif fault != "SIGKILL":
            want = "interrupted by %s in phase '%s'" % (fault, NAMED[phase])
        if fault != "SIGKILL":
            self.assertIn(want, text)
            self.assertNotIn("stack traceback", text)
            self.assertEqual(self.leftovers(), NOTHING, text)
            self.assertEqual(len(self.calls("TerminateInstances", 200)) >= 1, True)
            result = "exit %d, `%s`; all removed in %.1fs" % (p.returncode, want, elapsed)
        else:
            left = self.leftovers()
            self.assertEqual(len(left["key_pairs"]) + len(left["security_groups"]), 2, left)
            if phase != "destroy":
                self.assertEqual(len(left["instances"]) + len(left["schedules"]), 2, left)
            r = self.reap()
            self.assertEqual(self.cli_leftovers(), {"instances": [], "key_pairs": [], "security_groups": [],
                                                    "schedules": []}, r.stdout + r.stderr)
            result = "left %s; `reap` removed all" % ", ".join(
                "%d %s" % (len(v), k.replace("_", " ").rstrip("s")) for k, v in left.items() if v)
        AwsFaults.results[(phase, fault)] = result

    # -- the EventBridge Scheduler timer ------------------------------------------------------

    def test_schedule_terminates_at_expiry_plus_grace_and_destroy_deletes_it(self):
        p, out = self.start(RECIPE, "fault_at=launch", "fault=hold", "ttl=20m")
        iid = out.wait("FAULT-POINT launch ").split()[2]
        [(name, sc)] = self.a.schedules().items()
        tags = {t["Key"]: t["Value"] for t in self.a.ec2().describe_instances(
            InstanceIds=[iid])["Reservations"][0]["Instances"][0]["Tags"]}
        self.assertEqual(name, "ephrun-%s-%s" % (tags["ephrun-run"], iid))
        expires = calendar.timegm(time.strptime(tags["ephrun-expires"], "%Y-%m-%dT%H:%M:%SZ"))
        self.assertEqual(sc["ScheduleExpression"],
                         "at(%s)" % time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(expires + 600)))
        self.assertEqual(sc["ScheduleExpressionTimezone"], "UTC")
        self.assertEqual(sc["FlexibleTimeWindow"], {"Mode": "OFF"})
        self.assertEqual(sc["ActionAfterCompletion"], "DELETE")
        self.assertEqual(sc["Target"]["Arn"], "arn:aws:scheduler:::aws-sdk:ec2:terminateInstances")
        self.assertEqual(sc["Target"]["RoleArn"], ROLE)
        self.assertEqual(json.loads(sc["Target"]["Input"]), {"InstanceIds": [iid]})
        p.send_signal(signal.SIGINT)
        self.finish(p, out)
        self.assertEqual(p.returncode, 130)
        self.assertEqual(self.a.schedules(), {})
        self.assertEqual([c["status"] for c in self.a.state()["log"][self.first_call:]
                          if c["action"] == "DELETE /schedules/" + name][:1], [200])

    def test_a_kept_instance_keeps_its_timer_until_it_is_destroyed(self):
        r = self.ephrun(RECIPE, "keep=true")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        left = self.leftovers()
        # the group stays with its kept instance (its deletion used to retry DependencyViolation for 5 minutes)
        self.assertEqual((len(left["instances"]), len(left["schedules"]), len(left["security_groups"])), (1, 1, 1),
                         left)
        [name] = left["schedules"]
        self.assertTrue(name.endswith("-" + left["instances"][0][1]), name)
        r = self.reap("kept=true")
        self.assertIn("destroyed aws " + left["instances"][0][1], r.stdout)

    def test_a_sigkilled_launchers_hung_instance_is_ended_by_the_schedule(self):
        # minute_seconds: the guest's own `shutdown -h +N` never comes (a hung guest)
        self.a.config(minute_seconds=1e6)
        p, out = self.start(RECIPE, "fault_at=launch", "fault=hold", "ttl=20m")
        iid = out.wait("FAULT-POINT launch ").split()[2]
        p.kill()
        self.finish(p, out)
        [sc] = self.a.schedules().values()
        due = calendar.timegm(time.strptime(sc["ScheduleExpression"], "at(%Y-%m-%dT%H:%M:%S)"))
        self.assertEqual(self.a.fire_schedules(due - 1), [], "fired before it was due")
        self.assertEqual(self.a.instance(iid)["state"], "running")
        [fired] = self.a.fire_schedules(due)
        self.assertEqual(fired["instances"], {iid: "terminated"})
        self.a.wait_state(iid, "terminated")
        self.assertEqual(self.a.schedules(), {}, "ActionAfterCompletion=DELETE")
        # what the instance does not take with it: the run's key pair and group
        left = self.leftovers()
        self.assertEqual((left["instances"], len(left["key_pairs"]), len(left["security_groups"])), ([], 1, 1))
        self.reap()

    def test_a_throttled_scheduler_still_arms_the_timers(self):
        self.a.fault("*", "ThrottlingException", count=6, status=429, service="scheduler", message="Rate exceeded")
        r = self.ephrun(OPS, "mode=ops", "count=3")   # three launches in parallel
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        log = [c for c in self.a.state()["log"][self.first_call:] if c["service"] == "scheduler"]
        self.assertEqual(sum(1 for c in log if c["status"] == 429), 6, log)
        created = [c for c in log if c["action"].startswith("POST /schedules/ephrun-") and c["status"] == 200]
        deleted = [c for c in log if c["action"].startswith("DELETE /schedules/ephrun-") and c["status"] == 200]
        self.assertEqual((len(created), len(deleted)), (3, 3), log)
        probes = [c for c in log if "MaxResults=1&" in c["path"]]
        self.assertEqual(len(probes), 1, "the launches share one reachability read: %r" % probes)

    def test_without_a_reachable_scheduler_auto_says_so_and_launches(self):
        self.env["AWS_ENDPOINT_URL_SCHEDULER"] = "http://127.0.0.1:1"   # nothing listens there
        r = self.ephrun("--dry-run", "deploy-fast", "provider=aws", "plan=t3.micro", "region=" + REGION,
                        "src=" + SRC + "/examples/hello")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("no second timer: EventBridge Scheduler does not answer in eu-west-1", r.stdout)
        r = self.ephrun(OPS, "mode=ops", "count=1")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("no EventBridge Scheduler timer: EventBridge Scheduler does not answer", r.stderr)

    def test_without_a_role_auto_says_so(self):
        del self.env["EPHRUN_AWS_SCHEDULER_ROLE"]
        r = self.ephrun("--dry-run", "deploy-fast", "provider=aws", "plan=t3.micro", "region=" + REGION,
                        "src=" + SRC + "/examples/hello")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("no second timer: no scheduler_role (EPHRUN_AWS_SCHEDULER_ROLE) is set", r.stdout)
        self.assertEqual(self.calls("GET /schedules"), [])

    def test_scheduler_true_that_cannot_be_kept_fails_before_anything_is_made(self):
        self.env.update(EPHRUN_AWS_SCHEDULER="true", AWS_ENDPOINT_URL_SCHEDULER="http://127.0.0.1:1")
        for dry in (["--dry-run"], []):
            r = self.ephrun(*dry, RECIPE)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("scheduler=true but EventBridge Scheduler does not answer in eu-west-1", r.stderr)
            self.assertIn("or set scheduler=auto", r.stderr)
            self.assertNotIn("stack traceback", r.stderr)
        self.assertEqual(self.calls("RunInstances"), [])

    def test_the_standin_refuses_schedules_aws_refuses(self):
        sch = self.a.client("scheduler")
        base = dict(Name="ephrun-bad", ScheduleExpression="at(2030-01-01T00:00:00)", FlexibleTimeWindow={"Mode": "OFF"},
                    Target={"Arn": "arn:aws:scheduler:::aws-sdk:ec2:terminateInstances", "RoleArn": ROLE,
                            "Input": '{"InstanceIds": ["i-0123456789abcdef0"]}'})
        for change in ({"Target": dict(base["Target"], RoleArn="ephrun-scheduler")}, {"ScheduleExpression": "at(tomorrow)"},
                       {"Target": dict(base["Target"], Input='{"InstanceId": "i-1"}')}):
            with self.assertRaises(sch.exceptions.ValidationException):
                sch.create_schedule(**dict(base, **change))
        self.assertEqual(self.a.schedules(), {})

    # -- reap ---------------------------------------------------------------------------------

    def test_reap_finds_what_a_run_killed_mid_create_left_in_another_region(self):
        # The create's reply is held back: the run dies knowing no instance id (the journal
        # has an intent only), after making its key pair and group in us-east-1.
        self.a.fault("RunInstances", "InternalError", after=True, delay=15)
        p, out = self.start(RECIPE, "fault_at=launch", "fault=hold", "region=us-east-1",
                            "image=" + self.image_in("us-east-1"))
        self.wait_for("the create is carried out", lambda: [i for i in self.a.state()["instances"]
                                                             if i["state"] != "terminated"])
        p.kill()
        self.finish(p, out)
        before = self.cli_leftovers(regions=("us-east-1",))
        self.assertEqual((len(before["instances"]), len(before["key_pairs"]), len(before["security_groups"])),
                         (1, 1, 1), before)
        r = self.reap()   # AWS_REGION is eu-west-1, and the journal names no region
        self.assertNotIn("destroyed aws", r.stdout)
        self.assertEqual(self.cli_leftovers(regions=("us-east-1",)), before)
        r = self.reap("regions=us-east-1")
        self.assertIn("destroyed aws " + before["instances"][0], r.stdout)
        self.assertEqual(self.cli_leftovers(), {"instances": [], "key_pairs": [], "security_groups": [],
                                                "schedules": []})
        # the late reply goes out once its delay is over: wait for it, so no later test counts it
        self.wait_for("the late RunInstances reply", lambda: self.calls("RunInstances"), timeout=120)

    def test_reap_scans_the_regions_its_journal_names(self):
        ids = []
        for region in ("us-east-1", REGION):
            p, out = self.start(RECIPE, "fault_at=launch", "fault=hold", "region=" + region,
                                "image=" + self.image_in(region))
            ids.append(out.wait("FAULT-POINT launch ").split()[2])
            p.kill()
            self.finish(p, out)
        self.assertEqual(len(self.cli_leftovers()["schedules"]), 2)
        r = self.reap()
        for iid in ids:
            self.assertIn("destroyed aws " + iid, r.stdout)
        self.assertEqual(r.stdout.count("destroyed aws ephrun-"), 2 + 2, r.stdout)   # key pairs, schedules

    def test_what_reap_cannot_delete_is_printed_with_the_command_that_does(self):
        p, out = self.start(RECIPE, "fault_at=launch", "fault=hold")
        out.wait("FAULT-POINT launch ")
        p.kill()
        self.finish(p, out)
        [name] = self.a.schedules()
        self.a.fault("DeleteKeyPair", "UnauthorizedOperation", count=100,
                     message="You are not authorized to perform this operation.")
        self.a.fault("DELETE /schedules/" + name, "AccessDeniedException", count=100, status=403,
                     service="scheduler", message="not authorized to perform: scheduler:DeleteSchedule")
        r = self.ephrun("reap", "--yes")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertNotIn("stack traceback", r.stderr)
        cmds = [line.split("remove it by hand: ", 1)[1] for line in r.stderr.splitlines() if "remove it by hand: " in line]
        self.assertEqual(len(cmds), 2, r.stderr)
        self.assertTrue(any(c.startswith("aws ec2 delete-key-pair ") for c in cmds), cmds)
        self.assertTrue(any(c.startswith("aws scheduler delete-schedule ") for c in cmds), cmds)
        self.a.clear_faults()
        e = dict(os.environ)
        e.update(self.a.env())
        e.pop("AWS_PROFILE", None)
        for c in cmds:   # the printed commands work as they are
            done = subprocess.run(c, shell=True, capture_output=True, text=True, env=e, timeout=120)
            self.assertEqual(done.returncode, 0, c + "\n" + done.stderr)
        self.assertEqual(self.leftovers(), NOTHING)

    # -- wrong credentials --------------------------------------------------------------------

    def test_a_wrong_secret_key_is_an_auth_error_naming_what_to_fix(self):
        r = self.ephrun(RECIPE, AWS_SECRET_ACCESS_KEY=TEMP_SK[:-1] + "X")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("AuthFailure", r.stderr)
        self.assertIn("AWS_SECRET_ACCESS_KEY", r.stderr)
        self.assertNotIn("stack traceback", r.stderr)
        self.assertNotIn(TEMP_SK[:-1], r.stdout + r.stderr)
        self.assertEqual(self.calls("RunInstances"), [])

    def test_an_expired_session_token_is_an_auth_error_naming_what_to_fix(self):
        self.a.config(credentials=dict(CREDENTIALS, **{TEMP_AK: dict(CREDENTIALS[TEMP_AK], expired=True)}))
        r = self.ephrun(RECIPE)
        self.a.config(credentials=CREDENTIALS)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("RequestExpired", r.stderr)
        self.assertIn("AWS_SESSION_TOKEN", r.stderr)
        self.assertNotIn("stack traceback", r.stderr)
        self.assertEqual(self.calls("RunInstances"), [])

    def test_a_missing_permission_is_told_apart_from_wrong_keys(self):
        self.a.fault("RunInstances", "UnauthorizedOperation", status=403,
                     message="You are not authorized to perform this operation.")
        r = self.ephrun(RECIPE)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("the credentials from the environment are valid but not allowed to call ec2:RunInstances", r.stderr)
        self.assertNotIn("stack traceback", r.stderr)

    def test_the_standin_checks_signatures(self):
        wrong = dict(self.a.env(), AWS_SECRET_ACCESS_KEY=SECRET_KEY + "x")
        rc, _, err = self.a.aws_cli("ec2", "describe-instances", check=False, env=wrong)
        self.assertNotEqual(rc, 0)
        self.assertIn("AuthFailure", err)
        rc, _, err = self.a.aws_cli("scheduler", "list-schedules", check=False, env=wrong)
        self.assertIn("InvalidSignatureException", err)
        rc, _, err = self.a.aws_cli("ec2", "describe-instances", check=False,
                                    env=dict(self.a.env(), AWS_ACCESS_KEY_ID="AKIAUNKNOWNUNKNOWN00"))
        self.assertIn("AuthFailure", err)
        self.a.aws_cli("ec2", "describe-instances")   # the right key passes


def make(phase, fault):
    def test(self):
        self.cell(phase, fault)
    test.__doc__ = "%s %s" % (fault, ROW[phase])
    return test


for _i, _phase in enumerate(PHASES):
    for _j, _fault in enumerate(FAULTS):
        if (_phase, _fault) != ("destroy", "fail"):
            setattr(AwsFaults, "test_matrix_%d%d_%s_%s" % (_i, _j, _phase, _fault), make(_phase, _fault))


def render(results, seconds):
    rows = ["| phase \\ fault | " + " | ".join(FAULTS) + " |", "|---" * (len(FAULTS) + 1) + "|"]
    for phase in PHASES:
        cells = [results.get((phase, f), "n/a" if (phase, f) == ("destroy", "fail") else "**not run / FAILED**")
                 for f in FAULTS]
        rows.append("| %s | %s |" % (ROW[phase], " | ".join(cells)))
    rows.append("")
    rows.append("%d of %d cells passed in %.0fs." % (len(results), len(PHASES) * len(FAULTS) - 1, seconds))
    return "\n".join(rows)


if __name__ == "__main__":
    unittest.main(verbosity=2)
