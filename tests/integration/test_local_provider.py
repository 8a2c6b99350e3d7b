"""The local provider: real sshd instances on 127.0.0.1 that list, destroy, boot late,
and end themselves at their TTL even when ephrun is SIGKILLed and its state directory is
deleted. As root each instance has its own user: two runs cannot touch each other, and a
detached process without the instance marker is gone after destroy. The watchdog holds no
secret in its environment. No sshd is left behind."""
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
  params = { ttl = { default = "10m" }, hold = { default = 0 }, boot_delay = { default = 0 },
    release = { default = "", doc = "stop holding once this file exists" } },
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
    local limit = ephrun.time.monotonic() + p.hold
    while ephrun.time.monotonic() < limit and not (p.release ~= "" and ephrun.fs.exists(p.release)) do
      ephrun.time.sleep(0.05)
    end
  end
  sh:close()
  box:destroy()
  box:destroy()   -- idempotent
  print("AFTER " .. ephrun.json.encode { mine = #cloud:list { tags = { ["ephrun-run"] = ephrun.run_id() } },
    get = require("providers.local").get(box.id) == nil })
end }
'''


ISOLATION = r'''
local ephrun = require "ephrun"
local q = ephrun.shell_quote
return ephrun.recipe { name = "isolation",
  params = { mode = { default = "a" }, other = { default = "" }, pid = { default = "" }, release = { default = "" } },
  run = function(p)
  local box <close> = ephrun.provider("local"):launch { ttl = "5m" }
  local sh <close> = box:ssh()
  if p.mode == "a" then
    local r = sh:run("echo private > notes.txt; sleep 305 </dev/null >/dev/null 2>&1 & echo $!", { stream = false })
    print("A " .. ephrun.json.encode { workdir = box.raw.workdir, user = box.user, pid = r.stdout:match("%d+") })
    io.stdout:flush()
    while not ephrun.fs.exists(p.release) do ephrun.time.sleep(0.05) end
    return
  end
  local out = {}
  for name, cmd in pairs { read_keys = "cat " .. q(p.other .. "/.ssh/authorized_keys"), list = "ls " .. q(p.other),
      read_notes = "cat " .. q(p.other .. "/notes.txt"), write = "touch " .. q(p.other .. "/intruder"),
      signal = "kill -0 " .. p.pid, environ = "cat /proc/" .. p.pid .. "/environ" } do
    out[name] = sh:run(cmd, { check = false, stream = false }).code
  end
  out.own = sh:run("touch mine && cat .ssh/authorized_keys >/dev/null", { check = false, stream = false }).code
  print("B " .. ephrun.json.encode(out))
end }
'''


def passwd_has(user):
    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


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
        # as root, each instance has its own login user
        expected_user = "ephrun-" + info["id"][4:] if os.getuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
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

    def start_holding(self, *args, env=None):
        p = subprocess.Popen([BIN, self.recipe, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env or self.env)
        lines = []
        deadline = time.time() + 30
        while time.time() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("READY"):
                break
        return p, self.field("".join(lines), "INFO")

    def test_state_dir_deleted_after_sigkill(self):
        # The watchdog carries its own program: with $EPHRUN_HOME gone it still ends sshd (and the user).
        p, info = self.start_holding("ttl=10m", "hold=60")
        p.kill()
        p.wait()
        p.stdout.close()
        p.stderr.close()
        self.assertNotEqual(our_processes(self.home), [])
        shutil.rmtree(self.home)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (our_processes(self.home) or passwd_has(info["user"]) and os.getuid() == 0):
            time.sleep(0.1)
        self.assertEqual(our_processes(self.home), [], "sshd or the watchdog outlived the state directory")
        with open("/proc/net/tcp") as f:
            listening = [l.split()[1] for l in f.read().splitlines()[1:] if l.split()[3] == "0A"]
        self.assertNotIn("0100007F:%04X" % info["port"], listening, "the instance still listens")
        if os.getuid() == 0:
            self.assertFalse(passwd_has(info["user"]), "its user was not removed")
            self.assertFalse(os.path.exists(info["workdir"]))

    def test_watchdog_and_sshd_get_no_secret(self):
        release = os.path.join(self.tmp, "release")
        e = dict(self.env, VULTR_API_KEY="vultr-secret-for-the-watchdog-test")
        p, info = self.start_holding("hold=60", "release=" + release, env=e)
        try:
            pids = {}
            for name in ("watchdog.pid", "sshd.pid"):
                with open(os.path.join(info["dir"], name)) as f:
                    pids[name] = f.read().strip()
            for name, pid in pids.items():
                with open("/proc/%s/environ" % pid, "rb") as f:
                    environ = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
                self.assertNotIn(b"VULTR_API_KEY", environ, name)
                self.assertNotIn(b"EPHRUN_HOME", environ, name)
                self.assertLessEqual(set(environ), {b"PATH", b"LC_ALL", b"PWD"}, name)
        finally:
            open(release, "w").close()
            out, err = p.communicate(timeout=60)
        self.assertEqual(p.returncode, 0, out + err)

    @unittest.skipUnless(os.getuid() == 0, "instances have their own users only when ephrun runs as root")
    def test_two_runs_cannot_touch_each_other(self):
        recipe = os.path.join(self.tmp, "isolation.lua")
        with open(recipe, "w") as f:
            f.write(ISOLATION)
        release = os.path.join(self.tmp, "release")
        a = subprocess.Popen([BIN, recipe, "mode=a", "release=" + release], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=self.env)
        try:
            line = a.stdout.readline()
            self.assertTrue(line.startswith("A "), line + (a.stderr.read() if a.poll() is not None else ""))
            info = json.loads(line[2:])
            b = subprocess.run([BIN, recipe, "mode=b", "other=" + info["workdir"], "pid=" + info["pid"]],
                               capture_output=True, text=True, timeout=60, env=self.env)
            self.assertEqual(b.returncode, 0, b.stdout + b.stderr)
            codes = self.field(b.stdout, "B")
        finally:
            open(release, "w").close()
            out, err = a.communicate(timeout=60)
        self.assertEqual(a.returncode, 0, out + err)
        self.assertEqual(codes.pop("own"), 0, "an instance's user works in its own home")
        self.assertEqual({k: v for k, v in codes.items() if v == 0}, {}, "run B reached into run A")
        self.assertFalse(passwd_has(info["user"]), "run A's user outlived its destroy")
        self.assertFalse(os.path.exists(info["workdir"]))

    @unittest.skipUnless(os.getuid() == 0, "as a normal user, destroy finds only marked processes (docs/providers.md)")
    def test_detached_unmarked_process_is_gone_after_destroy(self):
        recipe = os.path.join(self.tmp, "unmarked.lua")
        with open(recipe, "w") as f:
            f.write(r'''
local ephrun = require "ephrun"
return ephrun.recipe { name = "unmarked", run = function()
  local box <close> = ephrun.provider("local"):launch { ttl = "5m" }
  local sh <close> = box:ssh()
  local r = sh:run("setsid env -u EPHRUN_LOCAL_INSTANCE sleep 306 </dev/null >/dev/null 2>&1 & echo $!",
    { stream = false })
  print("PID " .. ephrun.json.encode { pid = tonumber(r.stdout:match("%d+")), user = box.user })
end }''')
        r = subprocess.run([BIN, recipe], capture_output=True, text=True, timeout=60, env=self.env)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        info = self.field(r.stdout, "PID")
        try:
            with open("/proc/%d/cmdline" % info["pid"], "rb") as f:
                cmdline = f.read()
        except OSError:
            cmdline = b""
        self.assertNotEqual(cmdline, b"sleep\0306\0", "a detached process without the marker outlived destroy")
        self.assertFalse(passwd_has(info["user"]))

    def test_lifetime_ending_mid_command_says_so(self):
        recipe = os.path.join(self.tmp, "long.lua")
        with open(recipe, "w") as f:
            f.write(r'''
local ephrun = require "ephrun"
return ephrun.recipe { name = "long-build", run = function()
  local box <close> = ephrun.provider("local"):launch { ttl = "3s" }
  local sh <close> = box:ssh()
  sh:run("sleep 60")
end }''')
        r = subprocess.run([BIN, recipe], capture_output=True, text=True, timeout=60, env=self.env)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stderr, r"local instance loc-\w+ reached the end of its lifetime \(ttl 3(\.0)?s, at \S+Z\)")
        self.assertIn("give it a longer ttl", r.stderr)
        self.assertNotIn("stack traceback", r.stderr)

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
