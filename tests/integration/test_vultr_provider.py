"""The Vultr provider and its recipes against the Vultr stand-in (tests/fakes/vultr), whose
instances are real sshds on 127.0.0.N with the host key from the run's user-data.

deploy-fast provider=vultr end to end; create-build-snapshot, then deploy-fast booting from
that snapshot; halt/start/resize/snapshots/paged listing (recipes/vultr_ops.lua); and faults:
a locked delete that clears later, a 429 storm, 500 on create, SSH never ready, SIGINT while
booting from a snapshot, SIGKILL then `ephrun reap`. After every test the stand-in holds no
instance and no per-run SSH key, and the API key appears in no output."""
import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from common import BIN, RECIPES, SRC, env, wait_ready
from vultr import VultrStandin

KEY = "vultr-test-key-0123456789abcdef"
OPS = os.path.join(RECIPES, "vultr_ops.lua")


class VultrProvider(unittest.TestCase):
    standin_options = {}

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-vultr-test-")
        self.v = VultrStandin(api_key=KEY, **self.standin_options)
        self.v.__enter__()
        self.src = os.path.join(self.tmp, "hello")
        shutil.copytree(os.path.join(SRC, "examples", "hello"), self.src)
        with open(os.path.join(self.src, ".env"), "w") as f:
            f.write("TOKEN=never-leaves\n")
        self.env = env(EPHRUN_HOME=os.path.join(self.tmp, "home"), EPHRUN_VULTR_POLL="0.5", **self.v.env())
        self.outputs = []

    def tearDown(self):
        try:
            left = self.v.leftovers()
            for text in self.outputs:
                self.assertNotIn(KEY, text, "the API key leaked into output")
            self.assertEqual(left, {"instances": [], "ssh_keys": []}, "left in the stand-in")
        finally:
            self.v.__exit__(None, None, None)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def ephrun(self, *args, timeout=180, **kw):
        r = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, env=self.env,
                           cwd=self.tmp, **kw)
        self.outputs += [r.stdout, r.stderr]
        return r

    def log(self, method=None, path=None):
        return [e for e in self.v.state()["log"]
                if (method is None or e["method"] == method) and (path is None or e["path"].startswith(path))]

    def start(self, *args):
        p = subprocess.Popen([BIN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=self.env, cwd=self.tmp)
        return p

    def wait_line(self, p, token, timeout=60):
        try:
            return wait_ready(p, token, timeout)
        except AssertionError:
            p.kill()
            p.wait()
            raise

    # -- recipes end to end -------------------------------------------------------------------

    def test_deploy_fast_on_vultr(self):
        out = os.path.join(self.tmp, "out")
        r = self.ephrun("--yes", "deploy-fast", "provider=vultr", "plan=vc2-4c-8gb", "region=ewr", "src=" + self.src,
                        "out=" + out, "-v", "--log-file", os.path.join(self.tmp, "run.log"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("destroyed: vultr instance", r.stdout)
        hello = os.path.join(out, "dist", "hello")
        self.assertEqual(subprocess.run([hello], capture_output=True, text=True).stdout,
                         "hello from an ephrun build\n")
        with open(os.path.join(self.tmp, "run.log")) as f:
            self.outputs.append(f.read())
        creates = self.log("POST", "/v2/instances")
        self.assertEqual([e["status"] for e in creates], [202])
        self.assertEqual([e["status"] for e in self.log("POST", "/v2/ssh-keys")], [201])
        self.assertEqual([e["status"] for e in self.log("DELETE", "/v2/ssh-keys/")], [204])
        self.assertEqual(self.v.state()["rate_limited"], 0)

    def test_user_data_and_tags_carry_no_secret(self):
        p = self.start("--yes", OPS, "mode=hang")
        iid = self.wait_line(p, "READY").split()[1]
        inst = [i for i in self.v.state()["instances"] if i["id"] == iid][0]
        tags = dict(t.split("=", 1) for t in inst["tags"])
        self.assertEqual(tags["ephrun-recipe"], "vultr-ops")
        self.assertIn("ephrun-expires", tags)
        ud = json.loads(subprocess.run(
            ["curl", "-s", "-H", "Authorization: Bearer " + KEY, self.v.url + "/instances/%s/user-data" % iid],
            capture_output=True, text=True).stdout)["user_data"]["data"]
        text = base64.b64decode(ud).decode()
        self.assertTrue(text.startswith("#cloud-config"))
        self.assertIn("ed25519_private", text)
        self.assertNotIn(KEY, text)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        self.outputs += [out, err]
        self.assertEqual(p.returncode, 130, err)

    def test_snapshot_then_boot_from_it(self):
        r = self.ephrun("--yes", "create-build-snapshot", "setup=echo prepared > marker.txt", "description=hello image")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        snaps = self.v.state()["snapshots"]
        self.assertEqual(len(snaps), 1)
        sid = snaps[0]["id"]
        self.assertEqual(snaps[0]["status"], "complete")
        self.assertIn("snapshot=" + sid, r.stdout)
        self.assertIn("destroyed", r.stdout)
        out = os.path.join(self.tmp, "out")
        r = self.ephrun("--yes", "deploy-fast", "provider=vultr", "snapshot=" + sid, "src=" + self.src, "out=" + out,
                        "build=grep -q prepared ../marker.txt && make")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.log("POST", "/v2/instances")[-1]["status"], 202)
        subprocess.run(["curl", "-s", "-X", "DELETE", "-H", "Authorization: Bearer " + KEY,
                        self.v.url + "/snapshots/" + sid], check=True)

    def test_halt_start_resize_snapshots_and_paged_lists(self):
        self.env["EPHRUN_VULTR_PAGE_SIZE"] = "2"
        r = self.ephrun("--yes", OPS, "count=5")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("OPS OK", r.stdout)
        self.assertTrue(any("cursor=" in e["path"] for e in self.log("GET", "/v2/instances")))
        self.assertEqual(self.v.state()["snapshots"], [])

    def test_dry_run_shows_price_and_sends_nothing(self):
        r = self.ephrun("deploy-fast", "provider=vultr", "plan=vc2-4c-8gb", "ttl=2h", "src=" + self.src, "--dry-run")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # a halted Vultr instance still bills: without a reaper nothing bounds the cost (test_reaper.py has one)
        self.assertIn("price $0.0548/hour, worst case unbounded", r.stdout)
        self.assertIn("vultr's timer stops the CPU only", r.stdout)
        self.assertIn("monthly_cost / 730", r.stdout)
        self.assertEqual([e for e in self.v.state()["log"] if e["method"] != "GET"], [])
        r = self.ephrun("deploy-fast", "provider=vultr", "plan=vc2-99c", "src=" + self.src, "--dry-run")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("unknown plan 'vc2-99c'", r.stderr)

    def test_missing_api_key_fails_before_anything_is_made(self):
        del self.env["VULTR_API_KEY"]
        r = self.ephrun("--yes", "deploy-fast", "provider=vultr", "src=" + self.src)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("VULTR_API_KEY is not set", r.stderr)
        self.assertEqual([e for e in self.v.state()["log"] if e["method"] != "GET"], [])

    def test_lifetime_ending_mid_build_says_so(self):
        # the stand-in's `shutdown -h +1` halts 2 s after boot: mid-command, like a TTL shorter than the build
        self.v.config(minute_seconds=2)
        recipe = os.path.join(self.tmp, "long.lua")
        with open(recipe, "w") as f:
            f.write('''local ephrun = require "ephrun"
return ephrun.recipe { name = "long-build", run = function()
  local box <close> = ephrun.provider("vultr"):launch { plan = "vc2-1c-1gb", region = "ewr", ttl = "2s" }
  local sh <close> = box:ssh()
  sh:run("sleep 60")
end }''')
        r = self.ephrun("--yes", recipe, timeout=120)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertRegex(r.stderr, r"vultr instance \S+ reached the end of its lifetime \(ttl 2(\.0)?s, at \S+Z\): "
                                   r"its lifetime timer ended it while this ran; give it a longer ttl")
        self.assertEqual(self.log("DELETE", "/v2/instances/")[-1]["status"], 204)

    # -- faults -------------------------------------------------------------------------------

    def test_locked_delete_is_retried_until_the_lock_clears(self):
        # the wait gives up while the instance is locked; its delete must still happen
        self.v.config(lock_seconds=6, boot_seconds=7)
        r = self.ephrun("--yes", OPS, "mode=wait-fails", "deadline=1s")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("not running", r.stderr)
        deletes = [e["status"] for e in self.log("DELETE", "/v2/instances/")]
        self.assertIn(500, deletes)
        self.assertEqual(deletes[-1], 204)

    def test_a_lock_that_outlasts_the_destroy_deadline_fails_loudly(self):
        self.v.config(lock_seconds=120, boot_seconds=121)
        self.env["EPHRUN_VULTR_DESTROY_DEADLINE"] = "3s"
        r = self.ephrun("--yes", OPS, "mode=wait-fails", "deadline=1s")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        iid = self.v.state()["instances"][0]["id"]
        self.assertIn("vultr instance %s is NOT destroyed" % iid, r.stderr)
        self.assertIn("curl -X DELETE", r.stderr)
        self.assertIn("/instances/" + iid, r.stderr)
        self.v.advance(120)  # the lock clears; delete it as the message says
        status, _, _ = self.v.api("DELETE", "/instances/" + iid)
        self.assertEqual(status, 204)

    def test_a_429_storm_does_not_reach_the_recipe(self):
        self.v.fault("GET", "^/v2/instances", 429, count=8)
        self.v.fault("POST", "^/v2/instances$", 429, count=3)
        r = self.ephrun("--yes", OPS, "count=2")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertGreaterEqual(len([e for e in self.v.state()["log"] if e["status"] == 429]), 11)

    def test_500_on_create_is_retried_without_a_second_instance(self):
        self.v.fault("POST", "^/v2/instances$", 500, count=2)
        out = os.path.join(self.tmp, "out")
        r = self.ephrun("--yes", "deploy-fast", "provider=vultr", "src=" + self.src, "out=" + out)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual([e["status"] for e in self.log("POST", "/v2/instances")], [500, 500, 202])

    def test_ssh_never_ready_destroys_the_instance(self):
        self.v.config(start_sshd=False)
        r = self.ephrun("--yes", "deploy-fast", "provider=vultr", "src=" + self.src, "ssh_deadline=3s")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("ssh", r.stderr)
        self.assertEqual(self.log("DELETE", "/v2/instances/")[-1]["status"], 204)

    def test_sigint_while_booting_from_a_snapshot_deletes_once_unlocked(self):
        r = self.ephrun("--yes", "create-build-snapshot", "setup=true")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        sid = self.v.state()["snapshots"][0]["id"]
        self.v.config(snapshot_lock_seconds=5, snapshot_boot_seconds=30)
        p = self.start("--yes", OPS, "mode=hang", "snapshot=" + sid)
        deadline = time.time() + 30
        while not self.v.state()["instances"] and time.time() < deadline:
            time.sleep(0.05)
        self.assertTrue(self.v.state()["instances"], "no instance was created")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        self.outputs += [out, err]
        self.assertEqual(p.returncode, 130, err)
        deletes = [e["status"] for e in self.log("DELETE", "/v2/instances/")]
        self.assertIn(500, deletes)
        self.assertEqual(deletes[-1], 204)
        subprocess.run(["curl", "-s", "-X", "DELETE", "-H", "Authorization: Bearer " + KEY,
                        self.v.url + "/snapshots/" + sid], check=True)

    def test_sigkill_leaves_what_reap_removes(self):
        p = self.start("--yes", OPS, "mode=hang")
        self.wait_line(p, "READY")
        p.kill()
        p.wait()
        self.assertEqual(len(self.v.state()["instances"]), 1)
        self.assertEqual(len(self.v.state()["ssh_keys"]), 1)
        r = self.ephrun("ls")
        self.assertIn("vultr", r.stdout)
        r = self.ephrun("reap", "--yes")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_reap_waits_out_the_lock_of_an_instance_a_killed_run_left(self):
        self.v.config(lock_seconds=4, boot_seconds=5)
        p = self.start("--yes", OPS, "mode=hang")
        deadline = time.time() + 30
        while not self.v.state()["instances"] and time.time() < deadline:
            time.sleep(0.05)
        p.kill()
        p.wait()
        self.assertEqual(len(self.v.state()["instances"]), 1)
        r = self.ephrun("reap", "--yes")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        deletes = [e["status"] for e in self.log("DELETE", "/v2/instances/")]
        self.assertIn(500, deletes)
        self.assertEqual(deletes[-1], 204)


if __name__ == "__main__":
    unittest.main()
