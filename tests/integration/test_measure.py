"""Measuring a job on the instance (sh:run{measure=true}, sh:measure) on the local provider,
whose plans the kernel enforces: a job that allocates more than the small plan's memory is
OOM-killed there with a warning, and runs clean on a larger plan; the figures (peak memory,
vCPU, memory limit) come from the samples the instance gave. The dry-run plan shows the
measured steps. No instance, user or cgroup is left behind."""
import json
import os
import shutil
import subprocess
import tempfile
import unittest

from common import BIN, env

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


class Measure(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-measure-test-")
        self.recipe = os.path.join(self.tmp, "job.lua")
        with open(self.recipe, "w") as f:
            f.write(JOB)
        self.env = env(EPHRUN_HOME=os.path.join(self.tmp, "home"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def cgroups(self):
        found = []
        for d in ("/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpuacct"):
            if os.path.isdir(d):
                found += [os.path.join(d, n) for n in os.listdir(d) if n.startswith("ephrun-loc-")]
        return found

    def ephrun(self, *args):
        before = set(self.cgroups())
        r = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=180, env=self.env, cwd=self.tmp)
        self.assertEqual(set(self.cgroups()) - before, set(), "a plan's cgroup was left behind")
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

    def test_dry_run_plan_shows_the_measured_steps(self):
        r = subprocess.run([BIN, "--dry-run", self.recipe], capture_output=True, text=True, timeout=60,
                           env=self.env, cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("measured: CPU, memory, swap, disk and network sampled once a second", r.stdout)
        self.assertIn("sample CPU, memory, swap, disk and network once a second while the job runs", r.stdout)
        self.assertIn("echo second", r.stdout, "the steps inside sh:measure(fn) are missing from the plan")


if __name__ == "__main__":
    unittest.main()
