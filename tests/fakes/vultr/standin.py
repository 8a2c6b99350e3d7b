#!/usr/bin/env python3
"""A stand-in for the Vultr API v2 on 127.0.0.1, for ephrun's tests.

    python3 standin.py --state-dir DIR [--port 0] [--api-key KEY] [--rate-limit 30]
                       [--ssh-port P] [--ip-seconds S ...] [--config JSON] [--watch-stdin]

Once listening it prints one line on stdout:

    READY http://127.0.0.1:PORT/v2 ssh_port=P login_user=U

It answers what ephrun relies on from Vultr, as the official clients use it: bearer auth,
instances, snapshots, SSH keys, plans, regions, cursor paging, `{"error","status"}`
errors, a 429 rate limit, and the life of an instance: `main_ip` 0.0.0.0 at first,
`server_status` none → locked → installingbooting → ok, `status` pending → active, a
DELETE while locked answers 500. Booting from a snapshot is locked for longer.

Instances are real: once `ok`, each runs its own OpenSSH sshd on its own loopback
address 127.0.0.N (its `main_ip`), all on one SSH port. User-data is applied as
cloud-init would: the `ssh_keys` ed25519 pair becomes the host key, `ssh_authorized_keys`
(plus keys named by `sshkey_id`) may log in as the plain user `ephrun-vultr` (the current
user when not root), and `runcmd: ["shutdown -h +N"]` halts the instance after
N × `minute_seconds`. Nothing else of the user-data runs. Sessions start in the
instance's home, a fresh directory under DIR; a snapshot is a tar of that home, and an
instance created from it starts with that content.

Timings (seconds; CLI flags `--ip-seconds` … or config keys), offsets from creation,
fixed per resource when it is created:
    ip_seconds 0.2             main_ip is 0.0.0.0 before
    none_seconds 0.2           server_status none before
    lock_seconds 0.6           locked before (status pending, DELETE refused)
    boot_seconds 1.0           installingbooting before, ok after (sshd starts)
    snapshot_lock_seconds 1.5, snapshot_boot_seconds 2.0   the same, booting a snapshot
    snapshot_seconds 1.0       a snapshot is pending, then complete
    resize_seconds 1.0         PATCH {"plan"}: status resizing, new plan shown after
    minute_seconds 60          one minute of `shutdown -h +N`
    sshd_delay_seconds 0       sshd starts this long after ok
Other config: rate_limit (30; 0 = none; per client IP, sliding 1 s window),
retry_after (null; seconds, adds a Retry-After header to 429s), start_sshd (true;
false = instances created meanwhile reach ok but SSH never answers), authorize_keys
(true; false = no key is authorized, logins fail), allow_downgrade (false), enforce_size
(false; true = each guest's sshd runs with its plan's vCPUs, at most this machine's, and
its RAM as RLIMIT_AS, so `nproc` and `ulimit -v` in a session show the plan).

Control endpoints (no auth, not rate limited, not counted):
    GET  /_standin/state     {"instances":[… + "_standin" details],"ssh_keys","snapshots",
                              "requests","rate_limited","peak_rps","log":[{t,method,path,status}]}
    GET|POST /_standin/config   read / change config (JSON object)
    POST /_standin/faults    {"method","path" (regex on the path),"status","body","count",
                              "delay","headers"}: the next `count` matching requests get
                              that answer instead (method "*" or absent: any)
    GET|DELETE /_standin/faults
    POST /_standin/advance   {"seconds": N}: move the stand-in's clock forward
    POST /_standin/reset     delete everything, config back to start-up values
SIGTERM, SIGINT, end of stdin with --watch-stdin: stops every sshd and session it
started and removes the files it made under DIR.
"""
import argparse
import base64
import collections
import copy
import datetime
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import guest  # noqa: E402  (tests/fakes/guest.py: the sshd-on-loopback guest both stand-ins play)
from guest import SSHD, free_port, parse_user_data, read_file  # noqa: E402
LOGIN_USER_AS_ROOT = "ephrun-vultr"
MARKER = "EPHRUN_VULTR_INSTANCE"
LOCKED_DELETE = "Unable to destroy server: Unable to remove VM: Server is currently locked"
RATE_LIMITED = "Rate limit reached - please try your request again later."

DEFAULT_CONFIG = {
    "ip_seconds": 0.2, "none_seconds": 0.2, "lock_seconds": 0.6, "boot_seconds": 1.0,
    "snapshot_lock_seconds": 1.5, "snapshot_boot_seconds": 2.0, "snapshot_seconds": 1.0,
    "resize_seconds": 1.0, "minute_seconds": 60.0, "sshd_delay_seconds": 0.0,
    "rate_limit": 30, "retry_after": None, "start_sshd": True, "enforce_size": False, "authorize_keys": True,
    "allow_downgrade": False,
}
TIMING_KEYS = [k for k in DEFAULT_CONFIG if k.endswith("_seconds")]


def plan(pid, vcpu, ram, disk, bw, cost, ptype):
    return {"id": pid, "vcpu_count": vcpu, "ram": ram, "disk": disk, "disk_count": 1,
            "bandwidth": bw, "monthly_cost": cost, "type": ptype, "locations": []}


PLANS = [
    plan("vc2-1c-1gb", 1, 1024, 25, 1024, 5, "vc2"),
    plan("vc2-1c-2gb", 1, 2048, 55, 2048, 10, "vc2"),
    plan("vc2-2c-4gb", 2, 4096, 80, 3072, 20, "vc2"),
    plan("vc2-4c-8gb", 4, 8192, 160, 4096, 40, "vc2"),
    plan("vc2-6c-16gb", 6, 16384, 320, 5120, 80, "vc2"),
    plan("vhf-1c-1gb", 1, 1024, 32, 1024, 6, "vhf"),
    plan("vhf-2c-4gb", 2, 4096, 128, 3072, 24, "vhf"),
    plan("vhf-4c-16gb", 4, 16384, 384, 6144, 96, "vhf"),
    plan("vhp-2c-4gb-amd", 2, 4096, 100, 5120, 24, "vhp"),
    plan("vhp-4c-8gb-amd", 4, 8192, 180, 6144, 48, "vhp"),
]
REGIONS = [
    {"id": "ewr", "city": "New Jersey", "country": "US", "continent": "North America"},
    {"id": "ord", "city": "Chicago", "country": "US", "continent": "North America"},
    {"id": "sjc", "city": "Silicon Valley", "country": "US", "continent": "North America"},
    {"id": "ams", "city": "Amsterdam", "country": "NL", "continent": "Europe"},
    {"id": "fra", "city": "Frankfurt", "country": "DE", "continent": "Europe"},
    {"id": "lhr", "city": "London", "country": "GB", "continent": "Europe"},
    {"id": "nrt", "city": "Tokyo", "country": "JP", "continent": "Asia"},
    {"id": "sgp", "city": "Singapore", "country": "SG", "continent": "Asia"},
    {"id": "syd", "city": "Sydney", "country": "AU", "continent": "Australia"},
]
for _r in REGIONS:
    _r["options"] = ["ddos_protection"]
for _p in PLANS:
    _p["locations"] = [r["id"] for r in REGIONS]
PLAN_BY_ID = {p["id"]: p for p in PLANS}
REGION_IDS = {r["id"] for r in REGIONS}
OSES = [
    {"id": 2136, "name": "Debian 12 x64 (bookworm)", "arch": "x64", "family": "debian"},
    {"id": 477, "name": "Debian 11 x64 (bullseye)", "arch": "x64", "family": "debian"},
    {"id": 1743, "name": "Ubuntu 22.04 LTS x64", "arch": "x64", "family": "ubuntu"},
    {"id": 2284, "name": "Ubuntu 24.04 LTS x64", "arch": "x64", "family": "ubuntu"},
    {"id": 1869, "name": "Rocky Linux 9 x64", "arch": "x64", "family": "rockylinux"},
    {"id": 159, "name": "Custom", "arch": "x64", "family": "iso"},
    {"id": 164, "name": "Snapshot", "arch": "x64", "family": "snapshot"},
    {"id": 186, "name": "Application", "arch": "x64", "family": "application"},
]
OS_BY_ID = {o["id"]: o for o in OSES}


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def iso_now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def log(msg):
    print("standin: " + msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the state

class Instance:
    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.oplock = threading.Lock()   # held while sshd is started or stopped
        self.deleted = False
        self.halted = False
        self.provisioned = False
        self.proc = None                 # the running sshd
        self.sshd_error = None
        self.cloud_init_error = None
        self.shutdown_minutes = None
        self.shutdown_at = None
        self.ok_seen = False
        self.resize_to = None
        self.resize_at = None
        self.host_public = None


class Standin:
    def __init__(self, args, config):
        self.args = args
        self.state_dir = os.path.abspath(args.state_dir)
        self.initial_config = dict(config)
        self.config = dict(config)
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self.stopping = False
        self.user, self.uid, self.gid = guest.ensure_login_user(LOGIN_USER_AS_ROOT)
        self.ssh_port = args.ssh_port or free_port()
        # Holding 127.0.0.1:ssh_port keeps other programs from being given this port.
        self.port_guard = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.port_guard.bind(("127.0.0.1", self.ssh_port))
        self.clock_offset = 0.0
        self.made_state_dir = not os.path.exists(self.state_dir)
        os.makedirs(self.state_dir, exist_ok=True)
        # Sessions run as the login user: it must reach its home and key file.
        os.chmod(self.state_dir, 0o755)
        self.inst_root = os.path.join(self.state_dir, "instances")
        self.snap_root = os.path.join(self.state_dir, "snapshots")
        for d in (self.inst_root, self.snap_root):
            os.makedirs(d, mode=0o755, exist_ok=True)
            os.chmod(d, 0o755)
        self._clear()
        self.ip_counter = 0

    def _clear(self):
        self.instances = collections.OrderedDict()
        self.ssh_keys = collections.OrderedDict()
        self.snapshots = collections.OrderedDict()
        self.faults = []
        self.requests = 0
        self.rate_limited = 0
        self.peak_rps = 0
        self.windows = collections.defaultdict(collections.deque)   # per client IP
        self.global_window = collections.deque()
        self.log = []

    def now(self):
        return time.monotonic() + self.clock_offset

    # -- addresses: 127.0.0.2 … 127.0.0.254, then 127.0.1.1 …; not reused soon
    def allocate_ip(self):
        used = {i.ip for i in self.instances.values()}
        for _ in range(256 * 254):
            n = self.ip_counter
            self.ip_counter = (self.ip_counter + 1) % (256 * 254 - 1)
            ip = "127.0.%d.%d" % ((n + 1) // 254, (n + 1) % 254 + 1)
            if ip not in used:
                return ip
        raise ApiError(500, "No address left")

    # -- views
    def phase(self, inst, t=None):
        t = self.now() if t is None else t
        el = t - inst.created
        tm = inst.timings
        none_s = tm["none_seconds"]
        lock_s = max(none_s, tm["snapshot_lock_seconds" if inst.from_snapshot else "lock_seconds"])
        boot_s = max(lock_s, tm["snapshot_boot_seconds" if inst.from_snapshot else "boot_seconds"])
        if el < none_s:
            ss = "none"
        elif el < lock_s:
            ss = "locked"
        elif el < boot_s:
            ss = "installingbooting"
        else:
            ss = "ok"
        return {"main_ip": inst.ip if el >= tm["ip_seconds"] else "0.0.0.0",
                "server_status": ss, "booted": el >= lock_s, "ok_at": inst.created + boot_s}

    def instance_view(self, inst, extra=False):
        ph = self.phase(inst)
        p = PLAN_BY_ID[inst.plan]
        if not ph["booted"]:
            status = "pending"
        elif inst.resize_to:
            status = "resizing"
        else:
            status = "active"
        v = {
            "id": inst.id, "os": OS_BY_ID.get(inst.os_id, {"name": "Unknown"})["name"],
            "ram": p["ram"], "disk": p["disk"], "main_ip": ph["main_ip"],
            "vcpu_count": p["vcpu_count"], "region": inst.region, "plan": inst.plan,
            "date_created": inst.date_created, "status": status,
            "allowed_bandwidth": p["bandwidth"], "netmask_v4": "255.0.0.0",
            "gateway_v4": "127.0.0.1" if ph["main_ip"] != "0.0.0.0" else "0.0.0.0",
            "power_status": "running" if ph["booted"] and not inst.halted else "stopped",
            "server_status": ph["server_status"],
            "v6_network": "fd00:e::" if inst.enable_ipv6 else "",
            "v6_main_ip": inst.v6_main_ip, "v6_network_size": 64 if inst.enable_ipv6 else 0,
            "label": inst.label, "internal_ip": "", "kvm": "", "hostname": inst.hostname,
            "tag": inst.tags[0] if inst.tags else "", "tags": list(inst.tags),
            "os_id": inst.os_id, "app_id": inst.app_id, "image_id": inst.image_id,
            "firewall_group_id": inst.firewall_group_id,
            "features": ["ipv6"] if inst.enable_ipv6 else [], "user_scheme": "root",
        }
        if extra:
            v["_standin"] = {
                "dir": inst.dir, "home": inst.home, "ip": inst.ip,
                "from_snapshot": inst.from_snapshot, "snapshot_id": inst.snapshot_id,
                "sshd_running": bool(inst.proc and inst.proc.poll() is None),
                "sshd_pid": inst.proc.pid if inst.proc else None,
                "sshd_error": inst.sshd_error, "cloud_init_error": inst.cloud_init_error,
                "host_key_public": inst.host_public, "halted": inst.halted,
                "shutdown_minutes": inst.shutdown_minutes, "resize_to": inst.resize_to,
                "sshkey_ids": list(inst.sshkey_ids),
            }
        return v

    def snapshot_view(self, s):
        status = "complete" if self.now() >= s["_ready_at"] else "pending"
        return {k: v for k, v in s.items() if not k.startswith("_")} | {"status": status}

    # -- instances
    def get_instance(self, iid):
        inst = self.instances.get(iid)
        if not inst:
            raise ApiError(404, "Invalid instance-id.")
        return inst

    def create_instance(self, body):
        for k in ("region", "plan"):
            if not body.get(k):
                raise ApiError(400, "Missing required parameter: %s" % k)
        if body["region"] not in REGION_IDS:
            raise ApiError(400, "Invalid region.")
        if body["plan"] not in PLAN_BY_ID:
            raise ApiError(400, "Invalid plan.")
        if body["region"] not in PLAN_BY_ID[body["plan"]]["locations"]:
            raise ApiError(400, "Plan is not available in the selected location.")
        sources = [k for k in ("os_id", "snapshot_id", "app_id", "image_id", "iso_id")
                   if body.get(k) not in (None, "", 0, "0")]
        if len(sources) != 1:
            raise ApiError(400, "Exactly one of os_id, snapshot_id, app_id, image_id, iso_id "
                                "is required (got %s)." % (", ".join(sources) or "none"))
        os_id, snap_id, app_id, image_id = 0, None, 0, ""
        if sources[0] == "os_id":
            try:
                os_id = int(body["os_id"])
            except (TypeError, ValueError):
                raise ApiError(400, "Invalid os_id.")
            if os_id not in OS_BY_ID:
                raise ApiError(400, "Invalid os_id.")
        elif sources[0] == "snapshot_id":
            snap_id = str(body["snapshot_id"])
            s = self.snapshots.get(snap_id)
            if not s:
                raise ApiError(400, "Invalid snapshot_id.")
            if self.snapshot_view(s)["status"] != "complete":
                raise ApiError(400, "Snapshot is not complete.")
            os_id = s["os_id"]
        elif sources[0] == "app_id":
            app_id, os_id = int(body["app_id"]), 186
        elif sources[0] == "image_id":
            image_id, os_id = str(body["image_id"]), 186
        else:
            os_id = 159
        tags = body.get("tags")
        if tags is None:
            tags = [body["tag"]] if body.get("tag") else []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ApiError(400, "tags must be an array of strings.")
        key_ids = body.get("sshkey_id") or []
        if isinstance(key_ids, str):
            key_ids = [key_ids]
        for k in key_ids:
            if k not in self.ssh_keys:
                raise ApiError(400, "Invalid SSH key: %s" % k)
        user_data = body.get("user_data") or ""
        if user_data:
            try:
                base64.b64decode(re.sub(r"\s+", "", user_data), validate=True)
            except ValueError:
                raise ApiError(400, "Invalid user_data: it must be base64.")
        iid = str(uuid.uuid4())
        ipv6 = bool(body.get("enable_ipv6"))
        inst = Instance(
            id=iid, region=body["region"], plan=body["plan"], os_id=os_id, app_id=app_id,
            image_id=image_id, snapshot_id=snap_id, from_snapshot=snap_id is not None,
            label=str(body.get("label") or ""),
            hostname=str(body.get("hostname") or body.get("label") or "vultr-guest"),
            tags=list(tags), sshkey_ids=list(key_ids), user_data=user_data,
            enable_ipv6=ipv6, v6_main_ip="fd00:e::%x" % (len(self.instances) + 2) if ipv6 else "",
            firewall_group_id=str(body.get("firewall_group_id") or ""),
            date_created=iso_now(), created=self.now(), ip=self.allocate_ip(),
            timings={k: float(self.config[k]) for k in TIMING_KEYS},
            start_sshd=bool(self.config["start_sshd"]),
            dir=os.path.join(self.inst_root, iid))
        inst.home = os.path.join(inst.dir, "home")
        self.instances[iid] = inst
        self.wake.set()
        v = self.instance_view(inst)
        v["default_password"] = secrets.token_urlsafe(12)
        return v

    def list_filter_instances(self, q):
        out = []
        for inst in self.instances.values():
            if q.get("tag") and q["tag"] not in inst.tags:
                continue
            if q.get("label") and q["label"] != inst.label:
                continue
            if q.get("region") and q["region"] != inst.region:
                continue
            v = self.instance_view(inst)
            if q.get("main_ip") and q["main_ip"] != v["main_ip"]:
                continue
            out.append(v)
        return out

    def update_instance(self, inst, body):
        if "plan" in body and body["plan"] and body["plan"] != inst.plan:
            target = PLAN_BY_ID.get(body["plan"])
            if not target:
                raise ApiError(400, "Invalid plan.")
            if (not self.config["allow_downgrade"]
                    and target["disk"] < PLAN_BY_ID[inst.plan]["disk"]):
                raise ApiError(400, "Unable to change plan: you cannot downgrade to a "
                                    "plan with a smaller disk.")
            inst.resize_to = target["id"]
            inst.resize_at = self.now() + float(self.config["resize_seconds"])
            self.wake.set()
        if "label" in body:
            inst.label = str(body["label"])
        if "tags" in body:
            if not isinstance(body["tags"], list):
                raise ApiError(400, "tags must be an array of strings.")
            inst.tags = [str(t) for t in body["tags"]]
        elif "tag" in body:
            inst.tags = [body["tag"]] if body["tag"] else []
        if "hostname" in body:
            inst.hostname = str(body["hostname"])
        if "user_data" in body:
            inst.user_data = body["user_data"] or ""
        if "firewall_group_id" in body:
            inst.firewall_group_id = str(body["firewall_group_id"] or "")

    def upgrades(self, inst):
        cur = PLAN_BY_ID[inst.plan]
        plans = [p["id"] for p in PLANS if p["id"] != cur["id"] and p["disk"] >= cur["disk"]
                 and p["monthly_cost"] > cur["monthly_cost"]]
        return {"os": [], "applications": [], "plans": plans}

    # -- snapshots
    def create_snapshot(self, body):
        """Called without the state lock: tar reads the home under the instance's oplock."""
        iid = body.get("instance_id")
        if not iid:
            raise ApiError(400, "Missing required parameter: instance_id")
        with self.lock:
            inst = self.instances.get(iid)
        if not inst:
            raise ApiError(400, "Invalid instance_id.")
        sid = str(uuid.uuid4())
        tar = os.path.join(self.snap_root, sid + ".tar")
        with inst.oplock:
            if os.path.isdir(inst.home):
                r = subprocess.run(["tar", "-C", inst.home, "-cf", tar, "."], capture_output=True)
                if r.returncode not in (0, 1):   # 1: a file changed while read
                    raise ApiError(500, "Snapshot failed: " + r.stderr.decode(errors="replace"))
            else:
                subprocess.run(["tar", "-cf", tar, "-T", "/dev/null"], check=True)
        size = os.path.getsize(tar)
        with self.lock:
            return self._add_snapshot(sid, body.get("description") or "", size, inst.os_id, inst.app_id, tar)

    def _add_snapshot(self, sid, description, size, os_id, app_id, tar):
        s = {"id": sid, "date_created": iso_now(), "description": str(description),
             "size": size, "compressed_size": size, "status": "pending", "os_id": os_id,
             "app_id": app_id, "_tar": tar,
             "_ready_at": self.now() + float(self.config["snapshot_seconds"])}
        self.snapshots[sid] = s
        return self.snapshot_view(s)

    # -- ssh keys
    @staticmethod
    def check_key(text):
        if not isinstance(text, str) or not re.match(
                r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/=]+( .*)?$",
                text.strip()):
            raise ApiError(400, "Invalid SSH key.")
        return text.strip()

    # -- the state thread: provisioning, sshd, timers
    def provision(self, inst):
        """Makes the instance's home and sshd files, as cloud-init would (state thread)."""
        os.makedirs(inst.home, exist_ok=True)
        os.chmod(inst.dir, 0o755)
        if inst.snapshot_id:
            s = self.snapshots.get(inst.snapshot_id)
            if s and os.path.exists(s["_tar"]):
                subprocess.run(["tar", "-C", inst.home, "-xpf", s["_tar"]], capture_output=True)
        os.chown(inst.home, self.uid, self.gid)
        os.chmod(inst.home, 0o755)
        try:
            ud = parse_user_data(inst.user_data)
        except Exception as e:  # cloud-init would log and go on
            inst.cloud_init_error = "user-data: %s" % e
            ud = parse_user_data("")
        key, inst.host_public = guest.write_host_key(inst.dir, ud, inst.id)
        with self.lock:
            keys = list(ud["authorized_keys"]) + [
                self.ssh_keys[k]["ssh_key"] for k in inst.sshkey_ids if k in self.ssh_keys]
        if not self.config["authorize_keys"]:
            keys = []
        ak = guest.write_authorized_keys(inst.dir, keys)
        inst.shutdown_minutes = ud["shutdown_minutes"]
        with open(os.path.join(inst.dir, "sshd_config"), "w") as f:
            f.write(self.sshd_config(inst, key, ak))
        inst.provisioned = True

    def sshd_config(self, inst, key, ak):
        return guest.sshd_config("Vultr stand-in instance " + inst.id, inst.ip, self.ssh_port, key, ak,
                                 self.user, MARKER, inst.id, inst.home)

    def start_sshd(self, inst):
        size = PLAN_BY_ID.get(inst.plan) if self.config.get("enforce_size") else None
        inst.proc = guest.start_sshd(inst.dir, *((size["vcpu_count"], size["ram"]) if size else ()))

    def stop_sshd(self, inst):
        """Stops sshd and every session process of the instance (caller holds oplock)."""
        roots = [inst.proc.pid] if inst.proc else []
        guest.kill_instance_processes(MARKER, inst.id, roots, os.path.join(inst.dir, "sshd_config"), self.uid)
        if inst.proc:
            try:
                inst.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        inst.proc = None

    def destroy(self, inst):
        with inst.oplock:
            self.stop_sshd(inst)
            shutil.rmtree(inst.dir, ignore_errors=True)

    def tick(self):
        t = self.now()
        with self.lock:
            insts = list(self.instances.values())
            delay = float(self.config["sshd_delay_seconds"])
        for inst in insts:
            with inst.oplock:
                if inst.deleted or self.stopping:
                    continue
                if not inst.provisioned:
                    try:
                        self.provision(inst)
                    except Exception as e:
                        inst.cloud_init_error = "provisioning: %s" % e
                        inst.provisioned = True
                        log("instance %s: %s" % (inst.id, inst.cloud_init_error))
                ph = self.phase(inst, t)
                if inst.resize_to and t >= inst.resize_at:
                    with self.lock:
                        inst.plan, inst.resize_to, inst.resize_at = inst.resize_to, None, None
                if ph["server_status"] != "ok":
                    continue
                if not inst.ok_seen:
                    inst.ok_seen = True
                    if inst.shutdown_minutes is not None:
                        inst.shutdown_at = ph["ok_at"] + inst.shutdown_minutes * float(
                            inst.timings["minute_seconds"])
                if inst.shutdown_at is not None and t >= inst.shutdown_at:
                    inst.shutdown_at = None
                    self.stop_sshd(inst)   # down first: the API shows stopped only after
                    with self.lock:
                        inst.halted = True
                    continue
                if inst.proc and inst.proc.poll() is not None:
                    inst.sshd_error = "sshd exited with %s: %s" % (
                        inst.proc.returncode, (read_file(os.path.join(inst.dir, "sshd.log")) or "")[-2000:])
                    log("instance %s: %s" % (inst.id, inst.sshd_error))
                    inst.proc = None
                if (not inst.proc and not inst.halted and inst.start_sshd and not inst.sshd_error
                        and not inst.cloud_init_error and t >= ph["ok_at"] + delay):
                    try:
                        self.start_sshd(inst)
                    except OSError as e:
                        inst.sshd_error = str(e)

    def next_deadline(self):
        """Seconds until the next timer the state thread must act on (capped)."""
        t = self.now()
        best = 0.5
        with self.lock:
            delay = float(self.config["sshd_delay_seconds"])
            for inst in self.instances.values():
                if not inst.provisioned:
                    return 0
                ph = self.phase(inst, t)
                for at in (ph["ok_at"], ph["ok_at"] + delay, inst.resize_at, inst.shutdown_at):
                    if at is not None and at > t:
                        best = min(best, at - t)
        return max(0.005, best)

    def state_loop(self):
        while not self.stopping:
            try:
                self.tick()
            except Exception as e:  # keep the stand-in alive; the test sees the log
                log("state thread: %r" % e)
            self.wake.wait(self.next_deadline())
            self.wake.clear()

    def delete_everything(self):
        with self.lock:
            insts = list(self.instances.values())
            for inst in insts:
                inst.deleted = True
            snaps = list(self.snapshots.values())
            self._clear()
        for inst in insts:
            self.destroy(inst)
        for s in snaps:
            try:
                os.unlink(s["_tar"])
            except OSError:
                pass

    def shutdown(self):
        self.stopping = True
        self.wake.set()
        self.delete_everything()
        shutil.rmtree(self.inst_root, ignore_errors=True)
        shutil.rmtree(self.snap_root, ignore_errors=True)
        if self.made_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        self.port_guard.close()


# ---------------------------------------------------------------- HTTP

def paged(items, q, key):
    try:
        per_page = int(q.get("per_page") or 100)
    except ValueError:
        raise ApiError(400, "Invalid per_page.")
    per_page = max(1, min(500, per_page))
    start = 0
    if q.get("cursor"):
        try:
            start = int(base64.urlsafe_b64decode(q["cursor"].encode()).decode().split("__")[1])
        except (ValueError, IndexError, UnicodeDecodeError):
            raise ApiError(400, "Invalid cursor.")
    page = items[start:start + per_page]
    nxt = ""
    if start + per_page < len(items):
        nxt = base64.urlsafe_b64encode(("next__%d" % (start + per_page)).encode()).decode()
    return {key: page, "meta": {"total": len(items), "links": {"next": nxt, "prev": ""}}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "vultr-standin"
    S = None  # the Standin, set in main()

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        self.handle_any()

    do_POST = do_PATCH = do_PUT = do_DELETE = do_GET

    def send(self, status, body=None, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        if self.logged is False:
            # Logged before the client can see the answer, so the log keeps its order.
            self.logged = True
            with self.S.lock:
                self.S.log.append({"t": time.time(), "method": self.command, "path": self.path,
                                   "status": status})
                if len(self.S.log) > 20000:
                    del self.S.log[:10000]
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if not raw.strip():
            return {}
        try:
            b = json.loads(raw)
        except ValueError:
            raise ApiError(400, "Invalid JSON body.")
        if not isinstance(b, dict):
            raise ApiError(400, "The body must be a JSON object.")
        return b

    def handle_any(self):
        S = self.S
        url = urllib.parse.urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        self.logged = None   # control requests are not logged
        if path.startswith("/_standin/"):
            try:
                self.control(path, q)
            except ApiError as e:
                self.send(e.status, {"error": e.message, "status": e.status})
            return
        body_read = False
        self.logged = False
        try:
            fault, extra_headers = None, {}
            with S.lock:
                S.requests += 1
                limit = int(S.config["rate_limit"] or 0)
                real = time.monotonic()
                win = S.windows[self.client_address[0]]
                while win and win[0] <= real - 1.0:
                    win.popleft()
                if limit and len(win) >= limit:
                    S.rate_limited += 1
                    if S.config.get("retry_after") is not None:
                        extra_headers["Retry-After"] = S.config["retry_after"]
                    raise ApiError(429, RATE_LIMITED)
                win.append(real)
                gw = S.global_window
                gw.append(real)
                while gw and gw[0] <= real - 1.0:
                    gw.popleft()
                S.peak_rps = max(S.peak_rps, len(gw))
                for f in S.faults:
                    if f["count"] > 0 and f["method"] in ("*", self.command) and re.search(f["path"], path):
                        f["count"] -= 1
                        fault = dict(f)
                        break
                S.faults = [f for f in S.faults if f["count"] > 0]
            if fault:
                self.body()
                body_read = True
                if fault.get("delay"):
                    time.sleep(float(fault["delay"]))
                self.send(int(fault["status"]), fault["body"], fault.get("headers"))
                return
            if S.args.api_key and not (path.startswith("/v2/plans") or path.startswith("/v2/regions")
                                       or path == "/v2/os"):
                if self.headers.get("Authorization", "") != "Bearer " + S.args.api_key:
                    raise ApiError(401, "Invalid API token.")
            body = self.body() if self.command in ("POST", "PATCH", "PUT") else {}
            body_read = True
            self.route(path, q, body)
        except ApiError as e:
            if not body_read and self.command in ("POST", "PATCH", "PUT"):
                try:
                    self.body()
                except ApiError:
                    pass
            self.send(e.status, {"error": e.message, "status": e.status}, extra_headers)
        except Exception as e:  # a bug in the stand-in: say so, as a 500
            log("error serving %s %s: %r" % (self.command, self.path, e))
            self.send(500, {"error": "stand-in error: %r" % e, "status": 500})

    def route(self, path, q, body):
        """Serves the API. Work that stops processes or reads a home (and so takes an
        instance's oplock) runs after the state lock is released: the state thread
        takes the two locks in the order oplock, then state lock."""
        after = self.route_locked(path, q, body)
        if after:
            after()

    def route_locked(self, path, q, body):
        S, cmd = self.S, self.command
        m, known = None, False

        def match(pattern):
            nonlocal m, known
            m = re.fullmatch(pattern, path)
            known = known or m is not None
            return m

        with S.lock:
            if match(r"/v2/plans") and cmd == "GET":
                plans = [p for p in PLANS if not q.get("type") or q["type"] in ("all", p["type"])]
                return self.send(200, paged(copy.deepcopy(plans), q, "plans"))
            if match(r"/v2/plans-metal") and cmd == "GET":
                return self.send(200, paged([], q, "plans_metal"))
            if match(r"/v2/regions") and cmd == "GET":
                return self.send(200, paged(copy.deepcopy(REGIONS), q, "regions"))
            if match(r"/v2/regions/([^/]+)/availability") and cmd == "GET":
                if m.group(1) not in REGION_IDS:
                    raise ApiError(404, "Invalid region.")
                return self.send(200, {"available_plans": [p["id"] for p in PLANS]})
            if match(r"/v2/os") and cmd == "GET":
                return self.send(200, paged(copy.deepcopy(OSES), q, "os"))
            if match(r"/v2/account") and cmd == "GET":
                return self.send(200, {"account": {"name": "Stand-in", "email": "standin@example.com",
                                                   "acls": [], "balance": 0, "pending_charges": 0,
                                                   "last_payment_date": "", "last_payment_amount": 0}})
            if match(r"/v2/instances"):
                if cmd == "POST":
                    return self.send(202, {"instance": S.create_instance(body)})
                if cmd == "GET":
                    return self.send(200, paged(S.list_filter_instances(q), q, "instances"))
            if match(r"/v2/instances/(halt|start|reboot)") and cmd == "POST":
                ids = body.get("instance_ids") or []
                insts = [S.get_instance(iid) for iid in ids]
                action = m.group(1)

                def bulk():
                    for i in insts:
                        self.power(i, action)
                    self.send(204)
                return bulk
            if match(r"/v2/instances/([^/]+)"):
                inst = S.get_instance(m.group(1))
                if cmd == "GET":
                    return self.send(200, {"instance": S.instance_view(inst)})
                if cmd == "PATCH":
                    S.update_instance(inst, body)
                    return self.send(202, {"instance": S.instance_view(inst)})
                if cmd == "DELETE":
                    if S.phase(inst)["server_status"] in ("none", "locked"):
                        raise ApiError(500, LOCKED_DELETE)
                    inst.deleted = True
                    del S.instances[inst.id]
                    # Ending sshd and its sessions takes a moment: not under the lock.
                    return lambda: S.destroy(inst) or self.send(204)
            if match(r"/v2/instances/([^/]+)/(halt|start|reboot)") and cmd == "POST":
                inst, action = S.get_instance(m.group(1)), m.group(2)
                return lambda: self.power(inst, action) or self.send(204)
            if match(r"/v2/instances/([^/]+)/user-data") and cmd == "GET":
                return self.send(200, {"user_data": {"data": S.get_instance(m.group(1)).user_data}})
            if match(r"/v2/instances/([^/]+)/upgrades") and cmd == "GET":
                return self.send(200, {"upgrades": S.upgrades(S.get_instance(m.group(1)))})
            if match(r"/v2/snapshots"):
                if cmd == "GET":
                    snaps = [S.snapshot_view(s) for s in S.snapshots.values()
                             if not q.get("description") or s["description"] == q["description"]]
                    return self.send(200, paged(snaps, q, "snapshots"))
                if cmd == "POST":
                    return lambda: self.send(201, {"snapshot": S.create_snapshot(body)})
            if match(r"/v2/snapshots/create-from-url") and cmd == "POST":
                if not body.get("url"):
                    raise ApiError(400, "Missing required parameter: url")
                sid = str(uuid.uuid4())
                tar = os.path.join(S.snap_root, sid + ".tar")
                subprocess.run(["tar", "-cf", tar, "-T", "/dev/null"], check=True)
                snap = S._add_snapshot(sid, body.get("description") or body["url"], 0, 159, 0, tar)
                return self.send(202, {"snapshot": snap})
            if match(r"/v2/snapshots/([^/]+)"):
                s = S.snapshots.get(m.group(1))
                if not s:
                    raise ApiError(404, "Invalid snapshot-id.")
                if cmd == "GET":
                    return self.send(200, {"snapshot": S.snapshot_view(s)})
                if cmd == "PUT":
                    s["description"] = str(body.get("description") or "")
                    return self.send(204)
                if cmd == "DELETE":
                    del S.snapshots[s["id"]]
                    try:
                        os.unlink(s["_tar"])
                    except OSError:
                        pass
                    return self.send(204)
            if match(r"/v2/ssh-keys"):
                if cmd == "GET":
                    return self.send(200, paged(copy.deepcopy(list(S.ssh_keys.values())), q, "ssh_keys"))
                if cmd == "POST":
                    if not body.get("name"):
                        raise ApiError(400, "Missing required parameter: name")
                    k = {"id": str(uuid.uuid4()), "date_created": iso_now(), "name": str(body["name"]),
                         "ssh_key": S.check_key(body.get("ssh_key"))}
                    S.ssh_keys[k["id"]] = k
                    return self.send(201, {"ssh_key": dict(k)})
            if match(r"/v2/ssh-keys/([^/]+)"):
                k = S.ssh_keys.get(m.group(1))
                if not k:
                    raise ApiError(404, "Invalid ssh-key-id.")
                if cmd == "GET":
                    return self.send(200, {"ssh_key": dict(k)})
                if cmd == "PATCH":
                    if "ssh_key" in body:
                        k["ssh_key"] = S.check_key(body["ssh_key"])
                    if body.get("name"):
                        k["name"] = str(body["name"])
                    return self.send(204)
                if cmd == "DELETE":
                    del S.ssh_keys[k["id"]]
                    return self.send(204)
        if known:
            raise ApiError(405, "Method not allowed.")
        raise ApiError(404, "Not found.")

    def power(self, inst, action):
        S = self.S
        if action == "start":
            inst.halted = False
            inst.sshd_error = None
            S.wake.set()
            return
        inst.halted = action == "halt"
        with inst.oplock:   # halt or reboot: the machine goes down with its sessions
            S.stop_sshd(inst)
        S.wake.set()

    def control(self, path, q):
        S = self.S
        cmd = self.command
        if path == "/_standin/state" and cmd == "GET":
            with S.lock:
                return self.send(200, {
                    "instances": [S.instance_view(i, extra=True) for i in S.instances.values()],
                    "ssh_keys": [dict(k) for k in S.ssh_keys.values()],
                    "snapshots": [S.snapshot_view(s) for s in S.snapshots.values()],
                    "requests": S.requests, "rate_limited": S.rate_limited,
                    "peak_rps": S.peak_rps, "log": list(S.log),
                    "ssh_port": S.ssh_port, "login_user": S.user, "config": dict(S.config)})
        if path == "/_standin/config":
            if cmd == "POST":
                body = self.body()
                unknown = [k for k in body if k not in DEFAULT_CONFIG]
                if unknown:
                    raise ApiError(400, "Unknown config keys: %s" % ", ".join(unknown))
                with S.lock:
                    S.config.update(body)
                S.wake.set()
            if cmd in ("GET", "POST"):
                with S.lock:
                    return self.send(200, dict(S.config))
        if path == "/_standin/faults":
            if cmd == "POST":
                b = self.body()
                if "path" not in b or "status" not in b:
                    raise ApiError(400, "A fault needs path and status.")
                try:
                    re.compile(b["path"])
                except re.error as e:
                    raise ApiError(400, "Bad path regex: %s" % e)
                status = int(b["status"])
                f = {"method": (b.get("method") or "*").upper(), "path": b["path"], "status": status,
                     "body": b.get("body", {"error": "Injected fault", "status": status}),
                     "count": int(b.get("count", 1)), "delay": b.get("delay"),
                     "headers": b.get("headers") or {}}
                with S.lock:
                    S.faults.append(f)
                return self.send(201, {"fault": f})
            if cmd == "DELETE":
                with S.lock:
                    S.faults = []
                return self.send(204)
            if cmd == "GET":
                with S.lock:
                    return self.send(200, {"faults": list(S.faults)})
        if path == "/_standin/advance" and cmd == "POST":
            secs = float(self.body().get("seconds", 0))
            with S.lock:
                S.clock_offset += max(0.0, secs)
            S.wake.set()
            return self.send(204)
        if path == "/_standin/reset" and cmd == "POST":
            S.delete_everything()
            with S.lock:
                S.config = dict(S.initial_config)
            return self.send(204)
        raise ApiError(404, "Not found.")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ssh-port", type=int, default=0)
    ap.add_argument("--api-key", default="")
    ap.add_argument("--rate-limit", type=int, default=DEFAULT_CONFIG["rate_limit"])
    ap.add_argument("--retry-after", type=float, default=None)
    for k in TIMING_KEYS:
        ap.add_argument("--" + k.replace("_", "-"), type=float, default=DEFAULT_CONFIG[k])
    ap.add_argument("--no-sshd", action="store_true", help="instances never start sshd")
    ap.add_argument("--config", default="", help="JSON object of config keys (applied last)")
    ap.add_argument("--watch-stdin", action="store_true", help="exit when stdin reaches end-of-file")
    args = ap.parse_args()

    config = dict(DEFAULT_CONFIG)
    config["rate_limit"] = args.rate_limit
    config["retry_after"] = args.retry_after
    config["start_sshd"] = not args.no_sshd
    for k in TIMING_KEYS:
        config[k] = getattr(args, k)
    if args.config:
        extra = json.loads(args.config)
        unknown = [k for k in extra if k not in DEFAULT_CONFIG]
        if unknown:
            ap.error("unknown config keys: " + ", ".join(unknown))
        config.update(extra)
    if not os.path.exists(SSHD):
        ap.error(SSHD + " not found: install openssh-server (bash scripts/setup.sh)")

    S = Standin(args, config)
    Handler.S = S
    httpd = Server(("127.0.0.1", args.port), Handler)
    done = threading.Event()

    def stop(*_):
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    threading.Thread(target=S.state_loop, daemon=True).start()
    if args.watch_stdin:
        def watch():
            while sys.stdin.buffer.read(4096):
                pass
            done.set()
        threading.Thread(target=watch, daemon=True).start()
    print("READY http://127.0.0.1:%d/v2 ssh_port=%d login_user=%s"
          % (httpd.server_address[1], S.ssh_port, S.user), flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        httpd.shutdown()
        S.shutdown()
        httpd.server_close()


if __name__ == "__main__":
    main()
