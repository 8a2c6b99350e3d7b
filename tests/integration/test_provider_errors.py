"""Vultr's HTTP answers become structured provider errors (ephrun.errors) and the lifecycle
retries on their kind only: a 403 whose body says "Server is currently locked" is `auth` and
fails at once; a 423 whose body says nothing of a lock is `locked` and is retried."""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from common import BIN, RECIPES, env
from vultr import VultrStandin

KEY = "vultr-errors-key-0123456789abcdef"


class VultrErrorKinds(unittest.TestCase):
    def test_destroy_retries_on_the_kind_not_the_text(self):
        tmp = tempfile.mkdtemp(prefix="ephrun-errors-test-")
        self.addCleanup(shutil.rmtree, tmp, True)
        with VultrStandin(api_key=KEY) as v:
            inst = r"^/v2/instances/[0-9a-f-]+$"
            v.fault("DELETE", inst, 403, body={"error": "Server is currently locked", "status": 403})
            v.fault("DELETE", inst, 423, body={"error": "Please try again later", "status": 423})
            e = env(EPHRUN_HOME=os.path.join(tmp, "home"), EPHRUN_VULTR_POLL="0.5", **v.env())
            r = subprocess.run([BIN, "--yes", os.path.join(RECIPES, "vultr_error_kinds.lua")], capture_output=True,
                               text=True, timeout=300, env=e, cwd=tmp)
            out = r.stdout + r.stderr
            self.assertEqual(r.returncode, 0, out)
            self.assertNotIn(KEY, out)
            first = re.search(r"^FIRST (.*)$", r.stdout, re.M)
            self.assertIsNotNone(first, out)
            self.assertIn("kind=auth retry=false status=403", first.group(1))
            self.assertIn("check VULTR_API_KEY", first.group(1))
            iid = re.search(r"^DESTROYED (\S+)$", r.stdout, re.M).group(1)
            statuses = [x["status"] for x in v.state()["log"]
                        if x["method"] == "DELETE" and x["path"] == "/v2/instances/" + iid]
            # 403 once (not retried), 423 then the real delete, then <close>'s idempotent 404
            self.assertEqual(statuses[:2], [403, 423], statuses)
            self.assertEqual(len(statuses), 4, statuses)
            self.assertIn(statuses[2], (200, 204), statuses)
            self.assertEqual(statuses[3], 404, statuses)
            self.assertEqual(v.leftovers(), {"instances": [], "ssh_keys": []})


if __name__ == "__main__":
    unittest.main(verbosity=2)
