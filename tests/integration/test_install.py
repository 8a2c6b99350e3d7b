"""ephrun installs like a tool: `cmake --install` puts ephrun and ephrun-http.so under a prefix, and
the .deb CPack builds declares its dependencies and, unpacked into a throwaway root with dpkg -x,
runs: --version names the commit, and the HTTP module loads from where it was installed."""
import os
import re
import shutil
import subprocess
import tempfile
import unittest

from common import BIN, SRC

BUILD = os.environ.get("EPHRUN_BUILD_DIR", os.path.join(SRC, "build"))

# Loads the HTTP module (a separate shared object) and says so.
HTTP_RECIPE = """local ephrun = require "ephrun"
return ephrun.recipe { name = "http-loads", summary = "loads ephrun.http",
  run = function() assert(type(ephrun.http.request) == "function"); print("HTTP-MODULE-LOADED") end }
"""


def is_git_checkout():
    return subprocess.run(["git", "-C", SRC, "rev-parse", "HEAD"], capture_output=True).returncode == 0


class Install(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ephrun-install-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.recipe = os.path.join(self.dir, "http_loads.lua")
        with open(self.recipe, "w") as f:
            f.write(HTTP_RECIPE)

    def run_installed(self, exe, *args):
        e = {k: v for k, v in os.environ.items() if k not in ("EPHRUN_LUA_DIR", "EPHRUN_HTTP_MODULE")}
        e["EPHRUN_HOME"] = os.path.join(self.dir, "home")
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, env=e, cwd=self.dir)

    def check_runs(self, exe):
        r = self.run_installed(exe, "--version")
        self.assertEqual(r.returncode, 0, r.stderr)
        m = re.match(r"^ephrun \d+\.\d+\.\d+ \(commit ([0-9a-f]{7,})(-dirty)?\)$", r.stdout.strip())
        self.assertTrue(m, r.stdout)
        # the commit the tree was at when it was built: the build tree's binary says the same, and
        # it is a commit of this repository (the tree may have moved on since the build)
        self.assertEqual(r.stdout, subprocess.run([BIN, "--version"], capture_output=True, text=True).stdout)
        if is_git_checkout():
            known = subprocess.run(["git", "-C", SRC, "cat-file", "-e", m.group(1) + "^{commit}"],
                                   capture_output=True)
            self.assertEqual(known.returncode, 0, "%s is not a commit of %s" % (m.group(1), SRC))
        r = self.run_installed(exe, self.recipe)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("HTTP-MODULE-LOADED", r.stdout)

    def test_cmake_install_puts_both_files_under_the_prefix(self):
        prefix = os.path.join(self.dir, "prefix")
        r = subprocess.run(["cmake", "--install", BUILD, "--prefix", prefix], capture_output=True, text=True,
                           timeout=300)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(os.access(os.path.join(prefix, "bin", "ephrun"), os.X_OK))
        self.assertTrue(os.path.isfile(os.path.join(prefix, "lib", "ephrun", "ephrun-http.so")))
        self.check_runs(os.path.join(prefix, "bin", "ephrun"))
        # A binary copied alone says which file it misses, and where it looked.
        alone = os.path.join(self.dir, "alone")
        os.mkdir(alone)
        shutil.copy(os.path.join(prefix, "bin", "ephrun"), alone)
        r = self.run_installed(os.path.join(alone, "ephrun"), self.recipe)
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot load the HTTP module " + os.path.join(alone, "ephrun-http.so"), r.stderr)

    def test_the_deb_declares_its_dependencies_and_runs_from_a_throwaway_root(self):
        out = os.path.join(self.dir, "pkg")
        r = subprocess.run(["cpack", "--config", os.path.join(BUILD, "CPackConfig.cmake"), "-B", out],
                           capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        debs = [f for f in os.listdir(out) if f.endswith(".deb")]
        self.assertEqual(len(debs), 1, os.listdir(out))
        deb = os.path.join(out, debs[0])
        depends = subprocess.run(["dpkg-deb", "-f", deb, "Depends"], capture_output=True, text=True).stdout
        for lib in ("liblua5.4-0", "libcurl4", "libssh2-1", "libssl3", "libsqlite3-0", "libpugixml1v5"):
            self.assertIn(lib, depends)
        root = os.path.join(self.dir, "root")
        subprocess.run(["dpkg", "-x", deb, root], check=True)
        self.assertTrue(os.path.isfile(os.path.join(root, "usr", "lib", "ephrun", "ephrun-http.so")))
        self.check_runs(os.path.join(root, "usr", "bin", "ephrun"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
