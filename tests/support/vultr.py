"""The Vultr API stand-in (tests/fakes/vultr/standin.py) as a test fixture.

    from vultr import VultrStandin
    with VultrStandin(api_key="test-key", rate_limit=30, lock_seconds=2) as v:
        v.url          # "http://127.0.0.1:PORT/v2"
        v.env()        # VULTR_API_URL, VULTR_API_KEY, EPHRUN_VULTR_SSH_PORT, EPHRUN_VULTR_SSH_USER
        v.state()      # GET /_standin/state
        v.config(start_sshd=False)
        v.fault("DELETE", r"^/v2/instances/", 500, count=2)
        v.clear_faults()
        v.leftovers()  # {"instances": [...], "ssh_keys": [...]} still present

Keyword arguments other than api_key are stand-in config keys (timings such as
`boot_seconds`, `rate_limit`, `retry_after`, `start_sshd`, ...; see standin.py).
Leaving the block stops the server (SIGTERM, then SIGKILL) with all its sshds; it
asserts nothing. The stand-in also exits when this process dies (its stdin closes).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

SRC = os.environ.get("EPHRUN_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "../..")))
STANDIN = os.path.join(SRC, "tests", "fakes", "vultr", "standin.py")


class VultrStandin:
    def __init__(self, api_key="test-key", ready_timeout=20, **config):
        self.api_key = api_key
        self.ready_timeout = ready_timeout
        self.initial_config = config
        self.proc = None
        self.url = None
        self.ssh_port = None
        self.login_user = None

    # -- lifetime
    def __enter__(self):
        self.state_dir = tempfile.mkdtemp(prefix="ephrun-vultr-standin-")
        self._stderr = tempfile.TemporaryFile()
        cmd = [sys.executable, STANDIN, "--state-dir", self.state_dir, "--watch-stdin",
               "--api-key", self.api_key or ""]
        if self.initial_config:
            cmd += ["--config", json.dumps(self.initial_config)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True)
        line = self._read_ready()
        # READY http://127.0.0.1:PORT/v2 ssh_port=P login_user=U
        parts = line.split()
        self.url = parts[1]
        fields = dict(p.split("=", 1) for p in parts[2:])
        self.ssh_port = int(fields["ssh_port"])
        self.login_user = fields["login_user"]
        return self

    def _read_ready(self):
        got = []

        def reader():
            got.append(self.proc.stdout.readline())
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t.join(self.ready_timeout)
        if got and got[0].startswith("READY "):
            return got[0].strip()
        self.stop()
        self._stderr.seek(0)
        err = self._stderr.read().decode(errors="replace")
        self._stderr.close()
        raise RuntimeError("Vultr stand-in did not get ready within %ss (stdout: %r); stderr:\n%s"
                           % (self.ready_timeout, got[0] if got else "", err))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc and self.proc.stdin, self.proc and self.proc.stdout):
            try:
                if f:
                    f.close()
            except OSError:
                pass
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def __exit__(self, *exc):
        self.stop()
        self._stderr.close()
        return False

    def stderr(self):
        """What the stand-in wrote to stderr so far (its own error reports)."""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    # -- inspection and control
    @property
    def base(self):
        return self.url[: -len("/v2")]

    def env(self):
        return {"VULTR_API_URL": self.url, "VULTR_API_KEY": self.api_key,
                "EPHRUN_VULTR_SSH_PORT": str(self.ssh_port),
                "EPHRUN_VULTR_SSH_USER": self.login_user}

    def _control(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def state(self):
        return self._control("GET", "/_standin/state")

    def config(self, **kw):
        return self._control("POST", "/_standin/config", kw)

    def fault(self, method, path_regex, status, count=1, body=None):
        f = {"method": method, "path": path_regex, "status": status, "count": count}
        if body is not None:
            f["body"] = body
        return self._control("POST", "/_standin/faults", f)

    def clear_faults(self):
        self._control("DELETE", "/_standin/faults")

    def advance(self, seconds):
        """Moves the stand-in's clock forward (timers fire as if that time had passed)."""
        self._control("POST", "/_standin/advance", {"seconds": seconds})

    def reset(self):
        self._control("POST", "/_standin/reset")

    def leftovers(self):
        s = self.state()
        return {"instances": s["instances"], "ssh_keys": s["ssh_keys"]}

    # -- the API itself, for tests that need a quick call
    def api(self, method, path, body=None, key=None):
        """(status, parsed JSON or None, headers) of one API call; never raises on HTTP errors."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        key = self.api_key if key is None else key
        if key:
            headers["Authorization"] = "Bearer " + key
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw, status, hdrs = r.read(), r.status, dict(r.headers)
        except urllib.error.HTTPError as e:
            raw, status, hdrs = e.read(), e.code, dict(e.headers)
        return status, (json.loads(raw) if raw else None), hdrs

    def wait_instance(self, iid, server_status="ok", timeout=20):
        deadline = time.monotonic() + timeout
        while True:
            st, body, _ = self.api("GET", "/instances/" + iid)
            if st == 200 and body["instance"]["server_status"] == server_status:
                return body["instance"]
            if time.monotonic() > deadline:
                raise AssertionError("instance %s not %s after %ss: %r" % (iid, server_status, timeout, body))
            time.sleep(0.05)
