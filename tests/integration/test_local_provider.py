"""The local provider: real sshd instances on 127.0.0.1 that list, destroy, boot late,
and end themselves at their TTL even when ephrun is SIGKILLed. No sshd is left behind."""
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from common import BIN, env

LAUNCH = r'''
local ephrun = require "ephrun"
return ephrun.recipe { name = "local-test",
  params = { ttl = { default = "10m" }, hold = { default = 0 }, boot_delay = { default = 0 } },
  run = function(p)
  local cloud = ephrun.provider("local")
  local t0 = ephrun.time.monotonic()
  local box <close> = cloud:launch { ttl = p.ttl, boot_delay = p.boot_delay > 0 and p.boot_delay or nil }
  local booted = ephrun.time.monotonic() - t0
  local sh <close> = box:ssh()
  local r = sh:run("whoami; pwd; echo $EPHRUN_LOCAL_INSTANCE", { stream = false })
  local mine = cloud:list { tags = { ["ephrun-run"] = ephrun.run_id() } }
  local other = cloud:list { tags = { ["ephrun-run"] = "someone-else" } }
  print("INFO " .. ephrun.json.encode { id = box.id, port = box.port, user = box.user, out = r.stdout,
    mine = #mine, other = #other, state = mine[1] and mine[1].state, dir = mine[1] and mine[1].dir,
    workdir = mine[1] and mine[1].workdir, fingerprint = sh:fingerprint(), booted = booted,
    tags = mine[1] and mine[1].tags })
  io.stdout:flush()
  if p.hold > 0 then
    print("READY")
    io.stdout:flush()
    ephrun.time.sleep(p.hold)
  end
  sh:close()
  box:destroy()
  box:destroy()   -- idempotent
  print("AFTER " .. ephrun.json.encode { mine = #cloud:list { tags = { ["ephrun-run"] = ephrun.run_id() } },
    get = require("providers.local").get(box.id) == nil })
end }
'''


def our_processes(home):
    """Live processes whose command line mentions this test's EPHRUN_HOME."""
    r = subprocess.run(["pgrep", "-f", home], capture_output=True, text=True)
    return [l for l in r.stdout.split() if l.strip()]


class LocalProvider(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-local-test-")
        self.home = os.path.join(self.tmp, "home")
        self.recipe = os.path.join(self.tmp, "launch.lua")
        with open(self.recipe, "w") as f:
            f.write(LAUNCH)
        self.env = env(EPHRUN_HOME=self.home)

    def tearDown(self):
        # Whatever a failed test left: end it, then insist nothing survives.
        for d in (os.listdir(os.path.join(self.home, "local")) if os.path.isdir(os.path.join(self.home, "local")) else []):
            script = os.path.join(self.home, "local", d, "destroy.sh")
            if os.path.exists(script):
                subprocess.run(["sh", script], capture_output=True)
        left = our_processes(self.home)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.assertEqual(left, [], "processes left behind")

    def run_recipe(self, *args, timeout=60):
        return subprocess.run([BIN, self.recipe, *args], capture_output=True, text=True, timeout=timeout,
                              env=self.env)

    @staticmethod
    def field(out, tag):
        for line in out.splitlines():
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1:])
        raise AssertionError("no %s line in:\n%s" % (tag, out))

    def test_launch_ssh_list_destroy(self):
        r = self.run_recipe()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        info = self.field(r.stdout, "INFO")
        who, cwd, marker = info["out"].split("\n")[:3]
        expected_user = "ephrun-local" if os.getuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
        self.assertEqual(who, expected_user)
        self.assertEqual(cwd, info["workdir"])          # sessions start in the private working area
        self.assertEqual(marker, info["id"])
        self.assertEqual((info["mine"], info["other"], info["state"]), (1, 0, "running"))
        self.assertTrue(info["dir"].startswith(os.path.join(self.home, "local") + "/"), info["dir"])
        self.assertEqual(info["tags"]["ephrun-recipe"], "local-test")
        self.assertIn("ephrun-expires", info["tags"])
        self.assertTrue(info["fingerprint"].startswith("SHA256:"))
        after = self.field(r.stdout, "AFTER")
        self.assertEqual(after, {"mine": 0, "get": True})
        self.assertFalse(os.path.exists(info["dir"]))
        self.assertFalse(os.path.exists(info["workdir"]))
        self.assertEqual(os.listdir(os.path.join(self.home, "runs")), [])   # run keys removed with the run

    def test_boot_delay_keeps_it_pending(self):
        r = self.run_recipe("boot_delay=1.5")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        info = self.field(r.stdout, "INFO")
        self.assertGreaterEqual(info["booted"], 1.4)
        self.assertLess(info["booted"], 5)

    def test_ttl_watchdog_ends_instance_after_sigkill(self):
        p = subprocess.Popen([BIN, self.recipe, "ttl=4s", "hold=60"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=self.env)
        lines = []
        deadline = time.time() + 30
        while time.time() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("READY"):
                break
        info = self.field("".join(lines), "INFO")
        t_ready = time.monotonic()
        p.kill()                      # SIGKILL: no cleanup runs in ephrun
        p.wait()
        p.stdout.close()
        p.stderr.close()
        self.assertTrue(os.path.isdir(info["dir"]), "the instance must outlive a SIGKILLed ephrun")
        self.assertNotEqual(our_processes(self.home), [], "its sshd should still run right after the kill")
        while time.monotonic() - t_ready < 15 and (os.path.exists(info["dir"]) or our_processes(self.home)):
            time.sleep(0.2)
        self.assertFalse(os.path.exists(info["dir"]), "watchdog did not remove the instance at its TTL")
        self.assertFalse(os.path.exists(info["workdir"]))
        self.assertEqual(our_processes(self.home), [])

    def test_destroy_ends_detached_session_processes(self):
        recipe = os.path.join(self.tmp, "detached.lua")
        with open(recipe, "w") as f:
            f.write(r'''
local ephrun = require "ephrun"
return ephrun.recipe { name = "detached", run = function()
  local box <close> = ephrun.provider("local"):launch { ttl = "5m" }
  local sh <close> = box:ssh()
  sh:run_detached("sleep 300")
  sh:run("setsid sleep 301 </dev/null >/dev/null 2>&1 &")
end }''')
        r = subprocess.run([BIN, recipe], capture_output=True, text=True, timeout=60, env=self.env)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        left = subprocess.run(["pgrep", "-f", "^sleep 30[01]$"], capture_output=True, text=True).stdout.split()
        mine = []
        for pid in left:
            try:
                with open("/proc/%s/environ" % pid, "rb") as f:
                    if b"EPHRUN_LOCAL_INSTANCE=" in f.read():
                        mine.append(pid)
            except OSError:
                pass
        self.assertEqual(mine, [], "session processes survived destroy")

    @unittest.skipUnless(os.getuid() == 0, "needs root to switch to a normal user")
    def test_works_as_a_normal_user(self):
        user = "ephrun-test"
        if subprocess.run(["id", "-u", user], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", user], check=True, capture_output=True)
        subprocess.run(["usermod", "-p", "*", user], check=True, capture_output=True)
        home = tempfile.mkdtemp(prefix="ephrun-local-user-")
        shutil.chown(home, user, user)
        recipe = os.path.join(home, "launch.lua")
        with open(recipe, "w") as f:
            f.write(LAUNCH)
        shutil.chown(recipe, user, user)
        e = {k: v for k, v in self.env.items() if k not in ("HOME", "USER", "LOGNAME")}
        e["EPHRUN_HOME"] = os.path.join(home, "state")
        try:
            r = subprocess.run(["runuser", "-u", user, "--", BIN, recipe], capture_output=True, text=True,
                               timeout=60, env=e, cwd=home)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            info = self.field(r.stdout, "INFO")
            self.assertEqual(info["out"].split("\n")[0], user)
            self.assertEqual(info["workdir"], os.path.join(home, "state", "local", info["id"], "work"))
            self.assertEqual(self.field(r.stdout, "AFTER"), {"mine": 0, "get": True})
            self.assertEqual(our_processes(home), [])
        finally:
            ldir = os.path.join(home, "state", "local")
            for d in os.listdir(ldir) if os.path.isdir(ldir) else []:
                subprocess.run(["sh", os.path.join(ldir, d, "destroy.sh")], capture_output=True)
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
