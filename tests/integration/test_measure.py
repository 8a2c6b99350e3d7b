"""Measuring a job on the instance (sh:run{measure=true}, sh:measure) on the local provider,
whose plans the kernel enforces: a job that allocates more than the small plan's memory is
OOM-killed there with a warning, and runs clean on a larger plan; the figures (peak memory,
vCPU, memory limit) come from the samples the instance gave. The dry-run plan shows the
measured steps. No instance, user or cgroup is left behind."""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from common import BIN, env, wait_ready

# The job touches `mb` MiB and ends at once: the peak is the kernel's own
# high-water mark, so no timing decides whether a sample saw it.
JOB = r'''
local ephrun = require "ephrun"
return ephrun.recipe { name = "measure-test",
  params = { plan = { default = "local-1c-256m" }, mb = { type = "number", default = 64 } },
  run = function(p)
    local cloud = ephrun.provider("local")
    local box <close> = cloud:launch { plan = p.plan, ttl = "10m" }
    local sh <close> = box:ssh()
    local cmd = ("python3 -c 'b = bytearray(%d << 20)\nfor i in range(0, len(b), 4096): b[i] = 1'"):format(p.mb)
    local r = sh:run(cmd, { measure = true, check = false })
    local cores = r.samples[#r.samples] and r.samples[#r.samples].cores
    local both, figures = sh:measure(function(s)
      s:run("nproc", { stream = false })
      return s:run("echo second", { stream = false })
    end)
    print("RESULT " .. ephrun.json.encode { code = r.code, peak_mem = r.peak_mem, mem_total = r.mem_total,
      peak_swap = r.peak_swap, cpu_avg = r.cpu_avg, cpu_peak = r.cpu_peak, vcpu = r.vcpu, oom = r.oom_kills,
      warnings = r.warnings, samples = #r.samples, cores = cores and #cores or -1, source = r.source,
      disk = r.disk_peak, fn_out = both.stdout, fn_samples = figures and #figures.samples or -1, fn_vcpu = figures and figures.vcpu })
  end }
'''

MiB = 1 << 20

HOLD = r'''
local ephrun = require "ephrun"
return ephrun.recipe { name = "measure-hold", params = { release = { default = "" } },
  run = function(p)
    local box <close> = ephrun.provider("local"):launch { ttl = "10m" }
    local sh <close> = box:ssh()
    print("DIR " .. box.raw.dir)
    io.stdout:flush()
    sh:run("echo JOB-STARTED; while [ ! -e " .. ephrun.shell_quote(p.release) .. " ]; do sleep 0.1; done",
      { measure = true })
  end }
'''


# Two measured commands on the small plan: one the OOM killer ends, one that
# fits; the recipe prints what its own results said, for the summary to match.
SUMMARY = r'''
local ephrun = require "ephrun"
return ephrun.recipe { name = "measure-summary", params = { fail = { default = false } },
  run = function(p)
    local box <close> = ephrun.provider("local"):launch { plan = "local-1c-256m", ttl = "10m" }
    local sh <close> = box:ssh()
    local touch = "python3 -c 'b = bytearray(%d << 20)\nfor i in range(0, len(b), 4096): b[i] = 1'"
    local seen = {}
    for i, mb in ipairs { 400, 16 } do
      local r = sh:run(touch:format(mb), { measure = true, check = false })
      seen[i] = { code = r.code, peak_mem = r.peak_mem, peak_swap = r.peak_swap, cpu_avg = r.cpu_avg,
        cpu_peak = r.cpu_peak, mem_total = r.mem_total, warnings = ephrun.json.array(r.warnings) }
    end
    print("SEEN " .. ephrun.json.encode { id = box.id, runs = seen })
    if p.fail then error("the check after the measured jobs failed", 0) end
  end }
'''

# A measured job that fills most of a small filesystem.
DISK = r'''
local ephrun = require "ephrun"
return ephrun.recipe { name = "measure-disk", params = { mnt = {}, mb = { type = "number" } },
  run = function(p)
    local box <close> = ephrun.provider("local"):launch { ttl = "10m" }
    local sh <close> = box:ssh()
    local q = ephrun.shell_quote
    local r = sh:run(("head -c %d /dev/zero > %s/fill"):format(p.mb << 20, q(p.mnt)), { measure = { paths = { p.mnt } } })
    sh:run("rm -f " .. q(p.mnt .. "/fill"))
    print("SEEN " .. ephrun.json.encode { disk = r.disk_peak[p.mnt], warnings = ephrun.json.array(r.warnings) })
  end }
'''


INTERRUPTED = r'''
local ephrun = require "ephrun"
return ephrun.recipe { name = "measure-interrupted",
  run = function()
    local box <close> = ephrun.provider("local"):launch { ttl = "10m" }
    local sh <close> = box:ssh()
    sh:run("echo one", { measure = true })
    print("MEASURED")
    io.stdout:flush()
    sh:run("sleep 600")
  end }
'''


def samplers():
    """pids of sampler loops (their script names their /tmp/ephrun-measure-* directory)."""
    found = []
    for f in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(f, "rb") as fh:
                if re.search(rb"d='/tmp/ephrun-measure-[a-z]{12}'", fh.read()):
                    found.append(int(f.split("/")[2]))
        except OSError:
            pass
    return found


class Measure(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-measured-job-")
        self.recipe = os.path.join(self.tmp, "job.lua")
        with open(self.recipe, "w") as f:
            f.write(JOB)
        self.env = env(EPHRUN_HOME=os.path.join(self.tmp, "home"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def cgroups(self, ids):
        """Plan cgroups of the local instances `ids` that still exist."""
        return [os.path.join(d, "ephrun-" + i) for i in ids
                for d in ("/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpuacct")
                if os.path.isdir(os.path.join(d, "ephrun-" + i))]

    def ephrun(self, *args):
        r = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=180, env=self.env, cwd=self.tmp)
        # only this run's instances: other runs on the machine make and remove cgroups meanwhile
        ids = set(re.findall(r"destroyed local instance (loc-[0-9a-f]{10})", r.stdout + r.stderr))
        self.assertTrue(ids, "no local instance was destroyed: " + r.stdout + r.stderr)
        self.assertEqual(self.cgroups(ids), [], "a plan's cgroup was left behind")
        return r

    def result(self, r):
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
        self.assertTrue(line, r.stdout + r.stderr)
        return json.loads(line[0][len("RESULT "):])

    @unittest.skipUnless(os.geteuid() == 0, "plans are enforced with cgroups and per-instance users as root")
    def test_small_plan_oom_large_plan_clean(self):
        small = self.ephrun(self.recipe, "plan=local-1c-256m", "mb=400")
        s = self.result(small)
        out = small.stdout + small.stderr
        self.assertEqual(s["source"], "cgroup", "the local plan's memory limit is not what was measured")
        self.assertNotEqual(s["code"], 0, "a 400 MiB job ran within a 256 MiB plan")
        self.assertGreaterEqual(s["oom"], 1)
        self.assertIn("the OOM killer ended", out)
        self.assertTrue(any("OOM killer" in w for w in s["warnings"]), s)
        self.assertEqual(s["mem_total"], 256 * MiB)
        self.assertGreater(s["peak_mem"], 200 * MiB)
        self.assertLessEqual(s["peak_mem"], 256 * MiB)
        self.assertEqual(s["vcpu"], 1)
        self.assertEqual(s["cores"], 1)
        self.assertIn("memory peak", out)

        large = self.ephrun(self.recipe, "plan=local-2c-1g", "mb=400")
        g = self.result(large)
        out = large.stdout + large.stderr
        self.assertEqual(g["code"], 0, out)
        self.assertEqual(g["oom"], 0)
        self.assertFalse(g["warnings"], g)
        self.assertNotIn("OOM killer", out)
        self.assertEqual(g["mem_total"], 1024 * MiB)
        self.assertGreater(g["peak_mem"], 400 * MiB)
        self.assertEqual(g["vcpu"], 2)
        self.assertEqual(g["cores"], 2)
        for fig in (s, g):
            self.assertGreaterEqual(fig["samples"], 2)
            self.assertTrue(0 <= fig["cpu_avg"] <= 100 and 0 <= fig["cpu_peak"] <= 100, fig)
            self.assertEqual(fig["peak_swap"], 0)
            self.assertTrue(0 < fig["disk"]["/"] <= 100 and 0 < fig["disk"]["."] <= 100, fig["disk"])
        # sh:measure(fn) returns fn's result and its own figures
        self.assertEqual(g["fn_out"], "second\n")
        self.assertGreaterEqual(g["fn_samples"], 2)
        self.assertEqual(g["fn_vcpu"], 2)

    def seen(self, text):
        line = [ln for ln in text.splitlines() if ln.startswith("SEEN ")]
        self.assertTrue(line, text)
        return json.loads(line[0][len("SEEN "):])

    @unittest.skipUnless(os.geteuid() == 0, "plans are enforced with cgroups and per-instance users as root")
    def test_run_summary_and_json_carry_every_measured_command(self):
        path = os.path.join(self.tmp, "summary.lua")
        with open(path, "w") as f:
            f.write(SUMMARY)
        r = self.ephrun(path, "--json")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # stdout is the run's JSON document alone: what the recipe printed went to stderr
        doc = json.loads(r.stdout)
        seen = self.seen(r.stderr)
        self.assertEqual((doc["ok"], doc["status"], doc["exit_code"], doc["recipe"]), (True, "ok", 0, "measure-summary"))
        self.assertEqual(len(doc["measurements"]), 2, doc)
        big, small = doc["measurements"]
        for m, own in zip(doc["measurements"], seen["runs"]):
            for k in ("peak_mem", "peak_swap", "cpu_avg", "cpu_peak", "mem_total", "warnings"):
                self.assertEqual(m[k], own[k], k)
            self.assertEqual((m["provider"], m["instance"], m["plan"]), ("local", seen["id"], "local-1c-256m"))
            self.assertGreaterEqual(m["samples"], 2)
        self.assertNotEqual(seen["runs"][0]["code"], 0, "a 400 MiB job ran within a 256 MiB plan")
        self.assertIn("bytearray(400 << 20)", big["command"])
        self.assertGreaterEqual(big["oom_kills"], 1)
        self.assertTrue(any("OOM killer ended" in w for w in big["warnings"]), big)
        self.assertEqual((small["oom_kills"], small["warnings"]), (0, []))
        self.assertGreater(small["peak_mem"], 16 * MiB)
        self.assertLess(small["peak_mem"], big["peak_mem"])
        # the run summary, after the cleanups, lists both with their figures and the warning
        err = r.stderr
        tail = err[err.index("destroyed local instance " + seen["id"]):]
        self.assertIn("run summary: 2 measured command(s)", tail)
        human = lambda b: "%.1f MB" % (b / 1e6)
        line1 = [ln for ln in tail.splitlines() if "1. `python3" in ln]
        self.assertTrue(line1, tail)
        self.assertIn("local instance %s (local-1c-256m)" % seen["id"], line1[0])
        self.assertIn("memory peak %s of 268.4 MB" % human(big["peak_mem"]), line1[0])
        self.assertIn("cpu avg %.0f%% (peak %.0f%%) of 1 vCPU" % (big["cpu_avg"], big["cpu_peak"]), line1[0])
        self.assertIn("OOM kills", line1[0])
        self.assertRegex(tail, r"1\. `python3[^\n]*\n[^\n]*warning: the OOM killer ended")
        self.assertIn("2. `python3", tail)
        self.assertIn("memory peak %s of 268.4 MB" % human(small["peak_mem"]), tail)

    @unittest.skipUnless(os.geteuid() == 0, "plans are enforced with cgroups and per-instance users as root")
    def test_a_failed_run_still_reports_its_figures_under_json(self):
        path = os.path.join(self.tmp, "summary.lua")
        with open(path, "w") as f:
            f.write(SUMMARY)
        r = self.ephrun(path, "fail=true", "--json")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual((doc["ok"], doc["status"], doc["exit_code"]), (False, "failed", 1))
        self.assertIn("the check after the measured jobs failed", doc["error"])
        self.assertEqual([m["peak_mem"] for m in doc["measurements"]],
                         [s["peak_mem"] for s in self.seen(r.stderr)["runs"]])
        self.assertIn("run summary: 2 measured command(s)", r.stderr)

    def test_an_interrupted_run_reports_what_it_measured_under_json(self):
        path = os.path.join(self.tmp, "interrupted.lua")
        with open(path, "w") as f:
            f.write(INTERRUPTED)
        p = subprocess.Popen([BIN, path, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=self.env, cwd=self.tmp)
        try:
            for line in p.stderr:  # under --json the recipe's own output goes to stderr
                if "MEASURED" in line:
                    break
            p.send_signal(signal.SIGINT)
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 130, err)
        doc = json.loads(out)
        self.assertEqual((doc["ok"], doc["status"], doc["exit_code"]), (False, "interrupted", 130))
        self.assertEqual([m["command"] for m in doc["measurements"]], ["echo one"])
        self.assertIn("run summary: 1 measured command(s)", err)
        self.assertEqual(os.listdir(os.path.join(self.tmp, "home", "local")), [])

    @unittest.skipUnless(os.geteuid() == 0, "mounting a small filesystem needs root")
    def test_a_job_that_fills_a_small_filesystem_warns_about_it(self):
        mnt = os.path.join(self.tmp, "small")
        os.mkdir(mnt)
        os.chmod(self.tmp, 0o711)  # the instance's own user reaches the mount
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=1777", "ephrun-test-small", mnt], check=True)
        self.addCleanup(subprocess.run, ["umount", mnt])
        path = os.path.join(self.tmp, "disk.lua")
        with open(path, "w") as f:
            f.write(DISK)
        r = self.ephrun(path, "mnt=" + mnt, "mb=15")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        full = self.seen(r.stdout)
        self.assertGreater(full["disk"], 90, full)
        self.assertEqual(len(full["warnings"]), 1, full)
        self.assertIn("disk %s was %.0f%% full during the job" % (mnt, full["disk"]), full["warnings"][0])
        self.assertRegex(r.stderr, r"warning: disk %s was 9\d%% full" % re.escape(mnt))
        r = self.ephrun(path, "mnt=" + mnt, "mb=4")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        some = self.seen(r.stdout)
        self.assertTrue(20 < some["disk"] < 90, some)
        self.assertEqual(some["warnings"], [])
        self.assertNotIn("full during the job", r.stderr)

    def test_sampler_ends_with_the_connection_when_ephrun_is_killed(self):
        path = os.path.join(self.tmp, "hold.lua")
        with open(path, "w") as f:
            f.write(HOLD)
        release = os.path.join(self.tmp, "release")
        before = set(samplers())
        p = subprocess.Popen([BIN, path, "release=" + release], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env=self.env, cwd=self.tmp)
        inst_dir = None
        try:
            inst_dir = wait_ready(p, "DIR ", timeout=60).split(" ", 1)[1]
            wait_ready(p, "JOB-STARTED", timeout=60)
            self.assertTrue(set(samplers()) - before, "no sampler runs during the measured job")
            p.kill()
            p.wait(timeout=30)
            deadline = time.time() + 30
            while set(samplers()) - before and time.time() < deadline:
                time.sleep(0.1)
            left = set(samplers()) - before
            self.assertEqual(left, set(), "the sampler outlived the SSH connection: " + " | ".join(
                "%d %s" % (pid, open("/proc/%d/cmdline" % pid, "rb").read()[:300]) for pid in left
                if os.path.exists("/proc/%d" % pid)))
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            with open(release, "w"):
                pass
            if inst_dir and os.path.exists(os.path.join(inst_dir, "destroy.sh")):
                subprocess.run(["sh", os.path.join(inst_dir, "destroy.sh")], timeout=60)

    def test_dry_run_plan_shows_the_measured_steps(self):
        r = subprocess.run([BIN, "--dry-run", self.recipe], capture_output=True, text=True, timeout=60,
                           env=self.env, cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("measured: CPU, memory, swap, disk and network sampled once a second", r.stdout)
        self.assertIn("sample CPU, memory, swap, disk and network once a second while the job runs", r.stdout)
        self.assertIn("echo second", r.stdout, "the steps inside sh:measure(fn) are missing from the plan")


if __name__ == "__main__":
    unittest.main()
