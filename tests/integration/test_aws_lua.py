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


if __name__ == "__main__":
    unittest.main(verbosity=2)
