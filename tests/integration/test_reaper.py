"""`ephrun reaper` and `ephrun reap --expired` against the Vultr stand-in.

Vultr's lifetime timer (`shutdown -h +N` in user-data) only halts an instance, and a halted
instance still bills. The reaper installed with `ephrun reaper install` (a real crontab line
here: this machine has no systemd user session) must delete an expired instance with no
launcher left, leave an orphan whose lifetime has not passed, and carry no secret. The plan
says what the timer does and warns while no reaper is installed. The systemd units are
checked through the plan of `install via=systemd`, which shows their text."""
import calendar
import fcntl
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import unittest

from common import BIN, env, wait_ready
from vultr import VultrStandin

KEY = "vultr-reaper-key-0123456789abcdef"

TWO = r'''
local ephrun = require "ephrun"
return ephrun.recipe { name = "reaper-test", run = function()
  local cloud = ephrun.provider("vultr")
  local short <close> = cloud:launch { plan = "vc2-1c-1gb", region = "ewr", ttl = "2s" }
  local long <close> = cloud:launch { plan = "vc2-1c-1gb", region = "ewr", ttl = "1h" }
  print("READY " .. short.id .. " " .. long.id)
  io.stdout:flush()
  ephrun.time.sleep(600)
end }
'''


def crontab():
    """This user's crontab, or None when there is none."""
    r = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


def as_cron_runs(line, home):
    """Runs a crontab entry's command the way cron does: /bin/sh, a bare environment, `\\%` → `%`."""
    fields = line.split(None, 5)
    cmd = fields[5].replace("\\%", "%")
    cron_env = {"HOME": home, "LOGNAME": "root", "SHELL": "/bin/sh", "PATH": "/usr/bin:/bin"}
    return subprocess.run(["/bin/sh", "-c", cmd], env=cron_env, capture_output=True, text=True, timeout=120)


@unittest.skipUnless(shutil.which("crontab"), "needs cron's crontab (bash scripts/setup.sh)")
class Reaper(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-reaper-test-")
        self.home = os.path.join(self.tmp, "state")
        self.config = os.path.join(self.tmp, "config")
        os.makedirs(self.config, mode=0o700)
        with open(os.path.join(self.config, ".env"), "w") as f:
            f.write("VULTR_API_KEY=%s\n" % KEY)
        os.chmod(os.path.join(self.config, ".env"), 0o600)
        self.src = os.path.join(self.tmp, "src")
        os.makedirs(self.src)
        self.recipe = os.path.join(self.tmp, "two.lua")
        with open(self.recipe, "w") as f:
            f.write(TWO)
        self.crontab_before = crontab()
        self.v = VultrStandin(api_key=KEY)
        self.v.__enter__()
        self.env = env(EPHRUN_HOME=self.home, EPHRUN_VULTR_POLL="0.5", **self.v.env())
        self.outputs = []

    def tearDown(self):
        try:
            # Whatever the test left in the crontab goes (its lines name its temporary directory);
            # the lines of others stay.
            now = crontab()
            if now is not None and now != self.crontab_before:
                kept = [l for l in now.splitlines() if self.tmp not in l]
                if not kept and self.crontab_before is None:
                    subprocess.run(["crontab", "-r"], check=True)
                else:
                    subprocess.run(["crontab", "-"], input="".join(l + "\n" for l in kept), text=True, check=True)
            for text in self.outputs:
                self.assertNotIn(KEY, text, "the API key leaked into output")
            self.assertEqual(self.v.leftovers(), {"instances": [], "ssh_keys": []}, "left in the stand-in")
        finally:
            self.v.__exit__(None, None, None)
            shutil.rmtree(self.tmp, ignore_errors=True)

    def ephrun(self, *args, timeout=120):
        r = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=timeout, env=self.env, cwd=self.tmp)
        self.outputs += [r.stdout, r.stderr]
        return r

    def instance(self, iid):
        return next((i for i in self.v.state()["instances"] if i["id"] == iid), None)

    def run_job(self, run):
        """Runs the installed job until it runs to its end: where a cron daemon is running, it may
        fire the same job meanwhile, and then ours exits 75 (flock: another reap is running)."""
        deadline = time.monotonic() + 120
        while True:
            r = run()
            if r.returncode != 75 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def wait_expired(self, iid):
        """Until the instance's `ephrun-expires` tag is in the past (its lifetime is 2 s)."""
        tags = dict(t.split("=", 1) for t in self.instance(iid)["tags"])
        expires = calendar.timegm(time.strptime(tags["ephrun-expires"], "%Y-%m-%dT%H:%M:%SZ"))
        self.assertLess(expires - time.time(), 60, tags)
        while time.time() <= expires + 1:
            time.sleep(0.05)

    def our_cron_lines(self):
        before = (self.crontab_before or "").splitlines()
        return [l for l in (crontab() or "").splitlines() if l not in before]

    def test_dry_run_says_what_the_timer_does_and_warns_without_a_reaper(self):
        r = self.ephrun("deploy-fast", "provider=vultr", "plan=vc2-4c-8gb", "ttl=2h", "src=" + self.src, "--dry-run")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("vultr's timer stops the CPU only", r.stdout)
        self.assertIn("a halted instance still bills", r.stdout)
        self.assertIn("WARNING: no reaper is installed", r.stdout)
        self.assertIn("price $0.0548/hour, worst case unbounded", r.stdout)
        self.assertNotIn("× 2h", r.stdout)
        r = self.ephrun("reaper", "install", "via=cron", "env_dir=" + self.config, "every=5m")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = self.ephrun("deploy-fast", "provider=vultr", "plan=vc2-4c-8gb", "ttl=2h", "src=" + self.src, "--dry-run")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn("WARNING: no reaper", r.stdout)
        self.assertRegex(r.stdout, r"the reaper \(ephrun-reaper-\w+, every 5m 00s\) deletes it once expired")
        self.assertIn("price $0.0548/hour × 2h 00m + 5m 00s reaper interval = $0.11 worst case", r.stdout)
        r = self.ephrun("deploy-fast", "provider=local", "src=" + self.src, "--dry-run")
        self.assertIn("local's timer ends billing", r.stdout)
        if os.access("/var/spool/cron/crontabs", os.R_OK):
            # a job removed by hand (crontab -e) is noticed where cron's spool can be read
            key = [l for l in self.our_cron_lines() if not l.startswith("#")][0].split()[-1]
            others = [l for l in crontab().splitlines() if key not in l]
            subprocess.run(["crontab", "-"], input="".join(l + "\n" for l in others), text=True, check=True)
            r = self.ephrun("deploy-fast", "provider=vultr", "plan=vc2-4c-8gb", "src=" + self.src, "--dry-run")
            self.assertIn("WARNING: no reaper is installed", r.stdout)
            r = self.ephrun("reaper", "status")
            self.assertIn("No reaper is installed", r.stdout)
            return
        r = self.ephrun("reaper", "remove")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.our_cron_lines(), [])

    def test_installed_cron_job_deletes_an_expired_instance_and_leaves_the_rest(self):
        p = subprocess.Popen([BIN, "--yes", self.recipe], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=self.env, cwd=self.tmp)
        try:
            short, long_ = wait_ready(p, "READY", timeout=90).split()[1:]
        finally:
            p.kill()                      # SIGKILL: no launcher is left to end anything
            p.wait()
            p.stdout.close()
            p.stderr.close()

        r = self.ephrun("reaper", "install", "env_dir=" + self.config, "every=2m")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("Reaper installed on this machine (cron", r.stdout)
        lines = self.our_cron_lines()
        self.assertEqual(len(lines), 2, crontab())
        job = [l for l in lines if not l.startswith("#")][0]
        self.assertTrue(job.startswith("*/2 * * * * "), job)
        self.assertIn("reap' '--expired' '--yes'", job)
        self.assertIn("VULTR_API_URL='%s'" % self.v.url, job)
        self.assertNotIn(KEY, crontab() or "", "the API key must not be in the crontab")
        r = self.ephrun("reaper", "status")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("OK: its crontab line is present", r.stdout)

        # The stand-in's clock passes the short instance's `shutdown -h +1`: it halts and still bills.
        self.v.advance(61)
        deadline = time.monotonic() + 30
        while self.instance(short)["power_status"] != "stopped" and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(self.instance(short)["power_status"], "stopped", "the lifetime timer did not halt it")
        self.assertEqual(self.instance(long_)["power_status"], "running")
        self.wait_expired(short)

        # A reap still running (say, waiting out a locked instance) is not joined by the next one.
        with open(os.path.join(self.home, "reaper.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            r = as_cron_runs(job, self.tmp)
            self.assertEqual(r.returncode, 75, r.stdout + r.stderr)
            self.assertIsNotNone(self.instance(short))
        self.run_job(lambda: as_cron_runs(job, self.tmp))
        with open(os.path.join(self.home, "reaper.log")) as f:
            log = f.read()
        self.outputs.append(log)
        self.assertIn("destroyed vultr %s (expired)" % short, log)
        self.assertIsNone(self.instance(short), "the reaper did not end the billing of the expired instance")
        self.assertIsNotNone(self.instance(long_), "an orphan with time left must wait for its expiry")
        self.assertEqual(len(self.v.state()["ssh_keys"]), 1, "the run's key has no expiry: --expired leaves it")

        r = self.ephrun("reaper", "remove")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.our_cron_lines(), [])
        if self.crontab_before is None:
            self.assertIsNone(crontab(), "remove left an empty crontab")
        r = self.ephrun("reaper", "status")
        self.assertIn("No reaper is installed", r.stdout)
        r = self.ephrun("reap", "--yes")   # the orphan and the key, as a person would
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    @unittest.skipUnless(os.getuid() == 0, "needs root for the test sshd and its user")
    def test_install_on_a_permanent_server_through_static(self):
        from sshd import Sshd
        user = "ephrun-reaper-t"
        with Sshd(user=user) as d:
            try:
                self.remote_reaper(d, user)
            finally:
                subprocess.run(["crontab", "-r", "-u", user], capture_output=True)
                subprocess.run(["userdel", "-r", user], capture_output=True)

    def remote_reaper(self, d, user):
        keys = os.path.join(self.tmp, "keys")
        os.makedirs(keys)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys + "/id"], check=True)
        with open(keys + "/id.pub") as f:
            d.authorize(f.read())
        with open(keys + "/known_hosts", "w") as f:
            f.write("[127.0.0.1]:%d %s\n" % (d.port, d.host_key_pub))
        server_home = os.path.expanduser("~" + user)
        # The server holds its own key file; the job reads it there.
        conf = os.path.join(server_home, ".config", "ephrun")
        os.makedirs(conf, mode=0o700, exist_ok=True)
        with open(os.path.join(conf, ".env"), "w") as f:
            f.write("VULTR_API_KEY=%s\n" % KEY)
        os.chmod(os.path.join(conf, ".env"), 0o600)
        subprocess.run(["chown", "-R", user + ":", os.path.join(server_home, ".config")], check=True)
        server = ["host=127.0.0.1", "port=%d" % d.port, "user=" + user, "key_file=" + keys + "/id",
                  "known_hosts=" + keys + "/known_hosts"]

        r = self.ephrun("reaper", "install", "bin=" + os.path.abspath(BIN), "every=3m", *server)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("Reaper installed on %s@127.0.0.1:%d (cron, ephrun-reaper)" % (user, d.port), r.stdout)
        tab = subprocess.run(["crontab", "-l", "-u", user], capture_output=True, text=True).stdout
        self.assertNotIn(KEY, tab)
        job = [l for l in tab.splitlines() if l.endswith("# ephrun-reaper") and not l.startswith("#")]
        self.assertEqual(len(job), 1, tab)
        self.assertIn("cd '%s' && EPHRUN_HOME='%s/.local/state/ephrun'" % (conf, server_home), job[0])
        # This machine's plans know a reaper covers Vultr.
        r = self.ephrun("deploy-fast", "provider=vultr", "src=" + self.src, "--dry-run")
        self.assertIn("the reaper (ephrun-reaper, every 3m 00s) deletes it once expired", r.stdout)

        p = subprocess.Popen([BIN, "--yes", self.recipe], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=self.env, cwd=self.tmp)
        try:
            short, long_ = wait_ready(p, "READY", timeout=90).split()[1:]
        finally:
            p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()
        self.wait_expired(short)
        # As cron on the server would run it: that user, a bare environment.
        fields = job[0].split(None, 5)
        cron_env = ["HOME=" + server_home, "LOGNAME=" + user, "SHELL=/bin/sh", "PATH=/usr/bin:/bin"]
        self.run_job(lambda: subprocess.run(["runuser", "-u", user, "--", "env", "-i", *cron_env, "/bin/sh", "-c",
                                             fields[5].replace("\\%", "%")], capture_output=True, text=True,
                                            timeout=120))
        self.assertIsNone(self.instance(short), "the server's reaper did not delete the expired instance")
        self.assertIsNotNone(self.instance(long_))

        r = self.ephrun("reaper", "status", *server)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("OK: its crontab line is present", r.stdout)
        self.assertIn("destroyed vultr %s (expired)" % short, r.stdout)   # the tail of the server's reaper.log
        r = self.ephrun("reaper", "remove", *server)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        tab = subprocess.run(["crontab", "-l", "-u", user], capture_output=True, text=True).stdout
        self.assertNotIn("ephrun-reaper", tab)
        r = self.ephrun("reap", "--yes")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_systemd_units_run_the_same_job_without_secrets(self):
        r = self.ephrun("reaper", "install", "via=systemd", "env_dir=" + self.config, "every=10m",
                        "--dry-run", "--json")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        plan = json.loads(r.stdout)
        units = {}
        for step in plan["steps"]:
            m = re.match(r"write (.*/systemd/user/(ephrun-reaper-\w+\.(service|timer)))$", step["what"])
            if m:
                units[m.group(3)] = (m.group(1), "\n".join(step["details"]) + "\n")
        self.assertEqual(sorted(units), ["service", "timer"], r.stdout)
        service, timer = units["service"][1], units["timer"][1]
        self.assertIn("Type=oneshot\n", service)
        self.assertIn("WorkingDirectory=%s\n" % self.config, service)
        self.assertIn("Environment=EPHRUN_HOME=%s\n" % self.home, service)
        self.assertIn("Environment=VULTR_API_URL=%s\n" % self.v.url, service)
        self.assertRegex(service, r"\nExecStart=/\S+/ephrun reap --expired --yes -q providers=vultr\n")
        self.assertIn("OnUnitActiveSec=600s\n", timer)
        self.assertIn("WantedBy=timers.target\n", timer)
        self.assertNotIn(KEY, r.stdout + r.stderr)
        self.assertFalse(os.path.exists(units["service"][0]), "a dry run writes nothing")
        if shutil.which("systemd-analyze"):
            d = os.path.join(self.tmp, "units")
            os.makedirs(d)
            for kind, (path, text) in units.items():
                with open(os.path.join(d, os.path.basename(path)), "w") as f:
                    f.write(text)
            v = subprocess.run(["systemd-analyze", "verify", os.path.join(d, os.path.basename(units["timer"][0]))],
                               capture_output=True, text=True, cwd=d)
            self.assertEqual(v.returncode, 0, v.stdout + v.stderr)

    def test_systemd_without_a_user_session_says_to_use_cron(self):
        rt = os.environ.get("XDG_RUNTIME_DIR", "")
        if rt and os.path.exists(os.path.join(rt, "systemd", "private")):
            self.skipTest("this machine has a systemd user session")
        self.env["XDG_CONFIG_HOME"] = os.path.join(self.tmp, "xdg")
        r = self.ephrun("reaper", "install", "via=systemd", "env_dir=" + self.config)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("did not take the timer", r.stderr)
        self.assertIn("install with via=cron", r.stderr)
        units = os.path.join(self.tmp, "xdg", "systemd", "user")
        self.assertEqual(os.listdir(units) if os.path.isdir(units) else [], [], "unit files left behind")
        self.assertIn("No reaper is installed", self.ephrun("reaper", "status").stdout)

    def test_reap_expired_leaves_what_has_time_left(self):
        p = subprocess.Popen([BIN, "--yes", self.recipe], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=self.env, cwd=self.tmp)
        try:
            short, long_ = wait_ready(p, "READY", timeout=90).split()[1:]
            # While its run is alive, --expired still ends what is past its lifetime.
            self.wait_expired(short)
            r = self.ephrun("reap", "--expired", "--yes")
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("destroyed vultr %s (expired)" % short, r.stdout)
            self.assertIsNone(self.instance(short))
            self.assertIsNotNone(self.instance(long_))
        finally:
            p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()
        r = self.ephrun("reap", "--expired", "--yes")
        self.assertIn("Nothing to reap.", r.stdout)   # the orphan has time left
        self.assertIsNotNone(self.instance(long_))
        r = self.ephrun("ls", "--expired")
        self.assertEqual(r.returncode, 2)
        self.assertIn("--expired only applies to `ephrun reap`", r.stderr)
        r = self.ephrun("reap", "--yes")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
