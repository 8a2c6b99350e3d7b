"""The provider conformance spec (tests/lua/provider_conformance_spec.lua) against each
provider's fake. ctest runs it for `local` directly; here it runs for the providers that need a
fake started first. A new provider adds a test method that starts its fake and calls check()."""
import os
import shutil
import subprocess
import tempfile
import unittest

from common import BIN, SRC, env
from vultr import VultrStandin
from aws import AwsStandin

SPEC = os.path.join(SRC, "tests", "lua", "provider_conformance_spec.lua")


class Conformance(unittest.TestCase):
    def check(self, provider, **extra_env):
        tmp = tempfile.mkdtemp(prefix="ephrun-conformance-")
        self.addCleanup(shutil.rmtree, tmp, True)
        e = env(EPHRUN_HOME=os.path.join(tmp, "home"), EPHRUN_SOURCE_DIR=SRC, **extra_env)
        r = subprocess.run([BIN, "--yes", SPEC, "provider=" + provider], capture_output=True, text=True, timeout=600,
                           env=e, cwd=tmp)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("provider_conformance: 13 run, 0 failed", r.stdout)
        return r

    def test_vultr(self):
        with VultrStandin(api_key="conformance-key-0123456789") as v:
            r = self.check("vultr", EPHRUN_VULTR_POLL="0.5", **v.env())
            self.assertNotIn(v.api_key, r.stdout + r.stderr)
            self.assertEqual(v.leftovers(), {"instances": [], "ssh_keys": []})

    def test_aws(self):
        with AwsStandin() as a:
            r = self.check("aws", EPHRUN_AWS_POLL="0.5", EPHRUN_AWS_IMAGE=a.image_id(), **a.env())
            self.assertNotIn(a.env()["AWS_SECRET_ACCESS_KEY"], r.stdout + r.stderr)
            self.assertEqual(a.leftovers(), {"instances": [], "key_pairs": [], "security_groups": []})

    def test_an_unknown_provider_is_refused_naming_the_fixtures(self):
        tmp = tempfile.mkdtemp(prefix="ephrun-conformance-")
        self.addCleanup(shutil.rmtree, tmp, True)
        r = subprocess.run([BIN, "--yes", SPEC, "provider=nosuch"], capture_output=True, text=True, timeout=60,
                           env=env(EPHRUN_HOME=tmp, EPHRUN_SOURCE_DIR=SRC), cwd=tmp)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no conformance fixture for provider 'nosuch'", r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
