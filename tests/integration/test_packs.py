"""Recipe packs with the real binary and real git: `ephrun pack add` from a local
bare repository, `ephrun PACK/RECIPE`, the lockfile, a changed file refused by
name, `pack update` as the only way to move a pin, shadowing a built-in refused,
a pack provider, provenance in the plan and in `history`."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from common import BIN, env

PACK_LUA = """return {
  name = "team",
  version = "%(version)s",
  summary = "the team's recipes",
  recipes = { %(recipes)s },
  providers = { %(providers)s },
  requires = { ephrun = "%(requires)s" },%(extra)s
}
"""

HELLO = """local ephrun = require "ephrun"
local lib = require "lib.greeting"
return ephrun.recipe {
  name = "hello",
  summary = "says hello",
  params = { out = { default = "" } },
  run = function(p)
    print(lib.text())
    if p.out ~= "" then ephrun.fs.write(p.out, lib.text()) end
  end,
}
"""

BOX = """-- a provider with one extra function, enough to see where its effects come from
return {
  launch = function() error("box cannot launch") end,
  touch = function(path) require("ephrun").fs.write(path, "from box") end,
}
"""

TEAM_RECIPE = """local ephrun = require "ephrun"
return ephrun.recipe {
  name = "use-box",
  params = { out = { default = "" } },
  run = function(p)
    ephrun.provider("team/box").impl.touch(p.out)
  end,
}
"""


def git(*args, cwd=None):
    r = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main",
                        *args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, "git %s: %s" % (" ".join(args), r.stderr)
    return r.stdout.strip()


class Packs(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ephrun-packs-")
        self.data = os.path.join(self.dir, "data")
        self.team = os.path.join(self.dir, "team-repo")  # where the team's recipes and ephrun.lock live
        os.makedirs(self.team)
        self.env = env(EPHRUN_HOME=os.path.join(self.dir, "state"), XDG_DATA_HOME=self.data)
        self.env.pop("EPHRUN_LOCK", None)
        self.work = os.path.join(self.dir, "pack-src")
        self.bare = os.path.join(self.dir, "pack.git")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def ephrun(self, *args):
        return subprocess.run([BIN, *args], capture_output=True, text=True, timeout=120, env=self.env, cwd=self.team,
                              stdin=subprocess.DEVNULL)

    def ok(self, *args):
        r = self.ephrun(*args)
        self.assertEqual(r.returncode, 0, "ephrun %s\nstdout: %s\nstderr: %s" % (" ".join(args), r.stdout, r.stderr))
        return r

    def write_pack(self, text="hello v1", version="1.0", recipes='"hello"', providers='"box"', requires=">= 0.2",
                   extra="", files=None):
        os.makedirs(os.path.join(self.work, "recipes"), exist_ok=True)
        os.makedirs(os.path.join(self.work, "providers"), exist_ok=True)
        os.makedirs(os.path.join(self.work, "lib"), exist_ok=True)
        content = {
            "pack.lua": PACK_LUA % dict(version=version, recipes=recipes, providers=providers, requires=requires,
                                        extra=extra),
            "recipes/hello.lua": HELLO,
            "providers/box.lua": BOX,
            "lib/greeting.lua": 'return { text = function() return "%s" end }\n' % text,
        }
        content.update(files or {})
        for rel, data in content.items():
            with open(os.path.join(self.work, rel), "w") as f:
                f.write(data)

    def publish(self, message="release"):
        """Commits the pack's sources and pushes them to the bare repository; returns the commit."""
        if not os.path.isdir(self.bare):
            git("init", "--quiet", "--bare", self.bare)
            git("init", "--quiet", self.work)
            git("remote", "add", "origin", self.bare, cwd=self.work)
        git("add", "-A", cwd=self.work)
        git("commit", "--quiet", "-m", message, cwd=self.work)
        git("push", "--quiet", "origin", "HEAD:main", cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def lock(self):
        with open(os.path.join(self.team, "ephrun.lock")) as f:
            return json.load(f)

    def checkout(self, commit):
        return os.path.join(self.data, "ephrun", "packs", "team", commit)

    def test_add_from_bare_repo_run_and_lockfile(self):
        self.write_pack()
        commit = self.publish()
        r = self.ok("pack", "add", self.bare)
        self.assertIn("team", r.stdout)
        entry = self.lock()["packs"]["team"]
        self.assertEqual(entry["commit"], commit)
        self.assertEqual(entry["source"], self.bare)
        # The tree hash is the sha256 of the sha256sum listing of the checkout, so it can be checked by hand.
        root = self.checkout(commit)
        listing = ""
        for dirpath, dirnames, filenames in os.walk(root):
            for n in filenames:
                rel = os.path.relpath(os.path.join(dirpath, n), root)
                with open(os.path.join(root, rel), "rb") as f:
                    listing += "%s  %s\n" % (hashlib.sha256(f.read()).hexdigest(), rel)
        lines = sorted(listing.splitlines(True), key=lambda l: l.split("  ", 1)[1])
        self.assertEqual(entry["sha256"], hashlib.sha256("".join(lines).encode()).hexdigest())
        self.assertFalse(os.path.exists(os.path.join(root, ".git")))

        out = os.path.join(self.dir, "out.txt")
        r = self.ok("team/hello", "out=" + out)
        self.assertIn("hello v1", r.stdout)
        with open(out) as f:
            self.assertEqual(f.read(), "hello v1")

        # From a subdirectory of the team's repository, and for a team recipe run from elsewhere,
        # the lockfile is found as git finds its repository.
        sub = os.path.join(self.team, "sub", "dir")
        os.makedirs(sub)
        r = subprocess.run([BIN, "team/hello"], capture_output=True, text=True, env=self.env, cwd=sub)
        self.assertIn("hello v1", r.stdout, r.stderr)
        with open(os.path.join(sub, "use-hello.lua"), "w") as f:
            f.write(TEAM_RECIPE.replace('ephrun.provider("team/box").impl.touch(p.out)',
                                        'print(ephrun.provider("team/box").name)'))
        r = subprocess.run([BIN, os.path.join(sub, "use-hello.lua")], capture_output=True, text=True, env=self.env,
                           cwd=self.dir)
        self.assertIn("team/box", r.stdout, r.stderr)

        ls = self.ok("pack", "ls")
        self.assertIn(commit[:12], ls.stdout)
        self.assertEqual(json.loads(self.ok("pack", "ls", "--json").stdout)["packs"][0]["commit"], commit)
        self.assertIn("team: ok", self.ok("pack", "verify").stdout)
        # A colleague with the lockfile but no checkout: verify fetches the pinned commit.
        shutil.rmtree(root)
        self.assertEqual(self.ephrun("team/hello").returncode, 1)
        self.assertIn("team: ok", self.ok("pack", "verify").stdout)
        self.assertTrue(os.path.isfile(os.path.join(root, "pack.lua")))
        # Unknown packs and recipes are usage errors; add has no dry run.
        r = self.ephrun("nosuch/hello")
        self.assertEqual(r.returncode, 2)
        self.assertIn("no pack 'nosuch'", r.stderr)
        r = self.ephrun("team/nosuch")
        self.assertEqual(r.returncode, 2)
        self.assertIn("has no recipe 'nosuch' (its recipes: hello)", r.stderr)
        r = self.ephrun("pack", "add", self.bare, "--dry-run")
        self.assertEqual(r.returncode, 1)
        self.assertIn("has no --dry-run", r.stderr)
        r = self.ephrun("pack", "ls", "--ref", "main")
        self.assertEqual(r.returncode, 1)
        self.assertIn("--ref only applies to", r.stderr)
        self.assertIn("ephrun team/hello", self.ok("team/hello", "--help").stdout)

        # The plan and history say which pack and commit the steps came from.
        plan = self.ok("team/hello", "out=" + out, "--dry-run", "--json")
        # The recipe's own print comes first.
        steps = json.loads(plan.stdout[plan.stdout.index("{"):])["steps"]
        writes = [s for s in steps if s["kind"] == "write"]
        self.assertEqual([s["origin"] for s in writes], ["pack team@" + commit[:12]])
        text = self.ok("team/hello", "out=" + out, "--dry-run").stdout
        self.assertIn("(from pack team@%s)" % commit[:12], text)
        hist = json.loads(self.ok("history", "--json").stdout)["runs"]
        self.assertIn("hello (pack team@%s)" % commit[:12], [h["recipe"] for h in hist])

    def test_changed_file_is_refused_naming_it(self):
        self.write_pack()
        commit = self.publish()
        self.ok("pack", "add", self.bare)
        lib = os.path.join(self.checkout(commit), "lib", "greeting.lua")
        with open(lib, "a") as f:
            f.write("-- changed\n")
        r = self.ephrun("team/hello")
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(lib, r.stderr)
        self.assertIn("changed after it was locked", r.stderr)
        self.assertNotIn("hello v1", r.stdout)
        v = self.ephrun("pack", "verify")
        self.assertNotEqual(v.returncode, 0)
        self.assertIn(lib, v.stdout + v.stderr)
        # A file added to the checkout is refused too.
        os.remove(lib)
        r = self.ephrun("team/hello")
        self.assertEqual(r.returncode, 1)
        self.assertIn(lib + " was removed", r.stderr)

    def test_file_changed_during_the_run_is_refused_when_required(self):
        late = HELLO.replace('local lib = require "lib.greeting"\n', "").replace(
            "    print(lib.text())",
            '    local root = debug.getinfo(1, "S").source:sub(2):match("^(.*)/recipes/")\n'
            '    ephrun.fs.write(root .. "/lib/greeting.lua", "return { text = function() return \'swapped\' end }")\n'
            '    print(require("lib.greeting").text())').replace('name = "hello"', 'name = "late"')
        self.write_pack(recipes='"hello", "late"', files={"recipes/late.lua": late})
        commit = self.publish()
        self.ok("pack", "add", self.bare)
        r = self.ephrun("team/late")
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertNotIn("swapped", r.stdout)
        self.assertIn(os.path.join(self.checkout(commit), "lib", "greeting.lua") + " changed after it was locked",
                      r.stderr)

    def test_added_file_is_refused(self):
        self.write_pack()
        commit = self.publish()
        self.ok("pack", "add", self.bare)
        extra = os.path.join(self.checkout(commit), "recipes", "sneaky.lua")
        with open(extra, "w") as f:
            f.write("return 1\n")
        r = self.ephrun("team/hello")
        self.assertEqual(r.returncode, 1)
        self.assertIn(extra + " was added", r.stderr)

    def test_update_is_the_only_way_to_move_the_pin(self):
        self.write_pack()
        first = self.publish()
        self.ok("pack", "add", self.bare)
        self.write_pack(text="hello v2", version="1.1")
        second = self.publish("v2")
        self.assertNotEqual(first, second)
        self.assertIn("hello v1", self.ok("team/hello").stdout)  # running never moves the pin
        r = self.ephrun("pack", "add", self.bare)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("pack update team", r.stderr)
        self.assertEqual(self.lock()["packs"]["team"]["commit"], first)
        r = self.ok("pack", "update", "team")
        self.assertIn("%s -> %s" % (first[:12], second[:12]), r.stdout)
        self.assertEqual(self.lock()["packs"]["team"]["commit"], second)
        self.assertIn("hello v2", self.ok("team/hello").stdout)
        # Back to the first commit, by --ref.
        self.ok("pack", "update", "team", "--ref", first)
        self.assertIn("hello v1", self.ok("team/hello").stdout)

    def test_shadowing_a_builtin_is_refused(self):
        self.write_pack(providers='"local"', files={"providers/local.lua": BOX})
        self.publish()
        r = self.ephrun("pack", "add", self.bare)
        self.assertEqual(r.returncode, 1, r.stdout)
        self.assertIn("provider named 'local'", r.stderr)
        self.assertIn("overrides", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.team, "ephrun.lock")))

    def test_shadowing_recipe_refused_unless_declared(self):
        recipe = HELLO.replace('name = "hello"', 'name = "deploy-fast"')
        self.write_pack(recipes='"hello", "deploy-fast"', files={"recipes/deploy-fast.lua": recipe})
        self.publish()
        r = self.ephrun("pack", "add", self.bare)
        self.assertEqual(r.returncode, 1)
        self.assertIn("recipe named 'deploy-fast'", r.stderr)
        # Declared, it is added, and runs only as team/deploy-fast: the bare name stays the built-in.
        self.write_pack(recipes='"hello", "deploy-fast"', extra='\n  overrides = { "deploy-fast" },',
                        files={"recipes/deploy-fast.lua": recipe})
        self.publish("declared")
        self.ok("pack", "add", self.bare)
        self.assertIn("hello v1", self.ok("team/deploy-fast").stdout)
        plan = self.ok("team/deploy-fast", "--dry-run").stdout
        self.assertIn("team/deploy-fast overrides the built-in recipe 'deploy-fast'", plan)
        self.assertIn("Build on a temporary", self.ok("deploy-fast", "--help").stdout)

    def test_a_recipe_named_like_a_command_is_refused(self):
        self.write_pack(recipes='"hello", "ls"', files={"recipes/ls.lua": HELLO.replace('name = "hello"', 'name = "ls"')})
        self.publish()
        r = self.ephrun("pack", "add", self.bare)
        self.assertEqual(r.returncode, 1)
        self.assertIn("recipe named 'ls', like the built-in recipe", r.stderr)

    def test_unmet_requirement_is_refused(self):
        self.write_pack(requires=">= 99.0")
        self.publish()
        r = self.ephrun("pack", "add", self.bare)
        self.assertEqual(r.returncode, 1)
        self.assertIn("requires ephrun >= 99.0", r.stderr)
        version = subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout.split()[1]
        self.assertIn("this is ephrun " + version, r.stderr)

    def test_pack_provider_from_a_team_recipe(self):
        self.write_pack()
        commit = self.publish()
        self.ok("pack", "add", self.bare)
        path = os.path.join(self.team, "use-box.lua")
        with open(path, "w") as f:
            f.write(TEAM_RECIPE)
        out = os.path.join(self.dir, "box.txt")
        plan = json.loads(self.ok(path, "out=" + out, "--dry-run", "--json").stdout)
        self.assertEqual([s["origin"] for s in plan["steps"] if s["kind"] == "write"], ["pack team@" + commit[:12]])
        self.ok(path, "out=" + out)
        with open(out) as f:
            self.assertEqual(f.read(), "from box")
        r = self.ephrun(path, "out=" + out)
        self.assertEqual(r.returncode, 0)
        with open(os.path.join(self.checkout(commit), "providers", "box.lua"), "a") as f:
            f.write("-- changed\n")
        r = self.ephrun(path, "out=" + out)
        self.assertEqual(r.returncode, 1)
        self.assertIn("providers/box.lua changed after it was locked", r.stderr)

    def test_plain_directory_pack_and_remove(self):
        self.write_pack()
        r = self.ok("pack", "add", self.work, "--as", "mine")
        self.assertIn("mine", r.stdout)
        self.assertIn("hello v1", self.ok("mine/hello").stdout)
        self.ok("pack", "remove", "mine")
        self.assertEqual(self.lock()["packs"], {})
        r = self.ephrun("mine/hello")
        self.assertEqual(r.returncode, 2)
        self.assertIn("no pack 'mine'", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.data, "ephrun", "packs", "mine")))

    def list_lines(self, prefix):
        r = self.ok("--list")
        self.assertIn("Built-in recipes", r.stdout)
        self.assertNotIn("hello v1", r.stdout + r.stderr)  # describing a recipe never runs it
        return r, [l.strip() for l in r.stdout.splitlines() if l.strip().startswith(prefix)]

    def test_list_shows_locked_pack_recipes_with_summary_and_commit(self):
        other = HELLO.replace('name = "hello"', 'name = "other"').replace("says hello", "says something else")
        self.write_pack(recipes='"hello", "other"', files={"recipes/other.lua": other})
        commit = self.publish()
        self.ok("pack", "add", self.bare)
        r, lines = self.list_lines("team/")
        self.assertIn("Pack recipes", r.stdout)
        origin = "(pack team@%s)" % commit[:12]
        self.assertEqual(len(lines), 2, r.stdout)
        self.assertRegex(lines[0], r"^team/hello +says hello +" + re.escape(origin) + "$")
        self.assertRegex(lines[1], r"^team/other +says something else +" + re.escape(origin) + "$")
        # From a subdirectory the same lockfile applies, as for a run; elsewhere there is none.
        sub = os.path.join(self.team, "sub")
        os.makedirs(sub)
        r = subprocess.run([BIN, "--list"], capture_output=True, text=True, env=self.env, cwd=sub)
        self.assertIn("team/hello", r.stdout, r.stderr)
        r = subprocess.run([BIN, "--list"], capture_output=True, text=True, env=self.env, cwd=self.dir)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("Pack recipes", r.stdout)

    def test_list_names_a_pack_recipe_that_fails_to_load(self):
        broken = 'error("needs a config file")\n'
        # os.exit at the top level ends neither --list nor its exit status.
        self.write_pack(recipes='"hello", "broken", "quits"',
                        files={"recipes/broken.lua": broken, "recipes/quits.lua": "os.exit(3)\n"})
        commit = self.publish()
        self.ok("pack", "add", self.bare)
        r, lines = self.list_lines("team/")
        self.assertEqual(len(lines), 3, r.stdout)
        self.assertIn("team/quits", lines[2])
        self.assertIn("(cannot be loaded: os.exit(3) called", lines[2])
        self.assertIn("Commands:", r.stdout)
        self.assertIn("team/broken", lines[1])
        self.assertIn("(cannot be loaded: ", lines[1])
        self.assertIn("recipes/broken.lua:1: needs a config file", lines[1])
        self.assertRegex(lines[0], r"^team/hello +says hello +\(pack team@%s\)$" % commit[:12])

    def test_list_names_a_tampered_or_missing_pack_and_never_fetches(self):
        self.write_pack()
        commit = self.publish()
        self.ok("pack", "add", self.bare)
        self.ok("pack", "add", self.work, "--as", "mine")
        recipe = os.path.join(self.checkout(commit), "recipes", "hello.lua")
        with open(recipe, "a") as f:
            f.write("-- changed\n")
        r, lines = self.list_lines("team")
        self.assertEqual(len(lines), 1, r.stdout)
        self.assertIn(recipe + " changed after it was locked", lines[0])
        self.assertIn("ephrun pack verify", lines[0])
        self.assertNotIn("says hello  (pack team", r.stdout)
        self.assertIn("mine/hello", r.stdout)  # the intact pack is still listed
        # A checkout that is not there is named, and --list does not fetch it.
        shutil.rmtree(self.checkout(commit))
        r, lines = self.list_lines("team")
        self.assertEqual(len(lines), 1, r.stdout)
        self.assertIn("not checked out here", lines[0])
        self.assertIn("ephrun pack verify", lines[0])
        self.assertFalse(os.path.exists(self.checkout(commit)))
        # A lockfile that is not one is named too, and the built-ins are still listed.
        with open(os.path.join(self.team, "ephrun.lock"), "w") as f:
            f.write("not json")
        r, _ = self.list_lines("")
        self.assertIn("is not an ephrun lockfile", r.stdout)


if __name__ == "__main__":
    unittest.main()
