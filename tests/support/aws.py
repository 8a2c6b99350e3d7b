"""The AWS stand-in (tests/fakes/aws/standin.py: moto behind a proxy) as a test fixture.

    from aws import AwsStandin
    with AwsStandin(pending_seconds=1) as a:
        a.url            # "http://127.0.0.1:PORT": every service's endpoint
        a.env()          # AWS_ENDPOINT_URL, AWS_REGION, test keys, EPHRUN_AWS_SSH_PORT/USER
        a.state()        # GET /_standin/state
        a.instance(iid)  # one instance of the state
        a.fault("RunInstances", "InsufficientInstanceCapacity", count=1)
        a.shutdown_inside(iid, "+1"); a.interrupt(iid, seconds=5)
        a.aws("ec2", "describe-instances")   # the official `aws` CLI against it (parsed JSON)

Keyword arguments are stand-in config keys (`pending_seconds`, `stopping_seconds`,
`shutting_down_seconds`, `minute_seconds`, `start_sshd`). Leaving the block stops
it (SIGTERM, then SIGKILL) with every sshd; the stand-in also exits when this
process dies (its stdin closes).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

SRC = os.environ.get("EPHRUN_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
STANDIN = os.path.join(SRC, "tests", "fakes", "aws", "standin.py")
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "eu-west-1"


class AwsStandin:
    def __init__(self, ready_timeout=60, **config):
        self.ready_timeout = ready_timeout
        self.initial_config = config
        self.proc = None

    def __enter__(self):
        self.state_dir = tempfile.mkdtemp(prefix="ephrun-aws-standin-")
        self._stderr = tempfile.TemporaryFile()
        cmd = [sys.executable, STANDIN, "--state-dir", self.state_dir, "--watch-stdin"]
        if self.initial_config:
            cmd += ["--config", json.dumps(self.initial_config)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True)
        got = []
        t = threading.Thread(target=lambda: got.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(self.ready_timeout)
        if not (got and got[0].startswith("READY ")):
            self.stop()
            raise RuntimeError("AWS stand-in did not get ready within %ss (stdout: %r); stderr:\n%s"
                               % (self.ready_timeout, got[0] if got else "", self.stderr()))
        parts = got[0].split()
        self.url = parts[1]
        fields = dict(p.split("=", 1) for p in parts[2:])
        self.ssh_port = int(fields["ssh_port"])
        self.login_user = fields["login_user"]
        self.imds_port = int(fields["imds_port"])
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc and self.proc.stdin, self.proc and self.proc.stdout):
            try:
                if f:
                    f.close()
            except OSError:
                pass
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def __exit__(self, *exc):
        self.stop()
        self._stderr.close()
        return False

    def stderr(self):
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def env(self, **extra):
        """What points ephrun (and the aws CLI) at the stand-in, with keys that sign."""
        e = {"AWS_ENDPOINT_URL": self.url, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
             "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
             "EPHRUN_AWS_SSH_PORT": str(self.ssh_port), "EPHRUN_AWS_SSH_USER": self.login_user}
        e.update(extra)
        return e

    def _control(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def state(self):
        return self._control("GET", "/_standin/state")

    def instance(self, iid):
        for i in self.state()["instances"]:
            if i["id"] == iid:
                return i
        raise KeyError(iid)

    def config(self, **kw):
        return self._control("POST", "/_standin/config", kw)

    def fault(self, action, code, count=1, status=None, message=None, service="ec2", after=False, delay=0):
        f = {"action": action, "code": code, "count": count, "service": service, "after": after, "delay": delay}
        if status is not None:
            f["status"] = status
        if message is not None:
            f["message"] = message
        return self._control("POST", "/_standin/faults", f)

    def clear_faults(self):
        self._control("DELETE", "/_standin/faults")

    def shutdown_inside(self, iid, *args):
        self._control("POST", "/_standin/instances/%s/shutdown" % iid, {"args": list(args)})

    def interrupt(self, iid, seconds=120, action="terminate"):
        self._control("POST", "/_standin/instances/%s/interrupt" % iid, {"seconds": seconds, "action": action})

    def advance(self, seconds):
        self._control("POST", "/_standin/advance", {"seconds": seconds})

    def reset(self):
        self._control("POST", "/_standin/reset")

    def calls(self, action=None):
        """The logged AWS calls (optionally of one action)."""
        return [c for c in self.state()["log"] if action is None or c["action"] == action]

    def wait_state(self, iid, state, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            got = self.instance(iid)
            if got["state"] == state:
                return got
            if time.monotonic() > deadline:
                raise AssertionError("instance %s not %s after %ss: %r" % (iid, state, timeout, got))
            time.sleep(0.05)

    def image_id(self):
        """An AMI moto knows (with a root device), for launches that must name one."""
        if not getattr(self, "_image", None):
            _, out, _ = self.aws_cli("ec2", "describe-images", "--filters", "Name=architecture,Values=x86_64",
                                     "Name=root-device-type,Values=ebs")
            self._image = sorted(i["ImageId"] for i in out["Images"] if i.get("RootDeviceName"))[0]
        return self._image

    def ec2(self):
        """A botocore EC2 client for the stand-in: the same client the `aws` CLI uses, without
        a process per call (for checks run after every test)."""
        if not getattr(self, "_ec2", None):
            import botocore.session
            self._ec2 = botocore.session.get_session().create_client(
                "ec2", region_name=REGION, endpoint_url=self.url, aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY)
        return self._ec2

    def leftovers(self):
        """What ephrun made and did not remove: instances not terminated, its key pairs and security groups."""
        ec2 = self.ec2()
        res = ec2.describe_instances(Filters=[{"Name": "instance-state-name", "Values": [
            "pending", "running", "shutting-down", "stopping", "stopped"]}])
        keys = ec2.describe_key_pairs()
        groups = ec2.describe_security_groups()
        return {"instances": [i["InstanceId"] for r in res["Reservations"] for i in r["Instances"]],
                "key_pairs": [k["KeyName"] for k in keys["KeyPairs"] if k["KeyName"].startswith("ephrun-")],
                "security_groups": [g["GroupName"] for g in groups["SecurityGroups"]
                                    if g["GroupName"].startswith("ephrun-")]}

    def client(self, service, region=REGION):
        import botocore.session
        return botocore.session.get_session().create_client(
            service, region_name=region, endpoint_url=self.url, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY)

    def schedules(self, regions=(REGION,)):
        """ephrun's EventBridge schedules (name -> GetSchedule), in `regions`."""
        out = {}
        for region in regions:
            sch = self.client("scheduler", region)
            for s in sch.list_schedules(NamePrefix="ephrun-")["Schedules"]:
                out[s["Name"]] = sch.get_schedule(Name=s["Name"], GroupName=s.get("GroupName") or "default")
        return out

    def fire_schedules(self, now=None):
        """What EventBridge Scheduler would have run by `now` (epoch seconds; default: now)."""
        return self._control("POST", "/_standin/scheduler/fire", {} if now is None else {"now": now})["fired"]

    def multipart_uploads(self, region=REGION):
        """Unfinished multipart uploads in every bucket: [(bucket, key, upload id)]."""
        s3 = self.client("s3", region)
        out = []
        for b in s3.list_buckets().get("Buckets", []):
            for u in s3.list_multipart_uploads(Bucket=b["Name"]).get("Uploads", []):
                out.append((b["Name"], u["Key"], u["UploadId"]))
        return out

    # -- the official AWS CLI
    def aws_cli(self, *args, check=True, env=None):
        """Runs `aws --endpoint-url URL ARGS --output json`; (returncode, parsed stdout or text, stderr)."""
        e = dict(os.environ)
        e.update(self.env())
        e.update(env or {})
        e.pop("AWS_PROFILE", None)
        r = subprocess.run(["aws", "--endpoint-url", self.url, "--output", "json"] + list(args),
                           capture_output=True, text=True, env=e, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError("aws %s failed (%d): %s" % (" ".join(args), r.returncode, r.stderr))
        try:
            out = json.loads(r.stdout) if r.stdout.strip() else None
        except ValueError:
            out = r.stdout
        return r.returncode, out, r.stderr
