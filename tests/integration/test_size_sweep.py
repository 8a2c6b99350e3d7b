"""recipes/size-sweep.lua: one job on several plans in parallel, each instance destroyed
after, with a Markdown/CSV/JSON table and an SVG chart. On the local provider the plans'
limits are enforced, so a job bigger than the small plan's memory fails there (with the
OOM warning in the table) and the larger plan is the cheapest that met the target; the
figures in the table are the measured ones. On the Vultr stand-in, three plans run in
parallel, the table takes vCPU, memory and price from /plans, and nothing is left."""
import csv
import json
import os
import shutil
import subprocess
import tempfile
import unittest
import xml.etree.ElementTree as ET

from common import BIN, env
from vultr import VultrStandin

JOB = "import sys\nb = bytearray(int(sys.argv[1]) << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('done')\n"
KEY = "vultr-test-key-0123456789abcdef"


class SweepBase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-sweep-test-")
        self.src = os.path.join(self.tmp, "src")
        os.mkdir(self.src)
        with open(os.path.join(self.src, "job.py"), "w") as f:
            f.write(JOB)
        self.out = os.path.join(self.tmp, "out")
        self.env = env(EPHRUN_HOME=os.path.join(self.tmp, "home"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def sweep(self, *args):
        r = subprocess.run([BIN, "size-sweep", "src=" + self.src, "out=" + self.out, *args], capture_output=True,
                           text=True, timeout=300, env=self.env, cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r

    def report(self):
        with open(os.path.join(self.out, "sweep.csv")) as f:
            rows = {r["plan"]: r for r in csv.DictReader(f)}
        with open(os.path.join(self.out, "sweep.json")) as f:
            js = json.load(f)
        with open(os.path.join(self.out, "sweep.md")) as f:
            md = f.read()
        svg = ET.parse(os.path.join(self.out, "sweep.svg")).getroot()
        texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
        return rows, js, md, texts


@unittest.skipUnless(os.geteuid() == 0, "local plans are enforced with cgroups as root")
class LocalSweep(SweepBase):
    def test_small_plan_fails_and_the_larger_is_the_cheapest_that_met(self):
        r = self.sweep("plans=local-1c-256m,local-2c-1g", "job=python3 job.py 300", "repeat=2", "max_time=5m")
        rows, js, md, texts = self.report()
        small, large = rows["local-1c-256m"], rows["local-2c-1g"]
        self.assertEqual((small["vcpu"], small["memory_mb"]), ("1", "256"))
        self.assertEqual((large["vcpu"], large["memory_mb"]), ("2", "1024"))
        self.assertEqual(small["met_target"], "no")
        self.assertIn("OOM killer", small["note"])
        self.assertEqual(large["met_target"], "yes")
        self.assertEqual(large["note"], "")
        self.assertEqual(js["cheapest"], "local-2c-1g")
        self.assertIn("Cheapest plan that met the target: **local-2c-1g**", md)
        self.assertIn("Cheapest plan that met the target: **local-2c-1g**", r.stdout)
        # the figures are the measured ones: the job's 300 MiB within the 1 GiB limit,
        # the wall times those of the runs, the CPU figures of the samples
        plans = {p["plan"]: p for p in js["plans"]}
        big = plans["local-2c-1g"]
        self.assertEqual(len(big["times"]), 2)
        self.assertGreaterEqual(min(big["samples"]), 2)
        self.assertTrue(300 <= float(large["peak_mem_mb"]) <= 1024, large)
        self.assertAlmostEqual(float(large["peak_mem_mb"]), big["peak_mem"] / 1048576, delta=0.051)
        self.assertLessEqual(max(s["mem"] for s in big["series"]), big["peak_mem"])
        self.assertAlmostEqual(float(large["time_s"]), sorted(big["times"])[0] / 2 + sorted(big["times"])[1] / 2,
                               delta=0.0051)
        self.assertEqual(len(plans["local-1c-256m"]["times"]), 1, "a failed run is not repeated")
        self.assertIn("local-1c-256m", texts)
        self.assertIn("local-2c-1g", texts)
        self.assertIn("target", texts)
        self.assertIn("destroyed local instance", r.stderr + r.stdout)
        self.assertEqual(os.listdir(os.path.join(self.tmp, "home", "local")), [])

    def test_dry_run_writes_nothing(self):
        r = subprocess.run([BIN, "--dry-run", "size-sweep", "src=" + self.src, "out=" + self.out,
                            "plans=local-1c-256m,local-2c-1g", "job=python3 job.py 1"], capture_output=True,
                           text=True, timeout=60, env=self.env, cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("local plan=local-1c-256m", r.stdout)
        self.assertIn("local plan=local-2c-1g", r.stdout)
        self.assertIn("measured: CPU, memory", r.stdout)
        self.assertIn("size-sweep report in", r.stdout)
        self.assertFalse(os.path.exists(self.out))
        self.assertNotIn("Cheapest plan", r.stdout, "a dry-run printed a table of placeholder figures")


class VultrSweep(SweepBase):
    def test_three_plans_in_parallel_and_nothing_left(self):
        with VultrStandin(api_key=KEY) as v:
            self.env.update(v.env())
            self.env["EPHRUN_VULTR_POLL"] = "0.5"
            r = self.sweep("--yes", "provider=vultr", "plans=vc2-1c-1gb,vc2-1c-2gb,vc2-2c-4gb", "job=python3 job.py 8")
            self.assertNotIn(KEY, r.stdout + r.stderr)
            self.assertEqual(v.leftovers(), {"instances": [], "ssh_keys": []})
            creates = [e for e in v.state()["log"] if e["method"] == "POST" and e["path"] == "/v2/instances"]
            self.assertEqual(len(creates), 3)
        rows, js, md, texts = self.report()
        self.assertEqual(set(rows), {"vc2-1c-1gb", "vc2-1c-2gb", "vc2-2c-4gb"})
        self.assertEqual((rows["vc2-2c-4gb"]["vcpu"], rows["vc2-2c-4gb"]["memory_mb"]), ("2", "4096"))
        self.assertEqual(rows["vc2-1c-1gb"]["cost_per_hour_usd"], "%.4f" % (5 / 730))
        for row in rows.values():
            self.assertEqual(row["met_target"], "yes", row)
        # cost per run is the hourly price times the measured median time, and the cheapest is
        # the lowest of those (the 1 GB plan is not always it: its run may take twice as long)
        plans = {p["plan"]: p for p in js["plans"]}
        for name, p in plans.items():
            self.assertAlmostEqual(p["cost_run"], p["price_hour"] * p["time"] / 3600, places=12)
        self.assertEqual(js["cheapest"], min(plans, key=lambda n: (plans[n]["cost_run"], plans[n]["time"])))
        self.assertIn("Cost per run (USD)", texts)


if __name__ == "__main__":
    unittest.main()
