"""ephrun.aws (credentials, region, endpoints, signed requests, Query API calls,
structured errors) against the AWS stand-in: moto behind tests/fakes/aws/standin.py."""
import os
import shutil
import subprocess
import tempfile
import unittest

from common import BIN, SRC, env
from aws import AwsStandin


class AwsFromLua(unittest.TestCase):
    def test_spec(self):
        with AwsStandin() as a:
            tmp = tempfile.mkdtemp(prefix="ephrun-aws-spec-")
            try:
                e = env(AWS_STANDIN_URL=a.url, AWS_SPEC_TMP=tmp, **a.env())
                for k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE",
                          "AWS_SHARED_CREDENTIALS_FILE"):
                    e.pop(k, None)
                r = subprocess.run([BIN, os.path.join(SRC, "tests", "integration", "aws_spec.lua")]
                                   + (["only=" + os.environ["ONLY"]] if os.environ.get("ONLY") else []),
                                   capture_output=True, text=True, timeout=300, env=e, cwd=tmp)
                print(r.stdout)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr + "\nstand-in:\n" + a.stderr())
                # No secret reached ephrun's output.
                self.assertNotIn("wJalrXUtnFEMI", r.stdout + r.stderr)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def test_dry_run_reads_act_writes_are_plan_steps(self):
        with AwsStandin() as a:
            tmp = tempfile.mkdtemp(prefix="ephrun-aws-dry-")
            try:
                recipe = os.path.join(SRC, "tests", "integration", "recipes", "aws_dryrun.lua")
                e = env(**a.env())
                e.pop("AWS_PROFILE", None)
                r = subprocess.run([BIN, "--dry-run", recipe], capture_output=True, text=True, timeout=120,
                                   env=e, cwd=tmp)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertIn("credentials from environment\n", r.stdout)
                self.assertIn("read reservations: 0", r.stdout)
                self.assertIn("run placeholder: true", r.stdout)
                self.assertRegex(r.stdout, r"http\s+POST http://127.0.0.1:\d+/")
                actions = [(c["action"], c["method"]) for c in a.calls()]
                self.assertEqual(actions, [("DescribeInstances", "GET")], "only the read reached AWS")
                # No keys at all: a plan note and placeholders, nothing sent.
                e2 = dict(e, HOME=tmp)
                for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                    e2.pop(k)
                r = subprocess.run([BIN, "--dry-run", recipe, "keys=false"], capture_output=True, text=True,
                                   timeout=120, env=e2, cwd=tmp)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertIn("(placeholder)", r.stdout)
                self.assertIn("AWS credentials are not set; a real run will need them", r.stdout)
                self.assertEqual(len(a.calls()), 1)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
