"""The AWS stand-in (tests/fakes/aws/standin.py) speaks what AWS's own client speaks:
driven here with the official `aws` CLI, plus SSH into its instances and their
IMDSv2 endpoint, and reading back with the CLI what ephrun made."""
import json
import os
import subprocess
import tempfile
import time
import unittest

from common import BIN, RECIPES, env
from aws import AwsStandin


def keygen(path, comment):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path], check=True)
    with open(path) as f:
        private = f.read()
    with open(path + ".pub") as f:
        public = f.read().strip()
    return private, public


def cloud_config(host_private, host_public, authorized, runcmd=()):
    lines = ["#cloud-config", "ssh_keys:", "  ed25519_private: |"]
    lines += ["    " + line for line in host_private.strip().splitlines()]
    lines += ['  ed25519_public: "%s"' % host_public, "ssh_authorized_keys:", '  - "%s"' % authorized]
    if runcmd:
        lines.append("runcmd:")
        lines += ['  - [sh, -c, "%s"]' % c for c in runcmd]
    return "\n".join(lines) + "\n"


def wait_for(what, fn, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("%s: not within %ss" % (what, timeout))
        time.sleep(0.05)


class StandinWithTheCli(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = AwsStandin(pending_seconds=0.5, stopping_seconds=0.5, shutting_down_seconds=0.5,
                           minute_seconds=0.5).__enter__()
        cls.tmp = tempfile.mkdtemp(prefix="ephrun-aws-cli-")
        cls.client_key = os.path.join(cls.tmp, "id_ed25519")
        _, cls.client_pub = keygen(cls.client_key, "client")
        cls.n = 0

    @classmethod
    def tearDownClass(cls):
        cls.a.__exit__(None, None, None)

    def cli(self, *args, **kw):
        return self.a.aws_cli(*args, **kw)[1]

    def launch(self, *extra, runcmd=()):
        """run-instances with cloud-config user-data; returns (instance, host public key)."""
        StandinWithTheCli.n += 1
        hk = os.path.join(self.tmp, "host%d" % self.n)
        priv, pub = keygen(hk, "host")
        ud = os.path.join(self.tmp, "ud%d" % self.n)
        with open(ud, "w") as f:
            f.write(cloud_config(priv, pub, self.client_pub, runcmd))
        out = self.cli("ec2", "run-instances", "--image-id", "ami-12345678", "--instance-type", "t3.micro",
                       "--count", "1", "--user-data", "file://" + ud, *extra)
        return out["Instances"][0], pub

    def describe(self, iid):
        out = self.cli("ec2", "describe-instances", "--instance-ids", iid)
        return out["Reservations"][0]["Instances"][0]

    def state(self, iid):
        return self.describe(iid)["State"]["Name"]

    def ssh(self, ip, host_pub, command, check=True):
        kh = os.path.join(self.tmp, "known_hosts")
        with open(kh, "w") as f:
            f.write("[%s]:%d %s\n" % (ip, self.a.ssh_port, " ".join(host_pub.split()[:2])))
        r = subprocess.run(["ssh", "-i", self.client_key, "-p", str(self.a.ssh_port), "-o", "BatchMode=yes",
                            "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + kh,
                            "-o", "ConnectTimeout=5", "%s@%s" % (self.a.login_user, ip), command],
                           capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError("ssh %s %r failed (%d): %s" % (ip, command, r.returncode, r.stderr))
        return r

    def wait_ssh(self, ip, host_pub):
        return wait_for("ssh to " + ip, lambda: self.ssh(ip, host_pub, "true", check=False).returncode == 0)

    # -- the tests
    def test_run_instances_boots_a_real_sshd_with_the_user_data_keys(self):
        inst, pub = self.launch()
        iid = inst["InstanceId"]
        self.assertEqual(inst["State"]["Name"], "pending")
        ip = inst["PublicIpAddress"]
        self.assertRegex(ip, r"^127\.0\.\d+\.\d+$")
        wait_for("running", lambda: self.state(iid) == "running")
        self.assertEqual(self.describe(iid)["PublicIpAddress"], ip)
        self.wait_ssh(ip, pub)
        r = self.ssh(ip, pub, "echo hello; echo $AWS_EC2_METADATA_SERVICE_ENDPOINT")
        self.assertEqual(r.stdout.splitlines(), ["hello", "http://%s:%d/" % (ip, self.a.imds_port)])
        # A host key other than the user-data's is refused: the pin is real.
        _, other = keygen(os.path.join(self.tmp, "other%d" % self.n), "other")
        self.assertNotEqual(self.ssh(ip, other, "true", check=False).returncode, 0)
        self.cli("ec2", "terminate-instances", "--instance-ids", iid)
        wait_for("terminated", lambda: self.state(iid) == "terminated")
        self.assertNotEqual(self.ssh(ip, pub, "true", check=False).returncode, 0)

    def test_security_group_in_use_is_a_dependency_violation_until_terminated(self):
        g = self.cli("ec2", "create-security-group", "--group-name", "ephrun-tmp", "--description", "tmp")
        inst, _ = self.launch("--security-group-ids", g["GroupId"])
        iid = inst["InstanceId"]
        rc, _, err = self.a.aws_cli("ec2", "delete-security-group", "--group-id", g["GroupId"], check=False)
        self.assertNotEqual(rc, 0)
        self.assertIn("DependencyViolation", err)
        self.a.config(shutting_down_seconds=600)   # held in shutting-down until released below
        try:
            out = self.cli("ec2", "terminate-instances", "--instance-ids", iid)
            self.assertEqual(out["TerminatingInstances"][0]["CurrentState"]["Name"], "shutting-down")
            rc, _, err = self.a.aws_cli("ec2", "delete-security-group", "--group-id", g["GroupId"], check=False)
            self.assertIn("DependencyViolation", err, "still shutting down")
        finally:
            self.a.config(shutting_down_seconds=0.5)
        wait_for("terminated", lambda: self.state(iid) == "terminated")
        self.cli("ec2", "delete-security-group", "--group-id", g["GroupId"])

    def test_stop_and_start_take_time_and_a_resize_needs_stopped(self):
        inst, pub = self.launch()
        iid, ip = inst["InstanceId"], inst["PublicIpAddress"]
        wait_for("running", lambda: self.state(iid) == "running")
        rc, _, err = self.a.aws_cli("ec2", "modify-instance-attribute", "--instance-id", iid,
                                    "--instance-type", "Value=t3.large", check=False)
        self.assertIn("IncorrectInstanceState", err)
        self.a.config(stopping_seconds=600)   # held in stopping until released below
        try:
            out = self.cli("ec2", "stop-instances", "--instance-ids", iid)
            self.assertEqual(out["StoppingInstances"][0]["CurrentState"]["Name"], "stopping")
            self.assertNotEqual(self.ssh(ip, pub, "true", check=False).returncode, 0, "sshd is down while stopping")
            rc, _, err = self.a.aws_cli("ec2", "start-instances", "--instance-ids", iid, check=False)
            self.assertIn("IncorrectInstanceState", err)
        finally:
            self.a.config(stopping_seconds=0.5)
        wait_for("stopped", lambda: self.state(iid) == "stopped")
        self.cli("ec2", "modify-instance-attribute", "--instance-id", iid, "--instance-type", "Value=t3.large")
        self.assertEqual(self.describe(iid)["InstanceType"], "t3.large")
        out = self.cli("ec2", "start-instances", "--instance-ids", iid)
        self.assertEqual(out["StartingInstances"][0]["CurrentState"]["Name"], "pending")
        wait_for("running", lambda: self.state(iid) == "running")
        self.wait_ssh(ip, pub)
        self.cli("ec2", "terminate-instances", "--instance-ids", iid)

    def test_injected_throttling_and_capacity_errors(self):
        before = len(self.a.calls("DescribeRegions"))
        self.a.fault("DescribeRegions", "RequestLimitExceeded", count=2)
        self.cli("ec2", "describe-regions")   # the CLI's own retries get through a short storm
        self.assertEqual(len(self.a.calls("DescribeRegions")) - before, 3)
        statuses = [c["status"] for c in self.a.calls("DescribeRegions")[-3:]]
        self.assertEqual(statuses, [503, 503, 200])
        self.a.fault("RunInstances", "InsufficientInstanceCapacity", count=10,
                     message="We currently do not have sufficient c5n.metal capacity.")
        rc, _, err = self.a.aws_cli("ec2", "run-instances", "--image-id", "ami-1", "--count", "1", check=False)
        self.a.clear_faults()
        self.assertNotEqual(rc, 0)
        self.assertIn("InsufficientInstanceCapacity", err)
        self.assertIn("sufficient c5n.metal capacity", err)

    def test_a_rate_limit_throttles_like_ec2(self):
        import botocore.session
        from botocore.config import Config
        from aws import ACCESS_KEY, REGION, SECRET_KEY
        once = botocore.session.get_session().create_client(
            "ec2", region_name=REGION, endpoint_url=self.a.url, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, config=Config(retries={"total_max_attempts": 1}))
        before = self.a.state()["throttled"]
        self.a.config(rate_limit=3)
        try:
            refused = None
            for _ in range(200):   # 3 a second get through: a burst soon meets the limit
                try:
                    once.describe_regions()
                except once.exceptions.ClientError as e:
                    refused = e.response
                    break
        finally:
            self.a.config(rate_limit=0)
        self.assertIsNotNone(refused, "never throttled")
        self.assertEqual(refused["Error"]["Code"], "RequestLimitExceeded")
        self.assertEqual(refused["ResponseMetadata"]["HTTPStatusCode"], 503)
        self.assertEqual(self.a.state()["throttled"] - before, 1)
        self.cli("ec2", "describe-regions")   # the limit is off again

    def test_a_shutdown_inside_follows_the_shutdown_behaviour(self):
        term, tpub = self.launch("--instance-initiated-shutdown-behavior", "terminate")
        stop, spub = self.launch()
        for inst, pub in ((term, tpub), (stop, spub)):
            self.wait_ssh(inst["PublicIpAddress"], pub)
            r = self.ssh(inst["PublicIpAddress"], pub, "command -v shutdown")
            self.assertRegex(r.stdout.strip(), r"/bin/shutdown$")
            # The session may be cut as the machine goes down: its exit status is not checked.
            self.ssh(inst["PublicIpAddress"], pub, "shutdown -P now", check=False)
        wait_for("terminated", lambda: self.state(term["InstanceId"]) == "terminated")
        wait_for("stopped", lambda: self.state(stop["InstanceId"]) == "stopped")
        for inst in (term, stop):
            reason = self.describe(inst["InstanceId"])["StateReason"]
            self.assertEqual(reason["Code"], "Client.InstanceInitiatedShutdown")
        self.cli("ec2", "terminate-instances", "--instance-ids", stop["InstanceId"])

    def test_a_lifetime_timer_in_the_user_data_terminates_the_instance(self):
        inst, _ = self.launch("--instance-initiated-shutdown-behavior", "terminate",
                              runcmd=["shutdown -P +2 lifetime"])
        iid = inst["InstanceId"]
        wait_for("terminated", lambda: self.state(iid) == "terminated")
        self.assertEqual(self.describe(iid)["StateReason"]["Code"], "Client.InstanceInitiatedShutdown")
        h = self.a.instance(iid)["history"]
        self.assertEqual([x["state"] for x in h], ["pending", "running", "shutting-down", "terminated"])
        # +2 minutes of 0.5 s each after boot: not before.
        self.assertGreaterEqual(h[2]["at"] - h[1]["at"], 1.0)

    def test_spot_interruption_notice_on_imdsv2_then_termination(self):
        inst, pub = self.launch("--instance-market-options", "MarketType=spot")
        iid, ip = inst["InstanceId"], inst["PublicIpAddress"]
        self.wait_ssh(ip, pub)
        self.assertEqual(self.describe(iid)["InstanceLifecycle"], "spot")
        probe = ('t=$(curl -sf -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" '
                 '"${AWS_EC2_METADATA_SERVICE_ENDPOINT}latest/api/token") && '
                 'curl -s -w " %{http_code}" -H "X-aws-ec2-metadata-token: $t" '
                 '"${AWS_EC2_METADATA_SERVICE_ENDPOINT}latest/meta-data/spot/instance-action"')
        self.assertTrue(self.ssh(ip, pub, probe).stdout.endswith(" 404"))
        no_token = self.ssh(ip, pub, 'curl -s -o /dev/null -w "%{http_code}" '
                                     '"${AWS_EC2_METADATA_SERVICE_ENDPOINT}latest/meta-data/instance-id"')
        self.assertEqual(no_token.stdout, "401")
        self.a.interrupt(iid, seconds=600)   # the notice is up at once; the end comes with the clock below
        out = self.ssh(ip, pub, probe).stdout
        doc, code = out.rsplit(" ", 1)
        self.assertEqual(code, "200")
        notice = json.loads(doc)
        self.assertEqual(notice["action"], "terminate")
        self.assertRegex(notice["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        self.assertEqual(self.state(iid), "running", "a notice first, the interruption later")
        self.a.advance(600)
        wait_for("terminated", lambda: self.state(iid) == "terminated")
        reason = self.describe(iid)["StateReason"]
        self.assertEqual(reason["Code"], "Server.SpotInstanceTermination")

    def test_s3_through_the_proxy(self):
        self.cli("s3api", "create-bucket", "--bucket", "ephrun-artifacts",
                 "--create-bucket-configuration", "LocationConstraint=eu-west-1")
        body = os.path.join(self.tmp, "artifact.txt")
        with open(body, "w") as f:
            f.write("built\n")
        self.cli("s3api", "put-object", "--bucket", "ephrun-artifacts", "--key", "b/1.txt", "--body", body)
        out = self.cli("s3api", "list-objects-v2", "--bucket", "ephrun-artifacts")
        self.assertEqual([o["Key"] for o in out["Contents"]], ["b/1.txt"])

    def test_the_cli_reads_back_what_ephrun_made(self):
        e = env(**self.a.env())
        e.pop("AWS_PROFILE", None)
        r = subprocess.run([BIN, os.path.join(RECIPES, "aws_standin_launch.lua"), "tag=cli-readback"],
                           capture_output=True, text=True, timeout=120, env=e, cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        iid = r.stdout.strip().splitlines()[-1]
        out = self.cli("ec2", "describe-instances", "--filters", "Name=tag:ephrun-run,Values=cli-readback")
        insts = [i for res in out["Reservations"] for i in res["Instances"]]
        self.assertEqual([i["InstanceId"] for i in insts], [iid])
        tags = {t["Key"]: t["Value"] for t in insts[0]["Tags"]}
        self.assertEqual(tags, {"ephrun-run": "cli-readback", "Purpose": "stand-in test"})
        self.assertEqual(insts[0]["InstanceType"], "c7i.large")
        self.assertEqual(insts[0]["InstanceLifecycle"], "spot")
        attr = self.cli("ec2", "describe-instance-attribute", "--instance-id", iid,
                        "--attribute", "instanceInitiatedShutdownBehavior")
        self.assertEqual(attr["InstanceInitiatedShutdownBehavior"]["Value"], "terminate")
        self.cli("ec2", "terminate-instances", "--instance-ids", iid)

    def test_ephrun_launches_sshes_in_pinned_and_the_guest_ends_itself(self):
        e = env(**self.a.env())
        e.pop("AWS_PROFILE", None)
        r = subprocess.run([BIN, os.path.join(RECIPES, "aws_standin_ssh.lua")],
                           capture_output=True, text=True, timeout=180, env=e, cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        lines = r.stdout.splitlines()
        self.assertRegex(lines[0], r"^ssh says hello from i-[0-9a-f]+$")
        self.assertEqual(lines[1], "terminated: Client.InstanceInitiatedShutdown")


if __name__ == "__main__":
    unittest.main(verbosity=2)
