"""`ephrun.provider` advertises only the providers that are there: the built-in list (in the
unknown-provider error, deploy-fast's and create-build-snapshot's `provider` choices shown by
--help) is computed from the shipped providers/*.lua, and the docs name no provider file that
does not exist."""
import glob
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from common import BIN, SRC, env

UNKNOWN = """local ephrun = require "ephrun"
return ephrun.recipe { name = "unknown-provider", run = function() ephrun.provider("nosuch") end }
"""


def shipped():
    return sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(SRC, "providers", "*.lua")))


class BuiltinProviders(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-builtin-providers-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def ephrun(self, *args, **extra):
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=60, cwd=self.tmp,
                              env=env(EPHRUN_HOME=os.path.join(self.tmp, "home"), **extra))

    def unknown_provider_message(self, **extra):
        path = os.path.join(self.tmp, "unknown.lua")
        with open(path, "w") as f:
            f.write(UNKNOWN)
        r = self.ephrun(path, **extra)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        m = re.search(r"unknown provider 'nosuch' \(built-in: ([^;)]*)[;)]", r.stderr)
        self.assertIsNotNone(m, r.stderr)
        return m.group(1).split(", ")

    def test_the_unknown_provider_error_lists_the_shipped_providers(self):
        self.assertEqual(self.unknown_provider_message(), shipped())

    def test_deploy_fast_help_offers_the_providers_that_create_instances(self):
        r = self.ephrun("deploy-fast", "--help")
        self.assertEqual(r.returncode, 0, r.stderr)
        line = [l for l in r.stdout.splitlines() if l.strip().startswith("provider ")][0]
        offered = re.search(r"\(([^()]*)\)\s*$", line).group(1).split(" | ")
        self.assertEqual(offered, [p for p in shipped() if p != "static"])

    def test_a_provider_file_added_to_the_tree_is_listed(self):
        # EPHRUN_LUA_DIR loads the shipped Lua from a tree: one with an extra provider lists it
        tree = os.path.join(self.tmp, "tree")
        for d in ("stdlib", "providers", "recipes"):
            shutil.copytree(os.path.join(SRC, d), os.path.join(tree, d))
        with open(os.path.join(tree, "providers", "zzcloud.lua"), "w") as f:
            f.write("return { launch = function() end, snapshot = function() end }\n")
        with open(os.path.join(tree, "providers", "zzhelper.lua"), "w") as f:
            f.write("return { pace = function() end }  -- a helper module, not a provider\n")
        self.assertEqual(self.unknown_provider_message(EPHRUN_LUA_DIR=tree), shipped() + ["zzcloud"])

    def test_the_docs_name_only_provider_files_that_exist(self):
        named = set()
        for p in glob.glob(os.path.join(SRC, "docs", "**", "*.md"), recursive=True):
            with open(p) as f:
                # a shipped provider's path, not a test double's (tests/integration/providers/...)
                named |= set(re.findall(r"(?<![\w/.-])providers/(\w+)\.lua", f.read()))
        self.assertEqual(sorted(named - set(shipped())), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
