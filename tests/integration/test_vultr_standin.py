"""The Vultr API stand-in (tests/fakes/vultr/standin.py): the official client accepts
it, and it behaves as the reference says Vultr does — locked deletes, 429s, paging,
late resizes, snapshots that carry data — with instances that are real sshds serving
the host key from their user-data."""
import base64
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.parse

import yaml

from common import SRC
from vultr import VultrStandin

CLIENT_DIR = os.path.join(SRC, "tests", "fakes", "vultr", "client")
LOCKED = {"error": "Unable to destroy server: Unable to remove VM: Server is currently locked",
          "status": 500}
FAST = dict(ip_seconds=0.05, none_seconds=0.05, lock_seconds=0.2, boot_seconds=0.3,
            snapshot_lock_seconds=0.4, snapshot_boot_seconds=0.5, snapshot_seconds=0.2,
            resize_seconds=0.5)


def keygen(path, comment="test"):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
                   check=True)
    with open(path) as f, open(path + ".pub") as g:
        return f.read(), g.read().strip()


def cloud_config(host=None, authorized=(), runcmd=()):
    doc = {}
    if host:
        doc["ssh_keys"] = {"ed25519_private": host[0], "ed25519_public": host[1]}
    if authorized:
        doc["ssh_authorized_keys"] = list(authorized)
    if runcmd:
        doc["runcmd"] = list(runcmd)
    return base64.b64encode(("#cloud-config\n" + yaml.safe_dump(doc)).encode()).decode()


def listening(ip, port):
    try:
        socket.create_connection((ip, port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_for(pred, what, timeout=15, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(step)


class StandinTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-vultr-test-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def create(self, v, **body):
        req = {"region": "ewr", "plan": "vc2-1c-1gb", "os_id": 2136}
        req.update(body)
        if "snapshot_id" in body:
            del req["os_id"]
        st, r, _ = v.api("POST", "/instances", req)
        self.assertEqual(st, 202, r)
        return r["instance"]

    def ssh(self, v, ip, key, known_host_pub, cmd, check=True):
        kh = os.path.join(self.tmp, "known_hosts")
        with open(kh, "w") as f:
            f.write("[%s]:%d %s\n" % (ip, v.ssh_port, known_host_pub))
        r = subprocess.run(["ssh", "-i", key, "-o", "UserKnownHostsFile=" + kh,
                            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "-p", str(v.ssh_port),
                            "%s@%s" % (v.login_user, ip), cmd],
                           capture_output=True, text=True, timeout=30)
        if check:
            self.assertEqual(r.returncode, 0, r.stderr)
        return r

    def sshd_pids(self, v, listeners_only=False):
        pattern = v.state_dir + "/instances/" + (".*\\[listener\\]" if listeners_only else "")
        out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        return out.stdout.split()

    def test_official_client(self):
        self.assertTrue(os.path.isdir(os.path.join(CLIENT_DIR, "node_modules", "@vultr", "vultr-node")),
                        "the official client is not installed: run bash scripts/setup.sh")
        with VultrStandin(api_key="test-key", rate_limit=30, **FAST) as v:
            env = dict(os.environ, VULTR_API_URL=v.url, VULTR_API_KEY="test-key")
            r = subprocess.run(["node", "check.js"], cwd=CLIENT_DIR, env=env, capture_output=True,
                               text=True, timeout=90)
            self.assertEqual(r.returncode, 0, "check.js failed:\n%s%s\nstand-in:\n%s"
                             % (r.stdout, r.stderr, v.stderr()))
            self.assertIn("check: ok", r.stdout)
            self.assertEqual(v.leftovers(), {"instances": [], "ssh_keys": []})
            st = v.state()
            self.assertEqual(st["snapshots"], [])
            self.assertEqual(st["rate_limited"], 0)
            self.assertLessEqual(st["peak_rps"], 30)
            self.assertEqual(self.sshd_pids(v), [])
            self.assertEqual(v.stderr(), "")

    def test_auth_and_validation(self):
        with VultrStandin(api_key="k", **FAST) as v:
            st, body, _ = v.api("GET", "/instances", key="")
            self.assertEqual((st, body), (401, {"error": "Invalid API token.", "status": 401}))
            self.assertEqual(v.api("GET", "/instances", key="wrong")[0], 401)
            st, body, _ = v.api("GET", "/plans?type=vhf", key="")
            self.assertEqual(st, 200)
            self.assertTrue(body["plans"] and all(p["type"] == "vhf" for p in body["plans"]))
            st, body, _ = v.api("GET", "/plans", key="")
            prices = {p["id"]: p["monthly_cost"] for p in body["plans"]}
            self.assertEqual((prices["vc2-1c-1gb"], prices["vc2-2c-4gb"], prices["vc2-4c-8gb"]), (5, 20, 40))
            self.assertEqual(v.api("GET", "/regions", key="")[0], 200)
            base = {"region": "ewr", "plan": "vc2-1c-1gb"}
            for bad in (base, dict(base, os_id=2136, app_id=1), {"plan": "vc2-1c-1gb", "os_id": 2136},
                        dict(base, os_id=2136, user_data="not base64!"), dict(base, os_id=2136, plan="nope")):
                st, body, _ = v.api("POST", "/instances", bad)
                self.assertEqual(st, 400, bad)
                self.assertEqual(body["status"], 400)
                self.assertIsInstance(body["error"], str)
            st, body, _ = v.api("GET", "/instances/00000000-0000-0000-0000-000000000000")
            self.assertEqual(st, 404)
            self.assertEqual(v.api("DELETE", "/instances/00000000-0000-0000-0000-000000000000")[0], 404)

    def test_lifecycle_and_locked_delete(self):
        with VultrStandin(ip_seconds=0.3, none_seconds=0.3, lock_seconds=1.0, boot_seconds=1.5) as v:
            inst = self.create(v, tags=["ephrun-run=abc"])
            self.assertEqual((inst["status"], inst["server_status"], inst["main_ip"], inst["power_status"]),
                             ("pending", "none", "0.0.0.0", "stopped"))
            self.assertIn("default_password", inst)
            st, body, _ = v.api("DELETE", "/instances/" + inst["id"])
            self.assertEqual((st, body), (500, LOCKED))
            seen = set()

            def unlocked():
                i = v.api("GET", "/instances/" + inst["id"])[1]["instance"]
                seen.add((i["status"], i["server_status"]))
                self.assertNotIn("default_password", i)
                return i["server_status"] not in ("none", "locked") and i
            i = wait_for(unlocked, "unlock")
            self.assertIn(("pending", "locked"), seen)
            self.assertRegex(i["main_ip"], r"^127\.0\.\d+\.\d+$")
            self.assertEqual((i["status"], i["power_status"]), ("active", "running"))
            st, body, _ = v.api("DELETE", "/instances/" + inst["id"])
            self.assertEqual((st, body), (204, None))
            self.assertEqual(v.api("GET", "/instances/" + inst["id"])[0], 404)
            self.assertEqual(v.leftovers()["instances"], [])

    def test_rate_limit(self):
        with VultrStandin(rate_limit=10) as v:
            statuses, bodies = [], []
            for _ in range(25):
                st, body, hdrs = v.api("GET", "/ssh-keys")
                statuses.append(st)
                if st == 429:
                    bodies.append(body)
                    self.assertNotIn("Retry-After", hdrs)
            self.assertIn(429, statuses)
            self.assertEqual(statuses[:10], [200] * 10)
            self.assertEqual(bodies[0], {"error": "Rate limit reached - please try your request again later.",
                                         "status": 429})
            for _ in range(40):   # control endpoints are neither limited nor counted
                s = v.state()
            self.assertEqual(s["requests"], 25)
            self.assertEqual(s["rate_limited"], statuses.count(429))
            self.assertLessEqual(s["peak_rps"], 10)
            time.sleep(1.05)
            self.assertEqual(v.api("GET", "/ssh-keys")[0], 200)
            v.config(retry_after=3)
            for _ in range(12):
                st, _, hdrs = v.api("GET", "/ssh-keys")
            self.assertEqual((st, hdrs.get("Retry-After")), (429, "3"))
            v.config(rate_limit=0)
            self.assertEqual({v.api("GET", "/ssh-keys")[0] for _ in range(40)}, {200})

    def test_paging_and_filters(self):
        with VultrStandin(start_sshd=False, **FAST) as v:
            _, pub = keygen(os.path.join(self.tmp, "k"))
            for i in range(5):
                st, body, _ = v.api("POST", "/ssh-keys", {"name": "key%d" % i, "ssh_key": pub})
                self.assertEqual(st, 201)
                self.assertEqual(set(body["ssh_key"]), {"id", "date_created", "name", "ssh_key"})
            names, cursor, pages = [], "", 0
            while True:
                q = "?per_page=2" + ("&cursor=" + urllib.parse.quote(cursor) if cursor else "")
                st, body, _ = v.api("GET", "/ssh-keys" + q)
                self.assertEqual(body["meta"]["total"], 5)
                self.assertEqual(body["meta"]["links"]["prev"], "")
                names += [k["name"] for k in body["ssh_keys"]]
                pages += 1
                cursor = body["meta"]["links"]["next"]
                if not cursor:
                    break
            self.assertEqual((pages, names), (3, ["key%d" % i for i in range(5)]))
            self.assertEqual(len(v.api("GET", "/ssh-keys")[1]["ssh_keys"]), 5)
            for t in ("k=v", "k=v", "k=v", "k=w"):
                self.create(v, tags=[t, "other=1"], label="l-" + t)
            body = v.api("GET", "/instances?tag=" + urllib.parse.quote("k=v"))[1]
            self.assertEqual(len(body["instances"]), 3)
            self.assertEqual(body["meta"]["total"], 3)
            self.assertEqual(v.api("GET", "/instances?tag=k")[1]["meta"]["total"], 0)
            body = v.api("GET", "/instances?per_page=2&tag=" + urllib.parse.quote("k=v"))[1]
            self.assertEqual(len(body["instances"]), 2)
            nxt = body["meta"]["links"]["next"]
            body = v.api("GET", "/instances?per_page=2&tag=%s&cursor=%s"
                         % (urllib.parse.quote("k=v"), urllib.parse.quote(nxt)))[1]
            self.assertEqual((len(body["instances"]), body["meta"]["links"]["next"]), (1, ""))
            self.assertEqual(v.api("GET", "/instances?label=l-k%3Dw")[1]["meta"]["total"], 1)
            self.assertEqual(v.api("GET", "/instances?region=ams")[1]["meta"]["total"], 0)

    def test_faults(self):
        with VultrStandin(start_sshd=False, **FAST) as v:
            v.fault("POST", r"^/v2/instances$", 500, count=2, body={"error": "boom", "status": 500})
            v.fault("GET", r"^/v2/ssh-keys", 503)
            for _ in range(2):
                st, body, _ = v.api("POST", "/instances", {"region": "ewr", "plan": "vc2-1c-1gb", "os_id": 2136})
                self.assertEqual((st, body), (500, {"error": "boom", "status": 500}))
            self.create(v)
            self.assertEqual(v.api("GET", "/instances")[0], 200)
            self.assertEqual(v.api("GET", "/ssh-keys?per_page=5")[0], 503)
            self.assertEqual(v.api("GET", "/ssh-keys")[0], 200)
            v.fault("*", "^/v2/", 502, count=100)
            self.assertEqual(v.api("GET", "/regions")[0], 502)
            v.clear_faults()
            self.assertEqual(v.api("GET", "/regions")[0], 200)
            log = v.state()["log"]
            self.assertEqual([(e["method"], e["status"]) for e in log[:3]], [("POST", 500), ("POST", 500), ("POST", 202)])
            self.assertTrue(all({"t", "method", "path", "status"} <= set(e) for e in log))

    def test_snapshot_carries_content_and_host_key_is_served(self):
        with VultrStandin(**FAST) as v:
            key = os.path.join(self.tmp, "id")
            _, client_pub = keygen(key, "client")
            host = keygen(os.path.join(self.tmp, "host"), "host")
            other_host = keygen(os.path.join(self.tmp, "other"), "other")
            # A: authorized through user-data; B: through a registered key (sshkey_id).
            a = self.create(v, user_data=cloud_config(host=host, authorized=[client_pub]))
            a = v.wait_instance(a["id"])
            wait_for(lambda: listening(a["main_ip"], v.ssh_port), "sshd of A")
            r = self.ssh(v, a["main_ip"], key, host[1],
                         "whoami; pwd; mkdir -p data && echo from-a > data/file && echo $EPHRUN_VULTR_INSTANCE")
            user, home, marker = r.stdout.split()
            self.assertEqual((user, marker), (v.login_user, a["id"]))
            # A different pinned key is refused: the served host key is the user-data's.
            r = self.ssh(v, a["main_ip"], key, other_host[1], "true", check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("HOST IDENTIFICATION HAS CHANGED", r.stderr)
            st, snap, _ = v.api("POST", "/snapshots", {"instance_id": a["id"], "description": "base"})
            self.assertEqual(st, 201)
            self.assertEqual(snap["snapshot"]["status"], "pending")
            wait_for(lambda: v.api("GET", "/snapshots/" + snap["snapshot"]["id"])[1]["snapshot"]["status"] == "complete",
                     "snapshot complete")
            st, k, _ = v.api("POST", "/ssh-keys", {"name": "run", "ssh_key": client_pub})
            b = self.create(v, snapshot_id=snap["snapshot"]["id"], sshkey_id=[k["ssh_key"]["id"]],
                            user_data=cloud_config(host=other_host))
            self.assertEqual(v.api("DELETE", "/instances/" + b["id"])[1], LOCKED)
            b = v.wait_instance(b["id"])
            self.assertNotEqual(a["main_ip"], b["main_ip"])
            wait_for(lambda: listening(b["main_ip"], v.ssh_port), "sshd of B")
            r = self.ssh(v, b["main_ip"], key, other_host[1], "cat data/file; pwd")
            content, b_home = r.stdout.split()
            self.assertEqual(content, "from-a")
            self.assertNotEqual(b_home, home)
            self.assertEqual(v.api("DELETE", "/snapshots/" + snap["snapshot"]["id"])[0], 204)
            for i in (a, b):
                self.assertEqual(v.api("DELETE", "/instances/" + i["id"])[0], 204)
            self.assertFalse(os.path.exists(home))
            self.assertEqual(self.sshd_pids(v), [])

    def test_halt_start_and_delete_end_sessions(self):
        with VultrStandin(**FAST) as v:
            key = os.path.join(self.tmp, "id")
            _, pub = keygen(key)
            host = keygen(os.path.join(self.tmp, "host"))
            i = self.create(v, user_data=cloud_config(host=host, authorized=[pub]))
            ip = v.wait_instance(i["id"])["main_ip"]
            wait_for(lambda: listening(ip, v.ssh_port), "sshd")
            self.assertEqual(v.api("POST", "/instances/%s/halt" % i["id"])[0], 204)
            self.assertFalse(listening(ip, v.ssh_port))
            self.assertEqual(v.api("GET", "/instances/" + i["id"])[1]["instance"]["power_status"], "stopped")
            self.assertEqual(v.api("POST", "/instances/%s/start" % i["id"])[0], 204)
            wait_for(lambda: listening(ip, v.ssh_port), "sshd after start")
            self.assertEqual(v.api("GET", "/instances/" + i["id"])[1]["instance"]["power_status"], "running")
            # A detached session process dies with the instance.
            self.ssh(v, ip, key, host[1], "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo started")
            marker = "EPHRUN_VULTR_INSTANCE=" + i["id"]

            def marked():
                out = subprocess.run(["grep", "-lzs", "^%s$" % marker] +
                                     ["/proc/%s/environ" % p for p in os.listdir("/proc") if p.isdigit()],
                                     capture_output=True, text=True).stdout
                return out.split()
            self.assertTrue(wait_for(marked, "the session's sleep"))
            self.assertEqual(v.api("DELETE", "/instances/" + i["id"])[0], 204)
            self.assertEqual(marked(), [])
            self.assertFalse(listening(ip, v.ssh_port))

    def test_resize_applied_late(self):
        with VultrStandin(**dict(FAST, resize_seconds=0.8)) as v:
            i = v.wait_instance(self.create(v)["id"])
            st, body, _ = v.api("GET", "/instances/%s/upgrades" % i["id"])
            self.assertIn("vc2-2c-4gb", body["upgrades"]["plans"])
            t0 = time.monotonic()
            st, body, _ = v.api("PATCH", "/instances/" + i["id"], {"plan": "vc2-2c-4gb", "label": "big"})
            self.assertEqual(st, 202)
            now = v.api("GET", "/instances/" + i["id"])[1]["instance"]
            self.assertEqual((now["plan"], now["status"], now["label"], now["vcpu_count"]),
                             ("vc2-1c-1gb", "resizing", "big", 1))
            done = wait_for(lambda: (lambda x: x["plan"] == "vc2-2c-4gb" and x)(
                v.api("GET", "/instances/" + i["id"])[1]["instance"]), "resize")
            self.assertGreaterEqual(time.monotonic() - t0, 0.7)
            self.assertEqual((done["status"], done["ram"], done["vcpu_count"], done["disk"]), ("active", 4096, 2, 80))
            st, body, _ = v.api("PATCH", "/instances/" + i["id"], {"plan": "vc2-1c-1gb"})
            self.assertEqual(st, 400, body)

    def test_shutdown_runcmd_halts(self):
        with VultrStandin(**dict(FAST, minute_seconds=0.4)) as v:
            i = self.create(v, user_data=cloud_config(runcmd=["shutdown -h +2"]))
            ip = v.wait_instance(i["id"])["main_ip"]
            t_ok = time.monotonic()
            wait_for(lambda: listening(ip, v.ssh_port), "sshd")
            self.assertEqual(v.api("GET", "/instances/" + i["id"])[1]["instance"]["power_status"], "running")
            wait_for(lambda: v.api("GET", "/instances/" + i["id"])[1]["instance"]["power_status"] == "stopped",
                     "halt by shutdown -h +2", timeout=10)
            self.assertGreaterEqual(time.monotonic() - t_ok, 0.6)
            self.assertFalse(listening(ip, v.ssh_port))

    def test_no_sshd_and_many_instances(self):
        with VultrStandin(rate_limit=0, **FAST) as v:
            v.config(start_sshd=False)
            quiet = v.wait_instance(self.create(v)["id"])
            v.config(start_sshd=True)
            t0 = time.monotonic()
            ids = [self.create(v, tags=["batch=1"])["id"] for _ in range(50)]
            created = time.monotonic() - t0
            self.assertLess(created, 5, "creating 50 instances took %.1fs" % created)
            insts = [v.wait_instance(x) for x in ids]
            self.assertEqual(len({x["main_ip"] for x in insts}), 50)
            wait_for(lambda: all(listening(x["main_ip"], v.ssh_port) for x in insts), "50 sshds", timeout=20)
            self.assertFalse(listening(quiet["main_ip"], v.ssh_port))
            self.assertEqual(len(self.sshd_pids(v, listeners_only=True)), 50)
            self.assertEqual(v.api("GET", "/instances?tag=batch%3D1")[1]["meta"]["total"], 50)
        self.assertEqual(self.sshd_pids(v), [])
        self.assertFalse(os.path.exists(v.state_dir))


if __name__ == "__main__":
    unittest.main()
