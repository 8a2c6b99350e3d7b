"""recipes/metal-ova-build.lua end to end, on the AWS stand-in (real sshd guests, moto's S3
read back with the official `aws` CLI) and on the local provider: a build that succeeds
(the exact tags, the 500 GB gp3 volume, the OVA + SHA-256 + metadata verified in S3, the
history row, start/success notifications), a build that fails mid-way (its log in S3, a
failure notification, nothing left), a second build refused by the lock naming the holder,
an expired lease taken over, the launcher SIGKILLed mid-build then `ephrun reap`, the
launcher timeout, and the dry-run's plan. The build is a shell script standing in for packer:
it writes a fake .ova and waits for the test's go-file when asked."""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from common import BIN, SRC, env

sys.path.insert(0, os.path.join(SRC, "tests", "support"))
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
from aws import SECRET_KEY, AwsStandin  # noqa: E402
from test_notify import Receiver  # noqa: E402

RECIPE = os.path.join(SRC, "recipes", "metal-ova-build.lua")
BUCKET = "ova-bucket"
FAKE_BUILD = """#!/bin/sh
# stands in for packer: writes an OVA; waits for $GO when set; fails when $FAIL is set
echo "BUILDING the prewarmed image"
mkdir -p output
head -c ${OVA_BYTES:-3000000} /dev/urandom > output/prewarmed.ova
if [ -n "$GO" ]; then while [ ! -e "$GO" ]; do sleep 0.05; done; fi
if [ -n "$FAIL" ]; then echo "packer: provisioner failed" >&2; exit 3; fi
echo "build done"
"""


class Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ephrun-ova-")
        os.chmod(self.dir, 0o755)  # the guest's login user reads the go-file
        self.home = os.path.join(self.dir, "home")
        self.src = os.path.join(self.dir, "src")
        os.makedirs(self.src)
        with open(os.path.join(self.src, "fake-build.sh"), "w") as f:
            f.write(FAKE_BUILD)
        self.go = os.path.join(self.dir, "go")
        self.receiver = Receiver()
        self.procs = []

    def tearDown(self):
        open(self.go, "a").close()  # a build left waiting (SIGKILL) ends
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=60)
        self.receiver.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def env(self):
        e = env(EPHRUN_HOME=self.home, EPHRUN_NOTIFY_URL=self.receiver.url, **self.extra_env())
        return e

    def extra_env(self):
        return {}

    def build(self, wait=False, fail=False, size=3000000):
        parts = ["OVA_BYTES=%d" % size]
        if wait:
            parts.append("GO=" + self.go)
        if fail:
            parts.append("FAIL=1")
        return "build=" + " ".join(parts) + " sh fake-build.sh"

    def args(self, *extra):
        return [RECIPE, "src=" + self.src, "disk_every=1s"] + list(extra)

    def ephrun(self, *args, timeout=240):
        r = subprocess.run([BIN] + list(args), capture_output=True, text=True, env=self.env(), timeout=timeout,
                           stdin=subprocess.DEVNULL)
        self.assertNotIn(SECRET_KEY, r.stdout + r.stderr)
        self.assertNotIn(self.receiver.url, r.stdout + r.stderr)
        return r

    def start(self, *args):
        p = subprocess.Popen([BIN] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=self.env(), stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def wait_for(self, p, marker):
        seen = ""
        while marker not in seen:
            line = p.stderr.readline()
            if not line:
                self.fail("ephrun ended before %r:\n%s" % (marker, seen))
            seen += line
        return seen

    def finish(self, p):
        out, err = p.communicate(timeout=240)
        self.assertNotIn(SECRET_KEY, out + err)
        return p.returncode, out, err

    def wait_events(self, want, timeout=30):
        deadline = time.monotonic() + timeout
        with self.receiver.cond:
            while not set(want) <= {json.loads(b)["event"] for _, _, b in self.receiver.bodies}:
                left = deadline - time.monotonic()
                self.assertGreater(left, 0, "notifications %s not all received: %s" % (want, self.receiver.events()))
                self.receiver.cond.wait(left)

    def history(self):
        r = self.ephrun("history", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)["runs"]


class OnAws(Base):
    @classmethod
    def setUpClass(cls):
        cls.a = AwsStandin(pending_seconds=0.2, stopping_seconds=0.2, shutting_down_seconds=0.2).__enter__()
        cls.image = cls.a.image_id()
        cls.a.aws_cli("s3api", "create-bucket", "--bucket", BUCKET,
                      "--create-bucket-configuration", "LocationConstraint=eu-west-1")

    @classmethod
    def tearDownClass(cls):
        cls.a.__exit__(None, None, None)

    def tearDown(self):
        super().tearDown()
        self.assertEqual(self.a.leftovers(), {"instances": [], "key_pairs": [], "security_groups": []})
        _, up, _ = self.a.aws_cli("s3api", "list-multipart-uploads", "--bucket", BUCKET)
        self.assertFalse((up or {}).get("Uploads"), "multipart uploads left")

    def extra_env(self):
        return dict(self.a.env(), EPHRUN_AWS_IMAGE=self.image, EPHRUN_AWS_POLL="0.25")

    def aws_args(self, build_id, *extra, lock=None):
        return ["--yes"] + self.args("provider=aws", "bucket=" + BUCKET, "prepare=none", "build_id=" + build_id,
                                     "lock=" + (lock or "ova-" + build_id), *extra)

    def s3_text(self, key):
        dest = os.path.join(self.dir, "got-" + key.replace("/", "_"))
        self.a.aws_cli("s3api", "get-object", "--bucket", BUCKET, "--key", key, dest)
        with open(dest, "rb") as f:
            return f.read()

    def keys(self, prefix):
        _, out, _ = self.a.aws_cli("s3api", "list-objects-v2", "--bucket", BUCKET, "--prefix", prefix)
        return sorted(o["Key"] for o in (out or {}).get("Contents") or [])

    def instance_of(self, build_id):
        _, out, _ = self.a.aws_cli("ec2", "describe-instances", "--filters", "Name=tag:BuildID,Values=" + build_id)
        return [i for r in out["Reservations"] for i in r["Instances"]]

    def test_success_with_the_lock_held_against_a_second_build(self):
        bid = "b-ok"
        p = self.start(*self.aws_args(bid, self.build(wait=True, size=20_000_000), "branch=main", "commit=abc123",
                                      lock="ova-shared"))
        self.wait_for(p, "BUILDING")
        # the instance, as the team's old system tagged it, with its 500 GB gp3 volume
        inst = self.instance_of(bid)[0]
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        for k, v in {"Project": "prewarmed-ova", "Purpose": "prewarmed-build", "BuildID": bid, "AutoDelete": "true",
                     "CostCenter": "build", "MaxLifetime": "3hours"}.items():
            self.assertEqual(tags.get(k), v, tags)
        self.assertIn("ephrun-run", tags)
        _, vols, _ = self.a.aws_cli("ec2", "describe-volumes", "--filters",
                                    "Name=attachment.instance-id,Values=" + inst["InstanceId"])
        self.assertIn((500, "gp3"), [(v["Size"], v["VolumeType"]) for v in vols["Volumes"]])
        # a second build while this one holds the lock is refused, naming the holder
        calls = len(self.a.calls("RunInstances"))
        r = self.ephrun(*self.aws_args("b-second", self.build(), lock="ova-shared"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("lock 'ova-shared' is held by", r.stderr)
        self.assertIn("of metal-ova-build", r.stderr)
        self.assertEqual(len(self.a.calls("RunInstances")), calls, "the refused build launched")
        open(self.go, "a").close()
        rc, out, err = self.finish(p)
        self.assertEqual(rc, 0, err)
        self.assertIn("[disk] ", err)
        prefix = "prewarmed/%s/" % bid
        self.assertEqual(self.keys(prefix), [prefix + n for n in ("metadata.json", "prewarmed.ova",
                                                                  "prewarmed.ova.sha256")])
        ova = self.s3_text(prefix + "prewarmed.ova")
        sha = hashlib.sha256(ova).hexdigest()
        self.assertEqual(len(ova), 20_000_000)
        self.assertEqual(self.s3_text(prefix + "prewarmed.ova.sha256").decode(), "%s  prewarmed.ova\n" % sha)
        meta = json.loads(self.s3_text(prefix + "metadata.json"))
        self.assertEqual((meta["build_id"], meta["branch"], meta["commit"]), (bid, "main", "abc123"))
        self.assertEqual((meta["ova"]["sha256"], meta["ova"]["size"]), (sha, 20_000_000))
        self.assertGreater(meta["cost"], 0)
        self.assertGreaterEqual(meta["duration"], 0)
        _, attrs, _ = self.a.aws_cli("s3api", "get-object-attributes", "--bucket", BUCKET, "--key",
                                     prefix + "prewarmed.ova", "--object-attributes", "Checksum", "ObjectParts")
        self.assertIn("ChecksumSHA256", attrs["Checksum"])
        self.assertIn("s3://%s/%sprewarmed.ova" % (BUCKET, prefix), out)
        row = [r for r in self.history() if r["recipe"] == "metal-ova-build" and r["status"] == "ok"][0]
        self.assertEqual(row["result"]["keys"][0], "s3://%s/%sprewarmed.ova" % (BUCKET, prefix))
        self.assertEqual(row["result"]["cost"], meta["cost"])
        self.wait_events(["start", "success"])

    def test_local_provider_uploading_to_the_bucket(self):
        launched = len(self.a.calls("RunInstances"))
        r = self.ephrun(*self.args("bucket=" + BUCKET, "build_id=l-s3", self.build(size=6_000_000)))
        self.assertEqual(r.returncode, 0, r.stderr)
        prefix = "prewarmed/l-s3/"
        self.assertEqual(self.keys(prefix), [prefix + n for n in ("metadata.json", "prewarmed.ova",
                                                                  "prewarmed.ova.sha256")])
        sha = hashlib.sha256(self.s3_text(prefix + "prewarmed.ova")).hexdigest()
        self.assertEqual(json.loads(self.s3_text(prefix + "metadata.json"))["ova"]["sha256"], sha)
        self.assertEqual(len(self.a.calls("RunInstances")), launched, "the local provider launched on EC2")

    def test_failure_mid_build_uploads_the_log_and_notifies(self):
        bid = "b-fail"
        r = self.ephrun(*self.aws_args(bid, self.build(fail=True)))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("build b-fail failed", r.stderr)
        self.assertIn("s3://%s/prewarmed/b-fail/logs/build.log" % BUCKET, r.stderr)
        self.assertNotIn("stack traceback", r.stderr)
        self.assertEqual(self.keys("prewarmed/b-fail/"), ["prewarmed/b-fail/logs/build.log"])
        log = self.s3_text("prewarmed/b-fail/logs/build.log").decode()
        self.assertIn("packer: provisioner failed", log)
        self.assertIn("[disk] ", log)
        self.wait_events(["start", "failure"])
        failure = [m for m in self.receiver.messages() if m["event"] == "failure"][0]
        self.assertIn("build b-fail failed", failure["detail"])
        row = [r for r in self.history() if r["recipe"] == "metal-ova-build"][0]
        self.assertEqual((row["status"], row["result"]["status"]), ("failed", "failed"))

    def test_a_failed_build_whose_log_cannot_be_saved_still_reports_the_build(self):
        self.a.fault("PUT /%s/prewarmed/b-nolog/logs/build.log" % BUCKET, "AccessDenied", status=403, count=1,
                     service="s3")
        r = self.ephrun(*self.aws_args("b-nolog", self.build(fail=True)))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("build b-nolog failed", r.stderr)
        self.assertIn("the build log could not be saved to s3://%s/prewarmed/b-nolog/logs/build.log" % BUCKET, r.stderr)
        self.assertIn("AccessDenied", r.stderr)
        self.wait_events(["failure"])
        failure = [m for m in self.receiver.messages() if m["event"] == "failure"][0]
        self.assertIn("build b-nolog failed", failure["detail"])

    def test_an_expired_lease_is_taken_over(self):
        holder = {"name": "ova-b-expired", "user": "ana", "host": "old-builder", "run_id": "20260101-000000-dead",
                  "recipe": "metal-ova-build", "pid": 1, "since": time.time() - 7200, "lease": 600,
                  "expires": time.time() - 600}
        path = os.path.join(self.dir, "holder.json")
        with open(path, "w") as f:
            json.dump(holder, f)
        self.a.aws_cli("s3api", "put-object", "--bucket", BUCKET, "--key", "ephrun-locks/ova-b-expired.json",
                       "--body", path)
        r = self.ephrun(*self.aws_args("b-expired", self.build()))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("taking over the expired lease of ana@old-builder", r.stderr)
        self.assertEqual(self.keys("ephrun-locks/ova-b-expired"), [], "the lock was not released")

    def test_sigkill_mid_build_then_reap(self):
        bid = "b-killed"
        p = self.start(*self.aws_args(bid, self.build(wait=True)))
        self.wait_for(p, "BUILDING")
        iid = self.instance_of(bid)[0]["InstanceId"]
        p.kill()
        p.communicate(timeout=30)
        self.assertEqual(self.a.leftovers()["instances"], [iid])
        r = self.ephrun("reap", "--yes", "providers=aws")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("destroyed aws " + iid, r.stdout)
        self.assertEqual(self.a.instance(iid)["state"], "terminated")
        self.wait_events(["start", "terminated"])
        forced = [m for m in self.receiver.messages() if m["event"] == "terminated"][0]
        self.assertEqual(forced["recipe"], "metal-ova-build")

    def test_sigterm_mid_build_removes_everything_and_releases_the_lock(self):
        p = self.start(*self.aws_args("b-term", self.build(wait=True)))
        self.wait_for(p, "BUILDING")
        self.assertEqual(self.keys("ephrun-locks/ova-b-term"), ["ephrun-locks/ova-b-term.json"])
        p.send_signal(signal.SIGTERM)
        rc, _, err = self.finish(p)
        self.assertEqual(rc, 143, err)
        self.assertEqual(self.keys("ephrun-locks/ova-b-term"), [], "the lock outlived the run")
        self.assertEqual(self.keys("prewarmed/b-term/"), [])
        self.wait_events(["start", "failure"])
        failure = [m for m in self.receiver.messages() if m["event"] == "failure"][0]
        self.assertIn("SIGTERM", failure["detail"])

    def test_launcher_timeout(self):
        r = self.ephrun(*self.aws_args("b-slow", self.build(wait=True), "timeout=2s"))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("launcher timeout: the build was still running after", r.stderr)
        self.assertIn("(timeout=2.0s)", r.stderr)
        self.assertEqual(self.keys("prewarmed/b-slow/"), ["prewarmed/b-slow/logs/build.log"])

    def test_dry_run_plans_everything_and_makes_nothing(self):
        calls = len(self.a.calls())
        r = self.ephrun("--dry-run", "--json", *self.aws_args("b-dry", self.build()))
        self.assertEqual(r.returncode, 0, r.stderr)
        plan = json.loads(r.stdout)
        kinds = [s["kind"] for s in plan["steps"]]
        for k in ("lock", "estimate", "launch", "sync", "run", "fetch", "upload"):
            self.assertIn(k, kinds)
        est = [s for s in plan["steps"] if s["kind"] == "estimate"][0]
        self.assertIn("instance + EBS + transfer", est["what"])
        self.assertTrue(any("c5n.metal: $4.3210/h" in d for d in est["details"]), est)
        self.assertTrue(any("EBS 500 GB gp3" in d for d in est["details"]), est)
        launch = [s for s in plan["steps"] if s["kind"] == "launch"][0]
        self.assertIn("plan=c5n.metal", launch["what"])
        self.assertTrue(any("Purpose=prewarmed-build" in d for d in launch["details"]), launch)
        self.assertTrue(any("500 GB gp3" in d for d in launch["details"]), launch)
        ups = [s["what"] for s in plan["steps"] if s["kind"] == "upload"]
        self.assertTrue(any("fetched to the launcher" in u for u in ups), ups)
        self.assertTrue(any("s3://%s/prewarmed/b-dry/" % BUCKET in u for u in ups), ups)
        made = [c for c in self.a.calls()[calls:] if c["method"] not in ("GET", "HEAD")]
        self.assertEqual(made, [], "the dry-run changed something")

    def test_without_yes_and_without_a_terminal_nothing_is_launched(self):
        calls = len(self.a.calls("RunInstances"))
        r = self.ephrun(*self.aws_args("b-ask", self.build())[1:])
        self.assertNotEqual(r.returncode, 0)
        # One question, the launch's own, with the transfer to S3 in its worst case.
        self.assertIn("there is no terminal to confirm on: pass --yes", r.stderr)
        worst = float(re.search(r"refusing to launch .*?: worst case \$([0-9.]+)", r.stderr).group(1))
        parts = [float(x) for x in re.findall(r"= \$([0-9.]+)", r.stderr.split("cost estimate:", 1)[1].split("\n", 1)[0])]
        self.assertEqual(len(parts), 3, r.stderr)  # instance, EBS, transfer
        self.assertAlmostEqual(worst, sum(parts), delta=0.01 + sum(parts) * 0.01)
        self.assertIn("transfer to S3", r.stderr)
        self.assertEqual(len(self.a.calls("RunInstances")), calls)
        self.assertEqual(self.keys("ephrun-locks/ova-b-ask"), [], "the refused run kept its lock")

    def test_dry_run_with_an_instance_profile_uploads_from_the_instance(self):
        r = self.ephrun("--dry-run", "--json", *self.aws_args("b-prof", self.build(), "instance_profile=ova-builder"))
        self.assertEqual(r.returncode, 0, r.stderr)
        plan = json.loads(r.stdout)
        ups = [s["what"] for s in plan["steps"] if s["kind"] == "upload"]
        self.assertTrue(any("uploaded from the instance with aws s3 cp, instance profile ova-builder" in u
                            for u in ups), ups)
        runs = [s for s in plan["steps"] if s["kind"] == "run" and "aws s3 cp" in json.dumps(s)]
        self.assertEqual(len(runs), 1, [s["what"] for s in plan["steps"]])
        self.assertIn("s3://%s/prewarmed/b-prof/" % BUCKET, json.dumps(runs[0]))
        self.assertNotIn("fetch", [s["kind"] for s in plan["steps"]])
        est = [s for s in plan["steps"] if s["kind"] == "estimate"][0]
        self.assertTrue(any("none billed (from the instance" in d for d in est["details"]), est)


class OnLocal(Base):
    def test_success_into_a_directory_and_the_file_lock(self):
        dest = os.path.join(self.dir, "dest")
        p = self.start(*self.args("dest=" + dest, "build_id=l-ok", self.build(wait=True)))
        self.wait_for(p, "BUILDING")
        r = self.ephrun(*self.args("dest=" + dest, "build_id=l-second", self.build()))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("lock 'metal-ova-build' is held by", r.stderr)
        open(self.go, "a").close()
        rc, out, err = self.finish(p)
        self.assertEqual(rc, 0, err)
        d = os.path.join(dest, "prewarmed", "l-ok")
        self.assertEqual(sorted(os.listdir(d)), ["metadata.json", "prewarmed.ova", "prewarmed.ova.sha256"])
        with open(os.path.join(d, "prewarmed.ova"), "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        with open(os.path.join(d, "prewarmed.ova.sha256")) as f:
            self.assertEqual(f.read(), "%s  prewarmed.ova\n" % sha)
        with open(os.path.join(d, "metadata.json")) as f:
            self.assertEqual(json.load(f)["ova"]["sha256"], sha)
        self.assertFalse(os.path.exists(os.path.join(self.home, "locks", "metal-ova-build.json")))
        self.assertEqual(os.listdir(os.path.join(self.home, "local")) if os.path.isdir(
            os.path.join(self.home, "local")) else [], [])

    def test_failure_leaves_the_log_in_the_directory(self):
        dest = os.path.join(self.dir, "dest")
        r = self.ephrun(*self.args("dest=" + dest, "build_id=l-fail", self.build(fail=True)))
        self.assertNotEqual(r.returncode, 0)
        with open(os.path.join(dest, "prewarmed", "l-fail", "logs", "build.log")) as f:
            self.assertIn("packer: provisioner failed", f.read())
        self.wait_events(["start", "failure"])


if __name__ == "__main__":
    unittest.main()
