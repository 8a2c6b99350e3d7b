"""Module search order, EPHRUN_LUA_DIR, built-in recipes by name, and secrets
read from .env files."""
import os
import shutil
import subprocess
import tempfile
import unittest

from common import BIN, SRC, env

RECIPE = """
local ephrun = require "ephrun"
return ephrun.recipe {
  name = "where",
  params = { secret = { default = "" } },
  run = function(p)
    print("lib=" .. require("mylib").where)
    print("other=" .. require("otherlib").where)
    if p.secret ~= "" then
      local v = ephrun.secret(p.secret)
      print("len=" .. #v)
      ephrun.log.info("the value is %s", v)
      error("failing with " .. v)
    end
  end,
}
"""


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


class Runtime(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ephrun-rt-")
        self.recipe_dir = os.path.join(self.dir, "recipes")
        self.path_dir = os.path.join(self.dir, "path")
        write(os.path.join(self.recipe_dir, "where.lua"), RECIPE)
        write(os.path.join(self.recipe_dir, "mylib.lua"), 'return { where = "recipe-dir" }')
        write(os.path.join(self.path_dir, "mylib.lua"), 'return { where = "ephrun-path" }')
        write(os.path.join(self.path_dir, "otherlib.lua"), 'return { where = "ephrun-path" }')

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def run_recipe(self, *args, cwd=None, **extra):
        return subprocess.run([BIN, os.path.join(self.recipe_dir, "where.lua"), *args], cwd=cwd or self.dir,
                              capture_output=True, text=True, timeout=60,
                              env=env(EPHRUN_PATH=self.path_dir, **extra))

    def test_recipe_dir_comes_before_ephrun_path(self):
        r = self.run_recipe()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("lib=recipe-dir", r.stdout)
        self.assertIn("other=ephrun-path", r.stdout)

    def test_secret_from_dotenv_is_redacted_everywhere(self):
        write(os.path.join(self.recipe_dir, ".env"), 'MY_TOKEN="dotenv-secret-4242"\n')
        r = self.run_recipe("secret=MY_TOKEN")
        self.assertEqual(r.returncode, 1)
        self.assertIn("len=18", r.stdout)
        self.assertNotIn("dotenv-secret-4242", r.stdout + r.stderr)
        self.assertIn("the value is <secret:MY_TOKEN>", r.stderr)
        self.assertIn("failing with <secret:MY_TOKEN>", r.stderr)

    def test_secret_from_environment_wins_and_missing_one_says_where_to_set_it(self):
        write(os.path.join(self.recipe_dir, ".env"), "MY_TOKEN=from-dotenv-file\n")
        r = self.run_recipe("secret=MY_TOKEN", MY_TOKEN="from-the-env-123")
        self.assertIn("len=16", r.stdout)
        r = self.run_recipe("secret=NOT_SET_ANYWHERE")
        self.assertEqual(r.returncode, 1)
        self.assertIn("secret NOT_SET_ANYWHERE is not set", r.stderr)
        self.assertIn(".env", r.stderr)

    def test_lua_dir_loads_the_stdlib_from_a_tree(self):
        tree = os.path.join(self.dir, "tree")
        shutil.copytree(os.path.join(SRC, "stdlib"), os.path.join(tree, "stdlib"))
        shutil.copytree(os.path.join(SRC, "recipes"), os.path.join(tree, "recipes"))
        shutil.copytree(os.path.join(SRC, "providers"), os.path.join(tree, "providers"))
        p = os.path.join(tree, "stdlib", "ephrun", "init.lua")
        with open(p) as f:
            text = f.read()
        with open(p, "w") as f:
            f.write("io.stderr:write('loaded from the tree\\n')\n" + text)
        r = self.run_recipe(EPHRUN_LUA_DIR=tree)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("loaded from the tree", r.stderr)
        r = self.run_recipe()
        self.assertNotIn("loaded from the tree", r.stderr)

    def test_builtin_recipe_by_name_and_list(self):
        r = subprocess.run([BIN, "--list"], capture_output=True, text=True, env=env())
        self.assertIn("deploy-fast", r.stdout.split())
        r = subprocess.run([BIN, "deploy-fast", "--help"], capture_output=True, text=True, env=env())
        self.assertEqual(r.returncode, 0)
        for p in ("provider", "plan", "region", "src", "build", "deploy", "artifacts", "snapshot", "ttl", "keep"):
            self.assertIn(p, r.stdout)
        self.assertIn("duration", r.stdout)

    def test_syntax_error_names_file_and_line(self):
        bad = os.path.join(self.dir, "bad.lua")
        write(bad, "local x = \nreturn {")
        r = subprocess.run([BIN, bad], capture_output=True, text=True, env=env())
        self.assertEqual(r.returncode, 1)
        self.assertIn("bad.lua:2:", r.stderr)

    def test_malformed_duration_param_exits_2_naming_it(self):
        r = subprocess.run([BIN, "deploy-fast", "ttl=forever", "--dry-run"], capture_output=True, text=True,
                           env=env())
        self.assertEqual(r.returncode, 2)
        self.assertIn("parameter 'ttl' expects a duration", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
