#!/usr/bin/env python3
"""A stand-in for AWS on 127.0.0.1: moto_server behind a thin proxy that adds
what moto lacks, for ephrun's tests.

    python3 standin.py --state-dir DIR [--port 0] [--config JSON] [--watch-stdin]

Once listening it prints one line on stdout:

    READY http://127.0.0.1:PORT ssh_port=P login_user=U imds_port=M

Every AWS request (any service: EC2, S3, STS, IAM, ...) goes to a moto server it
runs in-process on a private port; the service is read from the SigV4 credential
scope. On top of moto, for EC2:
- each RunInstances gets a real OpenSSH sshd on its own address 127.0.0.N (the
  shared guest of tests/fakes/guest.py: host key and authorized keys from the
  `#cloud-config` user-data, logging in as `ephrun-aws`, or the current user when
  not root), reported as `ipAddress`;
- time passes: pending → running, stopping → stopped, shutting-down → terminated
  take `pending_seconds`, `stopping_seconds`, `shutting_down_seconds`; sshd runs
  only while `running`; StartInstances on a stopping instance and changing the
  type of one that is not stopped answer IncorrectInstanceState;
- DeleteSecurityGroup answers DependencyViolation while an instance in the group
  is not terminated;
- a shutdown inside the instance (the `shutdown`/`poweroff`/`halt` on its PATH, or
  a `runcmd` `shutdown -h +N` in its user-data, N × `minute_seconds`) follows
  InstanceInitiatedShutdownBehavior: `terminate` terminates it, `stop` (the
  default) stops it; either way with state reason Client.InstanceInitiatedShutdown;
- a spot interruption (control endpoint below) publishes the IMDSv2
  `spot/instance-action` document at once and terminates the instance
  `seconds` later with state reason Server.SpotInstanceTermination;
- with config `enforce_size` (default false) each guest's sshd runs with its
  type's vCPUs (at most this machine's, taskset) and memory (RLIMIT_AS), from
  moto's instance type table, so `nproc` and `ulimit -v` show the type; a type
  change applies when the instance starts again;
- CreateSchedule is refused (ValidationException) for what EventBridge Scheduler refuses
  and moto accepts: no FlexibleTimeWindow, no role ARN, a bad `at()` expression, an
  ec2:terminateInstances target whose Input is not {"InstanceIds": [...]}; moto stores
  schedules and never runs them: /_standin/scheduler/fire does;
- with config "credentials" ({access key id: {"secret", "token", "expired"}}), every AWS
  request must be signed (SigV4, checked with botocore's signer) with one of those keys and
  its session token, else it gets the service's own refusal (EC2 AuthFailure, S3
  SignatureDoesNotMatch / InvalidAccessKeyId, RequestExpired / ExpiredToken for an expired token);
- each instance has an IMDSv2 endpoint on its own address (port `imds_port`),
  given to its sessions as AWS_EC2_METADATA_SERVICE_ENDPOINT, as botocore reads it:
  PUT /latest/api/token, then GET /latest/meta-data/{instance-id,
  instance-life-cycle, spot/instance-action} with X-aws-ec2-metadata-token.

Control endpoints (not AWS, not faulted, not logged, not throttled):
    GET  /_standin/state      {"instances":[…], "requests", "throttled", "peak_rps" (most AWS requests
                               let through in one sliding second), "log":[{t,service,action,method,path,status}],
                               "faults", "config", "ssh_port", "login_user", "imds_port"}
    GET|POST /_standin/config read / change config keys (JSON object); `rate_limit` N > 0 answers
                               RequestLimitExceeded (503) to any AWS request beyond N in one sliding
                               second, as EC2 throttles an account (0: off, the default)
    POST /_standin/faults     {"action" (or "*"), "service" (default "ec2"), "code", "message",
                               "status", "count"}: the next `count` matching calls get that AWS
                               error (RequestLimitExceeded storms, InsufficientInstanceCapacity);
                               status defaults: RequestLimitExceeded 503,
                               InsufficientInstanceCapacity 500, others 400; with "after": true
                               the call is carried out first and only its reply replaced (after
                               "delay" seconds): a create whose answer was lost
    GET|DELETE /_standin/faults
    POST /_standin/instances/ID/shutdown   {"args": ["-P", "+2"]}: as if run inside it
    POST /_standin/instances/ID/interrupt  {"action": "terminate", "seconds": 120}
    POST /_standin/scheduler/fire  {"now": epoch seconds (default: the stand-in's clock)}: what
                              EventBridge Scheduler would do: each due one-time `at()` schedule
                              runs (ec2:terminateInstances terminates its instances) and is
                              deleted if ActionAfterCompletion=DELETE; answers {"fired": [...]}
    POST /_standin/advance    {"seconds": N} moves the stand-in's clock forward (the scheduler's too)
    POST /_standin/reset      moto's /moto-api/reset, and every instance stopped
SIGTERM, SIGINT, end of stdin with --watch-stdin: stops every sshd it started and
removes the files it made under DIR.
"""
import argparse
import base64
import collections
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import guest  # noqa: E402  (tests/fakes/guest.py)

LOGIN_USER_AS_ROOT = "ephrun-aws"
MARKER = "EPHRUN_AWS_INSTANCE"
DEFAULT_CONFIG = {
    "pending_seconds": 0.5, "stopping_seconds": 0.5, "shutting_down_seconds": 0.5,
    "minute_seconds": 60.0, "start_sshd": True, "enforce_size": False, "rate_limit": 0,
    # {access key id: {"secret", "token" (optional), "expired" (optional)}}; empty: no check
    "credentials": {},
}
TIMING_KEYS = [k for k in DEFAULT_CONFIG if k.endswith("_seconds")]
STATE_CODES = {"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48,
               "stopping": 64, "stopped": 80}
DEFAULT_STATUS = {"RequestLimitExceeded": 503, "InsufficientInstanceCapacity": 500,
                  "InternalError": 500, "Unavailable": 503}
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate", "content-length"}


def log(msg):
    print("aws-standin: " + msg, file=sys.stderr, flush=True)


def local(tag):
    return tag.rsplit("}", 1)[-1]


def child(el, name):
    for c in el:
        if local(c.tag) == name:
            return c
    return None


def children(el, name):
    return [c for c in el if local(c.tag) == name]


def items(el, set_name):
    s = child(el, set_name) if el is not None else None
    return children(s, "item") if s is not None else []


def set_text(parent, name, text):
    c = child(parent, name)
    if c is None:
        ns = parent.tag[: parent.tag.index("}") + 1] if parent.tag.startswith("{") else ""
        c = ET.SubElement(parent, ns + name)
    c.text = text
    return c


def put_state(parent, name, state):
    el = child(parent, name)
    if el is None:
        ns = parent.tag[: parent.tag.index("}") + 1] if parent.tag.startswith("{") else ""
        el = ET.SubElement(parent, ns + name)
    set_text(el, "code", str(STATE_CODES[state]))
    set_text(el, "name", state)


def ec2_error(code, message):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>%s</Code>'
            '<Message>%s</Message></Error></Errors><RequestID>%s</RequestID></Response>'
            % (code, xml_escape(message), uuid.uuid4())).encode()


def query_error(code, message):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<ErrorResponse><Error><Type>Sender</Type>'
            '<Code>%s</Code><Message>%s</Message></Error><RequestId>%s</RequestId></ErrorResponse>'
            % (code, xml_escape(message), uuid.uuid4())).encode()


def s3_error(code, message):
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>%s</Code><Message>%s</Message>'
            '<RequestId>%s</RequestId></Error>' % (code, xml_escape(message), uuid.uuid4())).encode()


def json_error(code, message):
    return json.dumps({"__type": code, "message": message}).encode()


# How each service refuses a request it cannot authenticate: (status, code, message).
AUTH_ERRORS = {
    "ec2": {"unknown_key": (401, "AuthFailure", "AWS was not able to validate the provided access credentials"),
            "signature": (401, "AuthFailure", "AWS was not able to validate the provided access credentials"),
            "token": (401, "AuthFailure", "AWS was not able to validate the provided access credentials"),
            "expired": (400, "RequestExpired", "Request has expired.")},
    "s3": {"unknown_key": (403, "InvalidAccessKeyId",
                           "The AWS Access Key Id you provided does not exist in our records."),
           "signature": (403, "SignatureDoesNotMatch", "The request signature we calculated does not match the "
                         "signature you provided. Check your key and signing method."),
           "token": (400, "InvalidToken", "The provided token is malformed or otherwise invalid."),
           "expired": (400, "ExpiredToken", "The provided token has expired.")},
    "scheduler": {"unknown_key": (403, "UnrecognizedClientException",
                                  "The security token included in the request is invalid."),
                  "signature": (403, "InvalidSignatureException", "The request signature we calculated does not "
                                "match the signature you provided. Check your AWS Secret Access Key and signing "
                                "method."),
                  "token": (403, "UnrecognizedClientException",
                            "The security token included in the request is invalid."),
                  "expired": (403, "ExpiredTokenException", "The security token included in the request is expired")},
    "*": {"unknown_key": (403, "InvalidClientTokenId", "The security token included in the request is invalid."),
          "signature": (403, "SignatureDoesNotMatch", "The request signature we calculated does not match the "
                        "signature you provided. Check your AWS Secret Access Key and signing method."),
          "token": (403, "InvalidClientTokenId", "The security token included in the request is invalid."),
          "expired": (403, "ExpiredToken", "The security token included in the request is expired")},
}
AUTH_HEADER = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, ?"
                         r"SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})$")
REST_JSON = {"scheduler"}


def check_auth(credentials, method, raw_path, headers, body, service):
    """Refuses, as the service would, a request not signed with a configured key:
    the access key id must be known, its session token match and not be expired,
    and the SigV4 signature be the one botocore computes with the secret."""
    if not credentials:
        return
    from botocore.auth import S3SigV4Auth, SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    errs = AUTH_ERRORS.get(service, AUTH_ERRORS["*"])
    h = {k.lower(): v for k, v in headers.items()}
    m = AUTH_HEADER.match(h.get("authorization", ""))
    known = m and credentials.get(m.group(1))
    if not known:
        raise AwsError(*errs["unknown_key"])
    if (known.get("token") or None) != (h.get("x-amz-security-token") or None):
        raise AwsError(*errs["token"])
    signed = m.group(5).split(";")
    req = AWSRequest(method=method, url="http://" + h.get("host", "") + raw_path,
                     headers={x: h[x] for x in signed if x in h}, data=body)
    req.context["timestamp"] = h.get("x-amz-date", "")
    signer = (S3SigV4Auth if service == "s3" else SigV4Auth)(
        Credentials(m.group(1), known["secret"], h.get("x-amz-security-token")), m.group(4), m.group(3))
    if signer.signature(signer.string_to_sign(req, signer.canonical_request(req)), req) != m.group(6):
        raise AwsError(*errs["signature"])
    if known.get("expired"):
        raise AwsError(*errs["expired"])


# ---------------------------------------------------------------- EventBridge Scheduler

TERMINATE_TARGET = "arn:aws:scheduler:::aws-sdk:ec2:terminateInstances"
AT = re.compile(r"at\((\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\)$")


def schedule_due(expression, timezone):
    """Seconds since the epoch when a one-time `at(...)` schedule fires, or None for another kind."""
    m = AT.match(expression or "")
    if not m:
        return None
    import calendar
    import datetime
    import zoneinfo
    parts = [int(x) for x in m.groups()]
    if (timezone or "UTC") == "UTC":
        return calendar.timegm(tuple(parts) + (0, 0, 0))
    return datetime.datetime(*parts, tzinfo=zoneinfo.ZoneInfo(timezone)).timestamp()


def check_schedule(body):
    """What EventBridge Scheduler refuses at CreateSchedule and moto lets through."""
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        raise AwsError(400, "ValidationException", "the request body is not JSON")
    expr = doc.get("ScheduleExpression") or ""
    if not (AT.match(expr) or expr.startswith("rate(") or expr.startswith("cron(")):
        raise AwsError(400, "ValidationException", "Invalid Schedule Expression %s." % expr)
    if (doc.get("FlexibleTimeWindow") or {}).get("Mode") not in ("OFF", "FLEXIBLE"):
        raise AwsError(400, "ValidationException", "FlexibleTimeWindow.Mode must be OFF or FLEXIBLE")
    target = doc.get("Target") or {}
    if not target.get("Arn") or not re.match(r"arn:aws[\w-]*:iam::\d{12}:role/.+", target.get("RoleArn") or ""):
        raise AwsError(400, "ValidationException", "Target.Arn and Target.RoleArn (an IAM role ARN) are required")
    if target["Arn"] == TERMINATE_TARGET:
        try:
            ids = json.loads(target.get("Input") or "")["InstanceIds"]
        except (ValueError, KeyError, TypeError):
            ids = None
        if not (isinstance(ids, list) and ids and all(isinstance(i, str) for i in ids)):
            raise AwsError(400, "ValidationException",
                           'Target.Input of ec2:terminateInstances must be {"InstanceIds": ["i-..."]}')
    if doc.get("ActionAfterCompletion") not in (None, "NONE", "DELETE"):
        raise AwsError(400, "ValidationException", "ActionAfterCompletion must be NONE or DELETE")


def xml_escape(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class AwsError(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


# ---------------------------------------------------------------- instances

_TYPES = None


def type_size(itype):
    """(vCPUs, MiB) of an instance type, from moto's own table; () when unknown."""
    global _TYPES
    if _TYPES is None:
        import gzip
        import moto
        path = os.path.join(os.path.dirname(moto.__file__), "ec2", "resources", "instance_types.json.gz")
        with gzip.open(path) as f:
            _TYPES = json.load(f)
    t = _TYPES.get(itype)
    if not t:
        return ()
    return (t["VCpuInfo"]["DefaultVCpus"], t["MemoryInfo"]["SizeInMiB"])


class Instance:
    def __init__(self, **kw):
        self.__dict__.update(kw)
        self.oplock = threading.Lock()   # held while sshd or IMDS start or stop
        self.proc = None
        self.imds = None
        self.provisioned = False
        self.cloud_init_error = None
        self.sshd_error = None
        self.host_public = None
        self.reason = None               # (code, message) of the last state change
        self.shutdown_at = None          # an in-guest shutdown pending at this time
        self.shutdown_minutes = None
        self.interrupt = None            # {"action", "time" (ISO), "at" (clock)}
        self.tokens = {}                 # IMDSv2 token -> expiry (clock)
        self.gone = False                # terminated and cleaned up
        self.history = []                # [{"state", "at" (stand-in clock)}]


class Standin:
    def __init__(self, args, config):
        self.args = args
        self.state_dir = os.path.abspath(args.state_dir)
        self.made_state_dir = not os.path.exists(self.state_dir)
        os.makedirs(self.state_dir, exist_ok=True)
        os.chmod(self.state_dir, 0o755)   # sessions run as the login user
        self.inst_root = os.path.join(self.state_dir, "instances")
        os.makedirs(self.inst_root, mode=0o755, exist_ok=True)
        os.chmod(self.inst_root, 0o755)
        self.initial_config = dict(config)
        self.config = dict(config)
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self.stopping = False
        self.user, self.uid, self.gid = guest.ensure_login_user(LOGIN_USER_AS_ROOT)
        # Holding 127.0.0.1:port keeps other programs from being given the shared ports.
        self.guards = []
        self.ssh_port = self._reserve()
        self.imds_port = self._reserve()
        self.clock_offset = 0.0
        self.ip_counter = 0
        self.port = None
        self._clear()
        import logging
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer
        logging.getLogger("werkzeug").setLevel(logging.ERROR)   # no line per request on stderr
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        self.moto_port = self.moto.get_host_and_port()[1]

    def _reserve(self):
        port = guest.free_port()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", port))
        self.guards.append(s)
        return port

    def _clear(self):
        self.instances = collections.OrderedDict()
        self.faults = []
        self.requests = 0
        self.throttled = 0
        self.peak_rps = 0
        self.window = collections.deque()   # arrival times of the AWS requests of the last second
        self.log = []

    def now(self):
        return time.monotonic() + self.clock_offset

    def allocate_ip(self):
        # 127.0.2.x upwards: the Vultr stand-in counts from 127.0.0.2, so both can run at once.
        used = {i.ip for i in self.instances.values() if not i.gone}
        for _ in range(200 * 254):
            n = self.ip_counter
            self.ip_counter = (self.ip_counter + 1) % (200 * 254)
            ip = "127.0.%d.%d" % (2 + n // 254, n % 254 + 1)
            if ip not in used:
                return ip
        raise AwsError(500, "InternalError", "the stand-in has no loopback address left")

    # -- moto
    def moto_request(self, method, path, headers, body):
        conn = HTTPConnection("127.0.0.1", self.moto_port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, [(k, v) for k, v in r.getheaders()], r.read()
        finally:
            conn.close()

    def moto_ec2(self, inst, action, params):
        """An EC2 call of the stand-in's own (keeping moto's state in step),
        made with the headers of the call that created the instance, so it lands
        in the same account and region."""
        form = {"Action": action, "Version": "2016-11-15"}
        form.update(params)
        body = urllib.parse.urlencode(form).encode()
        headers = dict(inst.auth)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
        status, _, data = self.moto_request("POST", "/", headers, body)
        if status >= 300:
            log("moto %s for %s answered %d: %s" % (action, inst.id, status, data[:300]))

    # -- the life of an instance
    def begin(self, inst, state, reason=None):
        """Moves `inst` to `state` now (caller holds the state lock)."""
        inst.state, inst.since = state, self.now()
        inst.history.append({"state": state, "at": inst.since})
        if reason:
            inst.reason = reason
        self.wake.set()

    def shown_state(self, inst):
        return inst.state

    def request_shutdown(self, inst, minutes):
        with self.lock:
            if inst.state not in ("pending", "running"):
                return False
            inst.shutdown_at = self.now() + minutes * float(self.config["minute_seconds"])
        self.wake.set()
        return True

    def guest_power_off(self, inst, reason):
        """A power-off inside the guest: InstanceInitiatedShutdownBehavior decides."""
        if inst.shutdown_behavior == "terminate":
            with self.lock:
                self.begin(inst, "shutting-down", reason)
            self.moto_ec2(inst, "TerminateInstances", {"InstanceId.1": inst.id})
        else:
            with self.lock:
                self.begin(inst, "stopping", reason)
            self.moto_ec2(inst, "StopInstances", {"InstanceId.1": inst.id})

    def provision(self, inst):
        """The instance's home, host key, authorized keys, sshd config and the
        guest's own shutdown commands, as cloud-init would leave them (state thread)."""
        os.makedirs(inst.home, exist_ok=True)
        os.chmod(inst.dir, 0o755)
        os.chown(inst.home, self.uid, self.gid)
        os.chmod(inst.home, 0o755)
        try:
            ud = guest.parse_user_data(inst.user_data)
        except Exception as e:  # cloud-init would log and go on
            inst.cloud_init_error = "user-data: %s" % e
            ud = guest.parse_user_data("")
        key, inst.host_public = guest.write_host_key(inst.dir, ud, inst.id)
        ak = guest.write_authorized_keys(inst.dir, ud["authorized_keys"])
        inst.shutdown_minutes = ud["shutdown_minutes"]
        bindir = os.path.join(inst.dir, "bin")
        os.makedirs(bindir, exist_ok=True)
        os.chmod(bindir, 0o755)
        for cmd in ("shutdown", "poweroff", "halt"):
            path = os.path.join(bindir, cmd)
            with open(path, "w") as f:
                f.write("#!/bin/sh\n# The AWS stand-in's %s: asks the stand-in to power this instance off.\n"
                        "exec curl -sf -o /dev/null -X POST -H 'Content-Type: application/json' "
                        "--data-binary \"{\\\"command\\\": \\\"%s\\\", \\\"line\\\": \\\"$*\\\"}\" "
                        "http://127.0.0.1:%d/_standin/instances/%s/shutdown\n"
                        % (cmd, cmd, self.port, inst.id))
            os.chmod(path, 0o755)
        extra = ["PATH=%s:/usr/local/bin:/usr/bin:/bin" % bindir,
                 "AWS_EC2_METADATA_SERVICE_ENDPOINT=http://%s:%d/" % (inst.ip, self.imds_port)]
        with open(os.path.join(inst.dir, "sshd_config"), "w") as f:
            f.write(guest.sshd_config("AWS stand-in instance " + inst.id, inst.ip, self.ssh_port, key, ak,
                                      self.user, MARKER, inst.id, inst.home, extra))
        self.start_imds(inst)
        inst.provisioned = True

    def start_imds(self, inst):
        S = self

        class Imds(ImdsHandler):
            standin, instance = S, inst
        srv = ThreadingHTTPServer((inst.ip, self.imds_port), Imds)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
        inst.imds = srv

    def stop_sshd(self, inst):
        roots = [inst.proc.pid] if inst.proc else []
        guest.kill_instance_processes(MARKER, inst.id, roots, os.path.join(inst.dir, "sshd_config"), self.uid)
        if inst.proc:
            try:
                inst.proc.wait(timeout=5)
            except Exception:
                pass
        inst.proc = None

    def cleanup(self, inst):
        """Everything of a terminated instance goes (caller holds its oplock)."""
        self.stop_sshd(inst)
        if inst.imds:
            # shutdown() waits out the server's poll interval: not on the state thread
            srv, inst.imds = inst.imds, None
            threading.Thread(target=lambda: (srv.shutdown(), srv.server_close()), daemon=True).start()
        shutil.rmtree(inst.dir, ignore_errors=True)
        inst.gone = True

    def advance(self, inst, t, cfg):
        """The timed state changes (caller holds the lock)."""
        st, el = inst.state, t - inst.since
        if st == "pending" and el >= cfg["pending_seconds"]:
            self.begin(inst, "running")
            if inst.shutdown_minutes is not None and inst.shutdown_at is None and not inst.booted:
                inst.shutdown_at = t + inst.shutdown_minutes * cfg["minute_seconds"]
            inst.booted = True
        elif st == "stopping" and el >= cfg["stopping_seconds"]:
            self.begin(inst, "stopped")
        elif st == "shutting-down" and el >= cfg["shutting_down_seconds"]:
            self.begin(inst, "terminated")

    def tick(self):
        t = self.now()
        with self.lock:
            insts = [i for i in self.instances.values() if not i.gone]
            cfg = dict(self.config)
            # Every instance's due change first: the slow work below for one
            # instance (provisioning, sshd, cleanup) must not hold back another's,
            # or fifty terminations end one after the other.
            for inst in insts:
                if inst.provisioned:
                    self.advance(inst, t, cfg)
        for inst in insts:
            with inst.oplock:
                if self.stopping:
                    return
                if not inst.provisioned:
                    try:
                        self.provision(inst)
                    except Exception as e:
                        inst.cloud_init_error = "provisioning: %s" % e
                        inst.provisioned = True
                        log("instance %s: %s" % (inst.id, inst.cloud_init_error))
                power_off = None
                with self.lock:
                    self.advance(inst, t, cfg)
                    st = inst.state
                    if st == "running" and inst.interrupt and t >= inst.interrupt["at"]:
                        power_off = "spot"
                    elif st == "running" and inst.shutdown_at is not None and t >= inst.shutdown_at:
                        inst.shutdown_at = None
                        power_off = "guest"
                if st in ("stopping", "stopped", "shutting-down", "terminated", "pending") and inst.proc:
                    self.stop_sshd(inst)
                if st == "terminated":
                    self.cleanup(inst)
                    continue
                if power_off == "spot":
                    self.stop_sshd(inst)
                    with self.lock:
                        self.begin(inst, "shutting-down", ("Server.SpotInstanceTermination",
                                                           "Server.SpotInstanceTermination: Spot instance termination"))
                    self.moto_ec2(inst, "TerminateInstances", {"InstanceId.1": inst.id})
                    continue
                if power_off == "guest":
                    self.stop_sshd(inst)
                    self.guest_power_off(inst, ("Client.InstanceInitiatedShutdown",
                                                "Client.InstanceInitiatedShutdown: Instance initiated shutdown"))
                    continue
                if inst.proc and inst.proc.poll() is not None:
                    inst.sshd_error = "sshd exited with %s: %s" % (
                        inst.proc.returncode, (guest.read_file(os.path.join(inst.dir, "sshd.log")) or "")[-2000:])
                    log("instance %s: %s" % (inst.id, inst.sshd_error))
                    inst.proc = None
                if (st == "running" and not inst.proc and inst.start_sshd and not inst.sshd_error
                        and not inst.cloud_init_error):
                    try:
                        inst.proc = guest.start_sshd(inst.dir, *(type_size(inst.itype) if cfg.get("enforce_size")
                                                                 else ()))
                    except OSError as e:
                        inst.sshd_error = str(e)

    def next_deadline(self):
        t = self.now()
        best = 0.5
        with self.lock:
            cfg = self.config
            for inst in self.instances.values():
                if inst.gone:
                    continue
                if not inst.provisioned:
                    return 0.005
                ends = {"pending": cfg["pending_seconds"], "stopping": cfg["stopping_seconds"],
                        "shutting-down": cfg["shutting_down_seconds"]}
                ats = [inst.shutdown_at, inst.interrupt and inst.interrupt["at"]]
                if inst.state in ends:
                    ats.append(inst.since + float(ends[inst.state]))
                for at in ats:
                    if at is not None:
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

    def view(self, inst):
        return {"id": inst.id, "state": inst.state, "ip": inst.ip, "dir": inst.dir, "home": inst.home,
                "shutdown_behavior": inst.shutdown_behavior, "spot": inst.spot, "groups": inst.groups,
                "reason": inst.reason and {"code": inst.reason[0], "message": inst.reason[1]},
                "sshd_running": bool(inst.proc and inst.proc.poll() is None),
                "sshd_error": inst.sshd_error, "cloud_init_error": inst.cloud_init_error,
                "host_key_public": inst.host_public, "interrupt": inst.interrupt,
                "user_data": inst.user_data, "history": list(inst.history)}

    def fire_schedules(self, now=None):
        """Does what EventBridge Scheduler would have done by `now` (the stand-in's
        wall clock by default): every enabled one-time schedule that is due runs its
        target (ec2:terminateInstances is carried out; any other target is reported,
        not run), then is deleted when its ActionAfterCompletion is DELETE."""
        from moto.scheduler.models import scheduler_backends
        now = time.time() + self.clock_offset if now is None else float(now)
        fired = []
        for account, regions in list(scheduler_backends.items()):
            for region, backend in list(regions.items()):
                for group in list(backend.schedule_groups.values()):
                    for sc in list(group.schedules.values()):
                        due = schedule_due(sc.schedule_expression, sc.schedule_expression_timezone)
                        if due is None or due > now or sc.state != "ENABLED":
                            continue
                        target = sc.target or {}
                        result = {"name": sc.name, "group": group.name, "region": region, "account": account,
                                  "target": target.get("Arn"), "role": target.get("RoleArn"), "instances": {}}
                        if target.get("Arn") == TERMINATE_TARGET:
                            for iid in json.loads(target.get("Input") or "{}").get("InstanceIds", []):
                                result["instances"][iid] = self.terminate_by_schedule(iid)
                        if sc.action_after_completion == "DELETE":
                            group.schedules.pop(sc.name, None)
                        else:
                            sc.state = "DISABLED"   # a one-time schedule does not fire twice
                        fired.append(result)
        return fired

    def terminate_by_schedule(self, iid):
        with self.lock:
            inst = self.instances.get(iid)
            if inst is None:
                return "unknown"
            if inst.state in ("shutting-down", "terminated"):
                return "already " + inst.state
            self.begin(inst, "shutting-down", ("Client.UserInitiatedShutdown",
                                               "Client.UserInitiatedShutdown: User initiated shutdown"))
        with inst.oplock:
            self.stop_sshd(inst)
        self.moto_ec2(inst, "TerminateInstances", {"InstanceId.1": iid})
        return "terminated"

    def delete_everything(self):
        with self.lock:
            insts = list(self.instances.values())
            self._clear()
        for inst in insts:
            with inst.oplock:
                if not inst.gone:
                    self.cleanup(inst)

    def shutdown(self):
        self.stopping = True
        self.wake.set()
        self.delete_everything()
        try:
            self.moto.stop()
        except Exception:
            pass
        shutil.rmtree(self.inst_root, ignore_errors=True)
        if self.made_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        for g in self.guards:
            g.close()


# ---------------------------------------------------------------- EC2 on top of moto

def params_of(method, path, headers, body):
    q = urllib.parse.urlsplit(path).query
    params = {k: v[-1] for k, v in urllib.parse.parse_qs(q, keep_blank_values=True).items()}
    if method == "POST" and "x-www-form-urlencoded" in (headers.get("Content-Type") or ""):
        params.update({k: v[-1] for k, v in urllib.parse.parse_qs(
            body.decode("utf-8", "replace"), keep_blank_values=True).items()})
    return params


def service_of(headers, params):
    m = re.search(r"Credential=[^/]+/\d{8}/[^/]+/([^/]+)/aws4_request", headers.get("Authorization") or "")
    if m:
        return m.group(1)
    if params.get("Version") == "2016-11-15":
        return "ec2"
    return "s3"


def numbered(params, prefix):
    """Values of `prefix.1`, `prefix.2`, ... in order."""
    out = []
    for k, v in params.items():
        m = re.fullmatch(re.escape(prefix) + r"\.(\d+)", k)
        if m:
            out.append((int(m.group(1)), v))
    return [v for _, v in sorted(out)]


def state_filters(params):
    """The instance-state-name values a DescribeInstances asks for (None: any)."""
    wanted = None
    for k, v in params.items():
        m = re.fullmatch(r"Filter\.(\d+)\.Name", k)
        if m and v in ("instance-state-name", "instance-state-code"):
            vals = numbered(params, "Filter.%s.Value" % m.group(1))
            if v == "instance-state-code":
                by_code = {str(c): n for n, c in STATE_CODES.items()}
                vals = [by_code.get(x, x) for x in vals]
            wanted = set(vals) if wanted is None else wanted & set(vals)
    return wanted


class Ec2:
    """The EC2 behaviour moto lacks, before and after a call reaches it."""

    def __init__(self, S):
        self.S = S

    def known(self, iid):
        inst = self.S.instances.get(iid)
        return inst

    def before(self, action, params):
        S = self.S
        with S.lock:
            if action == "DeleteSecurityGroup":
                gid, name = params.get("GroupId"), params.get("GroupName")
                for inst in S.instances.values():
                    if inst.state == "terminated":
                        continue
                    for g in inst.groups:
                        if (gid and g["id"] == gid) or (name and g["name"] == name):
                            raise AwsError(400, "DependencyViolation",
                                           "resource %s has a dependent object" % (gid or name))
            if action == "StartInstances":
                for iid in numbered(params, "InstanceId"):
                    inst = self.known(iid)
                    if inst and inst.state in ("stopping", "shutting-down", "terminated"):
                        raise AwsError(400, "IncorrectInstanceState",
                                       "The instance '%s' is not in a state from which it can be started." % iid)
            if action == "StopInstances":
                for iid in numbered(params, "InstanceId"):
                    inst = self.known(iid)
                    if inst and inst.state in ("shutting-down", "terminated"):
                        raise AwsError(400, "IncorrectInstanceState",
                                       "This instance '%s' is not in a state from which it can be stopped." % iid)
            if action == "ModifyInstanceAttribute" and (params.get("InstanceType.Value")
                                                        or params.get("Attribute") == "instanceType"):
                inst = self.known(params.get("InstanceId"))
                if inst and inst.state != "stopped":
                    raise AwsError(400, "IncorrectInstanceState",
                                   "The instance '%s' is not in the 'stopped' state." % inst.id)
                if inst:   # the guest's size when it starts again (config enforce_size)
                    inst.itype = params.get("InstanceType.Value") or params.get("Value") or inst.itype

    def after(self, action, params, headers, root):
        """Rewrites moto's reply in `root`; returns None if it did not, else the
        instances whose machine goes down now (their sshd is stopped before the
        reply leaves, as a real stop or terminate ends SSH at once)."""
        fn = getattr(self, "after_" + action, None)
        if fn is None:
            return None
        return fn(params, headers, root) or []

    def after_RunInstances(self, params, headers, root):
        S = self.S
        auth = {k: v for k, v in headers.items()
                if k.lower() in ("authorization", "x-amz-date", "x-amz-security-token")}
        spot = params.get("InstanceMarketOptions.MarketType") == "spot"
        with S.lock:
            for item in items(root, "instancesSet"):
                iid = child(item, "instanceId").text
                groups = [{"id": (child(g, "groupId").text if child(g, "groupId") is not None else ""),
                           "name": (child(g, "groupName").text if child(g, "groupName") is not None else "")}
                          for g in items(item, "groupSet")]
                d = os.path.join(S.inst_root, iid)
                inst = Instance(
                    id=iid, ip=S.allocate_ip(), user_data=re.sub(r"\s+", "", params.get("UserData") or ""),
                    shutdown_behavior=params.get("InstanceInitiatedShutdownBehavior") or "stop",
                    spot=spot, groups=groups, auth=auth, dir=d, home=os.path.join(d, "home"),
                    itype=params.get("InstanceType") or "m1.small",
                    start_sshd=bool(S.config["start_sshd"]), booted=False)
                S.begin(inst, "pending")
                S.instances[iid] = inst
                self.overlay(item, inst)

    def overlay(self, item, inst):
        put_state(item, "instanceState", inst.state)
        if inst.state in ("stopped", "terminated", "shutting-down"):
            for name in ("ipAddress", "dnsName"):
                c = child(item, name)
                if c is not None:
                    item.remove(c)
        else:
            set_text(item, "ipAddress", inst.ip)
        if inst.reason:
            sr = child(item, "stateReason")
            if sr is None:
                ns = item.tag[: item.tag.index("}") + 1] if item.tag.startswith("{") else ""
                sr = ET.SubElement(item, ns + "stateReason")
            set_text(sr, "code", inst.reason[0])
            set_text(sr, "message", inst.reason[1])
            set_text(item, "reason", inst.reason[1])
        if inst.spot:
            set_text(item, "instanceLifecycle", "spot")

    def after_DescribeInstances(self, params, headers, root):
        S = self.S
        wanted = state_filters(params)
        rs = child(root, "reservationSet")
        if rs is None:
            return
        with S.lock:
            for res in list(children(rs, "item")):
                iset = child(res, "instancesSet")
                for item in list(children(iset, "item")) if iset is not None else []:
                    inst = S.instances.get(child(item, "instanceId").text)
                    if inst:
                        self.overlay(item, inst)
                    state = child(child(item, "instanceState"), "name").text
                    if wanted is not None and state not in wanted:
                        iset.remove(item)
                if iset is None or not children(iset, "item"):
                    rs.remove(res)

    def _changes(self, root, new_state, allowed_from):
        S = self.S
        down = []
        with S.lock:
            for item in items(root, "instancesSet"):
                inst = S.instances.get(child(item, "instanceId").text)
                if not inst:
                    continue
                prev = inst.state
                if prev in allowed_from:
                    S.begin(inst, new_state, ("Client.UserInitiatedShutdown",
                                              "Client.UserInitiatedShutdown: User initiated shutdown")
                            if new_state != "pending" else None)
                    if new_state == "pending":
                        inst.reason = None
                    else:
                        down.append(inst)
                put_state(item, "previousState", prev)
                put_state(item, "currentState", inst.state)
        return down

    def after_TerminateInstances(self, params, headers, root):
        return self._changes(root, "shutting-down", ("pending", "running", "stopping", "stopped"))

    def after_StopInstances(self, params, headers, root):
        return self._changes(root, "stopping", ("pending", "running"))

    def after_StartInstances(self, params, headers, root):
        return self._changes(root, "pending", ("stopped",))


# ---------------------------------------------------------------- HTTP

class ImdsHandler(BaseHTTPRequestHandler):
    """IMDSv2 of one instance: a token first, then metadata with that token."""
    protocol_version = "HTTP/1.1"
    server_version = "EC2ws"
    standin = None
    instance = None

    def log_message(self, fmt, *args):
        pass

    def send(self, status, body=b"", ctype="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self):
        S, inst = self.standin, self.instance
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        if self.path != "/latest/api/token":
            return self.send(404, b"Not Found")
        try:
            ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds") or "")
        except ValueError:
            return self.send(400, b"Bad Request")
        if not 1 <= ttl <= 21600:
            return self.send(400, b"Bad Request")
        tok = secrets.token_urlsafe(32)
        with S.lock:
            inst.tokens[tok] = S.now() + ttl
        self.send(200, tok.encode())

    def do_GET(self):
        S, inst = self.standin, self.instance
        tok = self.headers.get("X-aws-ec2-metadata-token")
        with S.lock:
            valid = tok is not None and inst.tokens.get(tok, 0) > S.now()
            interrupt = dict(inst.interrupt) if inst.interrupt else None
        if not valid:
            return self.send(401, b"Unauthorized")
        path = self.path.split("?", 1)[0]
        if path == "/latest/meta-data/instance-id":
            return self.send(200, inst.id.encode())
        if path == "/latest/meta-data/instance-life-cycle":
            return self.send(200, b"spot" if inst.spot else b"on-demand")
        if path == "/latest/meta-data/spot/instance-action":
            if not interrupt:
                return self.send(404, b"Not Found")
            doc = {"action": interrupt["action"], "time": interrupt["time"]}
            return self.send(200, json.dumps(doc).encode(), "application/json")
        self.send(404, b"Not Found")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "aws-standin"
    S = None
    EC2 = None

    def log_message(self, fmt, *args):
        pass

    def send(self, status, body=b"", headers=None, ctype="application/json"):
        self.send_response(status)
        sent_type = False
        length = str(len(body))
        for k, v in headers or []:
            if k.lower() == "content-length" and self.command == "HEAD":
                length = v  # a HEAD reply states the size of what a GET would send (S3's object size)
            if k.lower() in HOP:
                continue
            sent_type = sent_type or k.lower() == "content-type"
            self.send_header(k, v)
        if not sent_type and body:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", length)
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        self.handle_any()

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_GET

    def handle_any(self):
        body = self.read_body()
        path = urllib.parse.urlsplit(self.path).path
        if path.startswith("/_standin/"):
            try:
                self.control(path, body)
            except AwsError as e:
                self.send(e.status, json.dumps({"error": e.message}).encode())
            except (ValueError, KeyError) as e:
                self.send(400, json.dumps({"error": "bad control request: %r" % e}).encode())
            return
        headers = {k: v for k, v in self.headers.items()}
        params = params_of(self.command, self.path, headers, body)
        service = service_of(headers, params)
        action = params.get("Action") or ("%s %s" % (self.command, path))
        status = 500
        try:
            status = self.aws(service, action, params, headers, body)
        except AwsError as e:
            status = e.status
            if service in REST_JSON:
                self.send(e.status, json_error(e.code, e.message), [("x-amzn-ErrorType", e.code)])
            else:
                fmt = ec2_error if service == "ec2" else s3_error if service == "s3" else query_error
                self.send(e.status, fmt(e.code, e.message), ctype="text/xml")
        except Exception as e:  # a bug in the stand-in: say so, as AWS would, with a 500
            log("error serving %s %s: %r" % (self.command, self.path, e))
            status = 500
            self.send(500, ec2_error("InternalError", "stand-in error: %r" % e), ctype="text/xml")
        finally:
            with self.S.lock:
                self.S.log.append({"t": time.time(), "service": service, "action": action,
                                   "method": self.command, "path": self.path, "status": status})

    def aws(self, service, action, params, headers, body):
        S = self.S
        with S.lock:
            S.requests += 1
            # EC2 throttles an account per region: above `rate_limit` requests in
            # any one second, RequestLimitExceeded (a refused request is not counted)
            limit = int(S.config["rate_limit"] or 0)
            real = time.monotonic()
            while S.window and S.window[0] <= real - 1.0:
                S.window.popleft()
            if limit and len(S.window) >= limit:
                S.throttled += 1
                raise AwsError(503, "RequestLimitExceeded", "Request limit exceeded.")
            S.window.append(real)
            S.peak_rps = max(S.peak_rps, len(S.window))
            credentials = dict(S.config.get("credentials") or {})
        check_auth(credentials, self.command, self.path, headers, body, service)
        with S.lock:
            fault = None
            for f in S.faults:
                if f["count"] > 0 and f["service"] == service and f["action"] in ("*", action):
                    f["count"] -= 1
                    fault = dict(f)
                    break
            S.faults = [f for f in S.faults if f["count"] > 0]
        if fault and not fault.get("after"):
            raise AwsError(fault["status"], fault["code"], fault["message"])
        if service == "ec2":
            self.EC2.before(action, params)
        if service == "scheduler" and self.command == "POST":
            check_schedule(body)
        fwd = {k: v for k, v in headers.items() if k.lower() not in HOP}
        status, rheaders, data = S.moto_request(self.command, self.path, fwd, body)
        if service == "ec2" and status < 300 and data.lstrip().startswith(b"<"):
            root = ET.fromstring(data)
            if root.tag.startswith("{"):
                ET.register_namespace("", root.tag[1:root.tag.index("}")])
            down = self.EC2.after(action, params, headers, root)
            if down is not None:
                data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
                for inst in down:
                    with inst.oplock:
                        S.stop_sshd(inst)
        if fault:  # "after": the call was carried out; its reply is lost (late, then an error)
            time.sleep(float(fault.get("delay", 0)))
            raise AwsError(fault["status"], fault["code"], fault["message"])
        self.send(status, data, rheaders)
        return status

    def control(self, path, body):
        S = self.S
        doc = json.loads(body) if body.strip() else {}
        cmd = self.command
        if path == "/_standin/state" and cmd == "GET":
            with S.lock:
                out = {"instances": [S.view(i) for i in S.instances.values()], "requests": S.requests,
                       "throttled": S.throttled, "peak_rps": S.peak_rps,
                       "log": list(S.log), "faults": list(S.faults), "config": dict(S.config),
                       "ssh_port": S.ssh_port, "login_user": S.user, "imds_port": S.imds_port}
            return self.send(200, json.dumps(out).encode())
        if path == "/_standin/config" and cmd in ("GET", "POST"):
            if cmd == "POST":
                unknown = [k for k in doc if k not in DEFAULT_CONFIG]
                if unknown:
                    raise AwsError(400, "", "unknown config keys: " + ", ".join(unknown))
                with S.lock:
                    S.config.update(doc)
                S.wake.set()
            with S.lock:
                return self.send(200, json.dumps(S.config).encode())
        if path == "/_standin/faults":
            if cmd == "POST":
                code = doc["code"]
                f = {"action": doc.get("action", "*"), "service": doc.get("service", "ec2"), "code": code,
                     "message": doc.get("message") or "Injected by the stand-in: " + code,
                     "status": int(doc.get("status") or DEFAULT_STATUS.get(code, 400)),
                     "count": int(doc.get("count", 1)),
                     "after": bool(doc.get("after")), "delay": float(doc.get("delay") or 0)}
                with S.lock:
                    S.faults.append(f)
                return self.send(201, json.dumps(f).encode())
            if cmd == "DELETE":
                with S.lock:
                    S.faults = []
                return self.send(204)
            if cmd == "GET":
                with S.lock:
                    return self.send(200, json.dumps(S.faults).encode())
        m = re.fullmatch(r"/_standin/instances/([^/]+)/(shutdown|interrupt)", path)
        if m and cmd == "POST":
            with S.lock:
                inst = S.instances.get(m.group(1))
            if not inst:
                raise AwsError(404, "", "no instance " + m.group(1))
            if m.group(2) == "shutdown":
                words = doc.get("args") or (doc.get("line") or "").split()
                minutes = guest.shutdown_delay_minutes(words) if doc.get("command", "shutdown") == "shutdown" else 0
                if not S.request_shutdown(inst, minutes):
                    raise AwsError(409, "", "instance %s is %s" % (inst.id, inst.state))
                return self.send(204)
            secs = float(doc.get("seconds", 120))
            with S.lock:
                inst.interrupt = {"action": doc.get("action", "terminate"), "at": S.now() + secs,
                                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + secs))}
            S.wake.set()
            return self.send(204)
        if path == "/_standin/scheduler/fire" and cmd == "POST":
            return self.send(200, json.dumps({"fired": S.fire_schedules(doc.get("now"))}).encode())
        if path == "/_standin/advance" and cmd == "POST":
            with S.lock:
                S.clock_offset += max(0.0, float(doc.get("seconds", 0)))
            S.wake.set()
            return self.send(204)
        if path == "/_standin/reset" and cmd == "POST":
            S.delete_everything()
            S.moto_request("POST", "/moto-api/reset", {}, b"")
            with S.lock:
                S.config = dict(S.initial_config)
            return self.send(204)
        raise AwsError(404, "", "no control endpoint %s %s" % (cmd, path))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--config", default="", help="JSON object of config keys")
    ap.add_argument("--watch-stdin", action="store_true", help="exit when stdin reaches end-of-file")
    args = ap.parse_args()
    config = dict(DEFAULT_CONFIG)
    if args.config:
        extra = json.loads(args.config)
        unknown = [k for k in extra if k not in DEFAULT_CONFIG]
        if unknown:
            ap.error("unknown config keys: " + ", ".join(unknown))
        config.update(extra)
    if not os.path.exists(guest.SSHD):
        ap.error(guest.SSHD + " not found: install openssh-server (bash scripts/setup.sh)")

    S = Standin(args, config)
    Handler.S = S
    Handler.EC2 = Ec2(S)
    httpd = Server(("127.0.0.1", args.port), Handler)
    S.port = httpd.server_address[1]
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    threading.Thread(target=S.state_loop, daemon=True).start()
    if args.watch_stdin:
        def watch():
            while sys.stdin.buffer.read(4096):
                pass
            done.set()
        threading.Thread(target=watch, daemon=True).start()
    print("READY http://127.0.0.1:%d ssh_port=%d login_user=%s imds_port=%d"
          % (S.port, S.ssh_port, S.user, S.imds_port), flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        httpd.shutdown()
        S.shutdown()
        httpd.server_close()


if __name__ == "__main__":
    main()
