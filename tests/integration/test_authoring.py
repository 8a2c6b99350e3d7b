"""`ephrun new` and `ephrun check` with the real binary: a scaffolded recipe passes check, dry-runs
and runs on the local provider; check names each kind of problem as file:line; a scaffolded
provider passes the conformance spec outside this repository."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from common import BIN, env


class Authoring(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ephrun-authoring-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        # Outside the source tree, as a team's repository is: nothing may come from it.
        self.env = env(EPHRUN_HOME=os.path.join(self.dir, "home"))
        for k in ("EPHRUN_SOURCE_DIR", "EPHRUN_LUA_DIR"):
            self.env.pop(k, None)

    def ephrun(self, *args, timeout=120):
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, env=self.env,
                              cwd=self.dir)

    def write(self, name, text):
        with open(os.path.join(self.dir, name), "w") as f:
            f.write(text)
        return name

    def test_a_new_recipe_passes_check_dry_runs_and_runs_on_the_local_provider(self):
        r = self.ephrun("new", "recipe", "hello")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.isfile(os.path.join(self.dir, "hello.lua")))
        r = self.ephrun("check", "hello.lua")
        self.assertEqual((r.returncode, r.stdout), (0, "ok: 1 file checked\n"), r.stderr)
        r = self.ephrun("--dry-run", "--json", "hello.lua")
        self.assertEqual(r.returncode, 0, r.stderr)
        kinds = [s["kind"] for s in json.loads(r.stdout)["steps"]]
        self.assertIn("launch", kinds)
        r = self.ephrun("hello.lua", "command=echo scaffolded-$((6*7))")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("scaffolded-42", r.stdout + r.stderr)
        self.assertIn("destroyed local instance", r.stdout + r.stderr)
        # the help's usage line names the file as it was typed
        r = self.ephrun("./hello.lua", "--help")
        self.assertIn("Usage: ephrun ./hello.lua [name=value ...]", r.stdout)
        # and a command's says what its words are
        r = self.ephrun("check", "--help")
        self.assertIn("Usage: ephrun check RECIPE... [name=value ...] [--json]\n", r.stdout)

    def test_new_recipe_takes_a_provider_and_refuses_to_overwrite(self):
        r = self.ephrun("new", "recipe", "on-vultr", "--provider", "vultr")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(self.dir, "on-vultr.lua")) as f:
            text = f.read()
        self.assertIn('default = "vultr"', text)
        r = self.ephrun("check", "on-vultr.lua", "provider=local", "plan=")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = self.ephrun("new", "recipe", "on-vultr")
        self.assertEqual(r.returncode, 1)
        self.assertIn("on-vultr.lua already exists", r.stderr)
        r = self.ephrun("--dry-run", "new", "recipe", "planned")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("planned.lua", r.stdout)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "planned.lua")))
        r = self.ephrun("new", "recipe", "check")
        self.assertEqual(r.returncode, 1)
        self.assertIn("check.lua would run instead of `ephrun check`", r.stderr)
        r = self.ephrun("new", "thing", "x")
        self.assertEqual(r.returncode, 1)
        self.assertIn("ephrun new recipe NAME", r.stderr)
        r = self.ephrun("ls", "--provider", "vultr")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--provider only applies to `ephrun new recipe NAME`", r.stderr)

    def test_check_names_each_problem_as_file_line(self):
        self.write("syntax.lua", "local ephrun = require \"ephrun\"\nlocal x = = 1\n")
        self.write("lint.lua", """local ephrun = require "ephrun"
local unused = 1
return ephrun.recipe {
  name = "lint", summary = "lint",
  run = function() print(undefined_thing) end,
}
""")
        self.write("default.lua", """local ephrun = require "ephrun"
return ephrun.recipe {
  name = "default", summary = "a default outside its range",
  params = { n = { default = 50, max = 10 } },
  run = function(p) print(p.n) end,
}
""")
        self.write("raises.lua", """local ephrun = require "ephrun"
return ephrun.recipe {
  name = "raises", summary = "raises in its dry run when n > 3",
  params = { n = { default = 5 } },
  run = function(p)
    if p.n > 3 then error("n is too big for this") end
  end,
}
""")
        self.write("nosummary.lua", """local ephrun = require "ephrun"
return ephrun.recipe { name = "nosummary", run = function() end }
""")
        r = self.ephrun("check", "syntax.lua", "lint.lua", "default.lua", "raises.lua", "nosummary.lua", "gone.lua")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        lines = r.stdout.splitlines()
        self.assertIn("syntax.lua:2: unexpected symbol near '='", lines)
        self.assertIn("lint.lua:2: (W211) unused variable 'unused'", lines)
        self.assertIn("lint.lua:5: (W113) accessing undefined variable 'undefined_thing'", lines)
        self.assertIn("default.lua:4: parameter 'n': the default 50 is outside its range (must be at most 10)", lines)
        self.assertIn("raises.lua:6: dry run with the defaults: n is too big for this", lines)
        self.assertTrue(any(line.startswith("nosummary.lua:2: the recipe has no summary") for line in lines), lines)
        self.assertIn("gone.lua: no such file", lines)
        self.assertEqual(len(lines), 7, lines)
        self.assertIn("check: 7 problems in 6 files", r.stderr)
        # the given values replace the defaults in the dry run
        r = self.ephrun("check", "raises.lua", "n=2")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = self.ephrun("check", "--dry-run", "raises.lua")
        self.assertEqual(r.returncode, 1)
        self.assertIn("check: drop --dry-run", r.stderr)
        r = self.ephrun("check", "raises.lua", "n=none-number")
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stdout, r"^raises.lua:4: dry run with n=none-number: parameter 'n'")

    def test_check_json_for_ci(self):
        self.write("raises.lua", """local ephrun = require "ephrun"
return ephrun.recipe {
  name = "raises", summary = "raises",
  run = function() error("boom in the plan") end,
}
""")
        r = self.ephrun("check", "--json", "raises.lua")
        self.assertEqual(r.returncode, 1, r.stderr)
        out = json.loads(r.stdout)
        self.assertFalse(out["ok"])
        self.assertEqual(out["problems"], [{"check": "dry-run", "file": "raises.lua", "line": 4,
                                            "message": "dry run with the defaults: boom in the plan"}])
        self.ephrun("new", "recipe", "fine")
        r = self.ephrun("check", "--json", "fine.lua")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), {"ok": True, "files": ["fine.lua"], "problems": []})

    def test_a_new_provider_passes_the_conformance_spec_outside_the_repository(self):
        r = self.ephrun("new", "provider", "acme")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.isfile(os.path.join(self.dir, "providers", "acme.lua")))
        r = self.ephrun("acme_conformance_spec.lua", timeout=600)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("provider_conformance: 13 run, 0 failed", r.stdout)
        r = self.ephrun("check", "providers/acme.lua")
        # a provider module is not a recipe: only its syntax and lint are meant to pass
        self.assertNotIn("(W", r.stdout)
        # a recipe uses it by name
        self.ephrun("new", "recipe", "on-acme", "--provider", "acme")
        r = self.ephrun("on-acme.lua", "command=echo via-acme")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("via-acme", r.stdout + r.stderr)

    def test_meta_install_writes_the_stubs_and_a_luarc_an_editor_resolves(self):
        team = os.path.join(self.dir, "team")
        os.mkdir(team)
        with open(os.path.join(team, ".luarc.json"), "w") as f:
            json.dump({"diagnostics.globals": ["vim"], "workspace.library": ["lib"]}, f)
        r = self.ephrun("meta", "install", "team")
        self.assertEqual(r.returncode, 0, r.stderr)
        lib = os.path.join(team, ".ephrun", "meta")
        with open(os.path.join(team, ".luarc.json")) as f:
            conf = json.load(f)
        self.assertEqual(conf["workspace.library"], ["lib", ".ephrun/meta"])
        self.assertEqual(conf["diagnostics.globals"], ["vim"])
        self.assertEqual(conf["runtime.version"], "Lua 5.4")
        # what LuaLS does with `require "ephrun"` and `ephrun.fs.`: the module's file, then each field's class
        stubs = {}
        for name in os.listdir(os.path.join(lib, "ephrun")):
            with open(os.path.join(lib, "ephrun", name)) as f:
                stubs[name] = f.read()
        classes = set(re.findall(r"^---@class ([\w.]+)", "\n".join(stubs.values()), re.M))
        fields = re.findall(r"^---@field (\w+) (ephrun\.\w+)$", stubs["init.lua"], re.M)
        self.assertIn(("fs", "ephrun.fs"), fields)
        for field, cls in fields:
            self.assertIn(cls, classes, "ephrun.%s is typed %s, which no stub declares" % (field, cls))
        for cls in ("ephrun.Provider", "ephrun.RecipeDef", "ephrun.ParamSpec", "ephrun.proc.Result"):
            self.assertIn(cls, classes)
        self.assertNotIn("_main.lua", stubs)
        # again: nothing is added twice
        r = self.ephrun("meta", "install", "team")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(team, ".luarc.json")) as f:
            self.assertEqual(json.load(f)["workspace.library"], ["lib", ".ephrun/meta"])
        r = self.ephrun("meta", "install", "nosuchdir")
        self.assertEqual(r.returncode, 1)
        self.assertIn("meta: nosuchdir is not a directory", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
