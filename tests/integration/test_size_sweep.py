"""recipes/size-sweep.lua: one job on several plans in parallel, each instance destroyed
after, with a Markdown/CSV/JSON table, an SVG chart and a PNG drawn by gnuplot. On the local
provider the plans' limits are enforced, so a job bigger than the small plan's memory fails there (with the
OOM warning in the table) and the larger plan is the cheapest that met the target; the
figures in the table are the measured ones. On the Vultr stand-in, three plans run in
parallel, the table takes vCPU, memory and price from /plans, and nothing is left."""
import csv
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import unittest
import xml.etree.ElementTree as ET

from common import BIN, SRC, env
from aws import REGION as AWS_REGION, SECRET_KEY as AWS_SECRET, AwsStandin
from vultr import VultrStandin

JOB = "import sys\nb = bytearray(int(sys.argv[1]) << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('done')\n"
KEY = "vultr-test-key-0123456789abcdef"
# Each job leaves its mark, then waits until every plan's job has: the sweep passes only
# when the jobs ran at the same time (one after another, the first would wait in vain).
BARRIER = r"""
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
open(os.path.join(d, "%s-%d" % (os.uname().nodename, os.getpid())), "w").close()
end = time.time() + 120
while len(os.listdir(d)) < n:
    if time.time() > end:
        sys.exit("only %d of %d jobs ran at the same time" % (len(os.listdir(d)), n))
    time.sleep(0.05)
print("all %d jobs at once" % n)
"""


class SweepBase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-sweep-test-")
        self.src = os.path.join(self.tmp, "src")
        os.mkdir(self.src)
        with open(os.path.join(self.src, "job.py"), "w") as f:
            f.write(JOB)
        with open(os.path.join(self.src, "barrier.py"), "w") as f:
            f.write(BARRIER)
        self.out = os.path.join(self.tmp, "out")
        self.env = env(EPHRUN_HOME=os.path.join(self.tmp, "home"))

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def sweep(self, *args):
        r = subprocess.run([BIN, "size-sweep", "src=" + self.src, "out=" + self.out, *args], capture_output=True,
                           text=True, timeout=300, env=self.env, cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r

    def barrier(self, n):
        """The job's tail that waits until `n` jobs run at once (the instances' users reach it)."""
        os.chmod(self.tmp, 0o711)
        d = os.path.join(self.tmp, "barrier")
        os.mkdir(d)
        os.chmod(d, 0o1777)
        return "python3 barrier.py %s %d" % (d, n)

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

    def check_png(self, js, max_time):
        """sweep.png is a real PNG drawn from sweep.dat, whose figures are the report's."""
        if not shutil.which("gnuplot"):
            self.skipTest("gnuplot is not installed (scripts/setup.sh installs gnuplot-nox)")
        with open(os.path.join(self.out, "sweep.png"), "rb") as f:
            png = f.read()
        self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
        self.assertEqual(struct.unpack(">II", png[16:24]), (800, 600))
        with open(os.path.join(self.out, "sweep.dat")) as f:
            dat = [ln.split("\t") for ln in f.read().splitlines() if not ln.startswith("#")]
        self.assertEqual([d[1].strip('"') for d in dat], [p["plan"] for p in js["plans"]])
        for d, p in zip(dat, js["plans"]):
            self.assertAlmostEqual(float(d[2]), p["time"], places=5)
            if "cost_run" in p:
                self.assertAlmostEqual(float(d[3]), p["cost_run"], delta=1e-9 * max(1, p["cost_run"]))
            else:
                self.assertEqual(d[3], "NaN")
            self.assertEqual(int(d[4]), 0x3a9a4f if p["met"] else 0xb0b0b0)
        with open(os.path.join(self.out, "sweep.gp")) as f:
            gp = f.read()
        if max_time:
            self.assertIn("first %g to graph 1" % max_time, gp)
        else:
            self.assertNotIn("set arrow 1 from", gp)


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
        self.check_png(js, max_time=300)

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
            r = self.sweep("provider=vultr", "plans=vc2-1c-1gb,vc2-1c-2gb,vc2-2c-4gb",
                           "job=python3 job.py 8 && " + self.barrier(3), "--yes")
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



def prices_lua(region, plan):
    """On-demand price of `plan` and gp3 per GB-month in `region`, read from providers/aws/prices.lua."""
    with open(os.path.join(SRC, "providers", "aws", "prices.lua")) as f:
        text = f.read()
    block = re.search(r'\["%s"\] = \{(.*?)\n    \},' % re.escape(region), text, re.S).group(1)
    od = float(re.search(r'\["%s"\] = ([0-9.]+)' % re.escape(plan), block).group(1))
    gp3 = float(re.search(r"gp3_gb_month = ([0-9.]+)", block).group(1))
    return od, gp3, int(re.search(r"hours_per_month = (\d+)", text).group(1))


class AwsSweep(SweepBase):
    def test_three_types_in_parallel_priced_from_the_table_and_nothing_left(self):
        plans = ["t3.small", "t3.medium", "t3.large"]
        with AwsStandin(pending_seconds=1) as a:
            self.env.update(a.env(EPHRUN_AWS_VOLUME_SIZE="10"))
            r = self.sweep("provider=aws", "plans=" + ",".join(plans), "region=" + AWS_REGION,
                           "image=" + a.image_id(), "job=python3 job.py 8 && " + self.barrier(3), "--yes")
            self.assertNotIn(AWS_SECRET, r.stdout + r.stderr)
            self.assertEqual(a.leftovers(), {"instances": [], "key_pairs": [], "security_groups": []})
            self.assertEqual(len(a.calls("RunInstances")), 3)
            made = a.ec2().describe_instances()["Reservations"]
            self.assertEqual(sorted(i["InstanceType"] for res in made for i in res["Instances"]), sorted(plans))
            _, types, _ = a.aws_cli("ec2", "describe-instance-types", "--instance-types", *plans)
            specs = {t["InstanceType"]: (str(t["VCpuInfo"]["DefaultVCpus"]), str(t["MemoryInfo"]["SizeInMiB"]))
                     for t in types["InstanceTypes"]}
        rows, js, md, texts = self.report()
        self.assertEqual(set(rows), set(plans))
        by_plan = {p["plan"]: p for p in js["plans"]}
        for plan in plans:
            row, p = rows[plan], by_plan[plan]
            self.assertEqual(row["met_target"], "yes", row)
            self.assertEqual((row["vcpu"], row["memory_mb"]), specs[plan])
            od, gp3, hours = prices_lua(AWS_REGION, plan)
            self.assertAlmostEqual(p["price_hour"], od + 10 * gp3 / hours, places=12)
            self.assertEqual(row["cost_per_hour_usd"], "%.4f" % p["price_hour"])
            self.assertAlmostEqual(p["cost_run"], p["price_hour"] * p["time"] / 3600, places=15)
            self.assertEqual(row["cost_per_run_usd"], "%.3g" % p["cost_run"])
            self.assertGreaterEqual(min(p["samples"]), 2)
        self.assertEqual(js["cheapest"], min(by_plan, key=lambda n: (by_plan[n]["cost_run"], by_plan[n]["time"])))
        self.assertIn("Cheapest plan that met the target: **%s**" % js["cheapest"], md)
        self.assertIn("run summary: 3 measured command(s)", r.stderr)
        self.check_png(js, max_time=0)

    def test_dry_run_with_no_reachable_endpoint_does_not_wait_on_the_type_lookup(self):
        # DescribeInstanceTypes only labels the table: one failed attempt, not five minutes of retries
        self.env.update({"AWS_ENDPOINT_URL": "http://ephrun-no-such-host.invalid", "AWS_REGION": AWS_REGION,
                         "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": AWS_SECRET})
        r = subprocess.run([BIN, "--dry-run", "size-sweep", "src=" + self.src, "out=" + self.out, "provider=aws",
                            "region=" + AWS_REGION, "image=ami-12345678", "plans=t3.small,t3.medium"],
                           capture_output=True, text=True, timeout=60, env=self.env, cwd=self.tmp)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("aws plan=t3.medium", r.stdout)
        self.assertIn("size-sweep report in", r.stdout)
        self.assertFalse(os.path.exists(self.out))


if __name__ == "__main__":
    unittest.main()
