"""ephrun.http from the outside: --dry-run sends only GET/HEAD, -vv never shows
credentials, SigV4 signatures match botocore's, and moto accepts them."""
import datetime
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request
from unittest import mock

from common import BIN, SRC


class LocalServer:
    """tests/support/http_server.py, stopped by closing its stdin."""

    def __init__(self, tmp):
        self.log_path = os.path.join(tmp, "server.log")
        port_file = os.path.join(tmp, "port")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(SRC, "tests/support/http_server.py"),
             "--port-file", port_file, "--log", self.log_path],
            stdin=subprocess.PIPE)
        deadline = time.time() + 20
        while not os.path.exists(port_file):
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError("test HTTP server did not start")
            time.sleep(0.05)
        with open(port_file) as f:
            self.port = int(f.read())
        self.base = f"http://127.0.0.1:{self.port}"

    def log(self):
        try:
            with open(self.log_path) as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def run(args, env=None, timeout=120):
    e = dict(os.environ)
    e.setdefault("EPHRUN_HOME", tempfile.mkdtemp(prefix="ephrun-home-"))
    e.update(env or {})
    return subprocess.run([BIN] + args, capture_output=True, text=True, timeout=timeout, env=e)


class HttpTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-http-it-")
        self.srv = LocalServer(self.tmp)

    def tearDown(self):
        self.srv.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def recipe(self, body, params="url = { default = '' }"):
        path = os.path.join(self.tmp, "recipe.lua")
        with open(path, "w") as f:
            f.write(f"""local ephrun = require "ephrun"
local http = ephrun.http
return ephrun.recipe {{ name = "http-it", params = {{ {params} }}, run = function(p)
{body}
end }}
""")
        return path

    def test_dry_run_sends_only_get_and_head(self):
        path = self.recipe("""
  local r = http.get(p.url .. "/echo/price")
  assert(r.status == 200, "GET went through")
  assert(http.head(p.url .. "/echo/head").status == 200)
  local post = http.post(p.url .. "/echo/create?api_key=TOPSECRETVALUE", '{"plan":"x"}')
  assert(post.dry_run == true and post.status == 0 and post.body == "", "placeholder")
  http.check(post)
  http.put(p.url .. "/echo/put", "x")
  http.patch(p.url .. "/echo/patch", "x")
  http.delete(p.url .. "/echo/delete")
  http.request { method = "POST", url = p.url .. "/status/500", raise = true }
  http.get(p.url .. "/bytes?size=10", { download = os.getenv("HOME") .. "/never-written.bin" })
  io.stdout:write("recipe finished\\n")
""")
        res = run(["--dry-run", path, f"url={self.srv.base}"])
        self.assertEqual(res.returncode, 0, res.stderr + res.stdout)
        self.assertIn("recipe finished", res.stdout)
        methods = {line.split()[0] for line in self.srv.log()}
        self.assertEqual(methods, {"GET", "HEAD"}, self.srv.log())
        self.assertEqual(len(self.srv.log()), 2, self.srv.log())
        out = res.stdout + res.stderr
        self.assertIn(f"POST {self.srv.base}/echo/create?api_key=<redacted>", out)
        self.assertIn(f"DELETE {self.srv.base}/echo/delete", out)
        self.assertNotIn("TOPSECRETVALUE", out)
        self.assertFalse(os.path.exists(os.path.expanduser("~/never-written.bin")))

        res = run(["--dry-run", "--json", path, f"url={self.srv.base}"])
        self.assertEqual(res.returncode, 0, res.stderr)
        self.assertNotIn("TOPSECRETVALUE", res.stdout + res.stderr)
        self.assertIn('"kind": "http"', res.stdout.replace('":"', '": "'))

    def test_credentials_never_in_verbose_output(self):
        path = self.recipe("""
  local r = http.request {
    method = "POST", url = p.url .. "/seq/vv?s=503,502,200", retry = true,
    headers = { Authorization = "Bearer AUTHVALUE-123456", ["X-Api-Key"] = "APIKEYVALUE-123456",
                Cookie = "session=COOKIEVALUE-123456", ["X-Plain"] = "plain-visible" },
  }
  assert(r.status == 200 and r.attempts == 3)
  local s = http.get(p.url .. "/echo/sig", { aws_sigv4 = { region = "us-east-1", service = "ec2",
    access_key = "AKIDVISIBLE", secret_key = "SECRETKEYVALUE-123456", session_token = "SESSIONVALUE-123456" } })
  assert(s.status == 200)
  local bad = http.get(p.url .. "/status/403", { headers = { Authorization = "Bearer AUTHVALUE-123456" } })
  local ok, err = pcall(http.check, bad)
  io.stderr:write(tostring(err), "\\n")
""")
        res = run(["-vv", path, f"url={self.srv.base}"])
        self.assertEqual(res.returncode, 0, res.stderr + res.stdout)
        out = res.stdout + res.stderr
        for secret in ("AUTHVALUE", "APIKEYVALUE", "COOKIEVALUE", "SECRETKEYVALUE", "SESSIONVALUE"):
            self.assertNotIn(secret, out)
        self.assertIn("Authorization: <redacted>", out)
        self.assertIn("X-Plain: plain-visible", out)
        self.assertIn("retry 2/4", out)
        self.assertIn("returned 403 Forbidden", out)

    def test_sigint_stops_a_slow_download(self):
        import signal
        out = os.path.join(self.tmp, "slow.bin")
        path = self.recipe(f"""
  io.stdout:write("READY\\n"); io.stdout:flush()
  http.get(p.url .. "/slow?size=5000000&rate=50000", {{ download = "{out}" }})
""")
        e = dict(os.environ)
        e.setdefault("EPHRUN_HOME", tempfile.mkdtemp(prefix="ephrun-home-"))
        proc = subprocess.Popen([BIN, path, f"url={self.srv.base}"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=e)
        self.assertIn("READY", proc.stdout.readline())
        time.sleep(0.7)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        self.assertLess(time.monotonic() - t0, 1.5, err)
        self.assertEqual(proc.returncode, 130, err)
        self.assertFalse(os.path.exists(out))
        self.assertEqual([n for n in os.listdir(self.tmp) if ".part-" in n], [])

    def test_sigv4_matches_botocore(self):
        try:
            import botocore.auth
            import botocore.credentials
            from botocore.awsrequest import AWSRequest
        except ImportError:
            self.skipTest("botocore is not installed")
        body = "Action=DescribeRegions&Version=2016-11-15"
        cases = [
            ("POST", "/echo/sig", "ec2", "SESSIONTOKEN123"),
            ("GET", "/echo/path/obj?b=2&a=1&Empty=", "sts", ""),
            ("PUT", "/echo/x", "ec2", ""),
        ]
        for method, path, service, token in cases:
            with self.subTest(method=method, path=path):
                lua = f"""
  local r = http.request {{
    method = "{method}", url = p.url .. "{path}", body = {'"' + body + '"' if method != "GET" else "nil"},
    headers = {{ ["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8",
                 ["X-Amz-Date"] = "20240102T030405Z" }},
    aws_sigv4 = {{ region = "eu-west-3", service = "{service}", access_key = "AKIDEXAMPLE",
                  secret_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", session_token = "{token}" }},
  }}
  io.stdout:write(r.body, "\\n")
"""
                res = run([self.recipe(lua), f"url={self.srv.base}"])
                self.assertEqual(res.returncode, 0, res.stderr)
                echoed = json.loads(res.stdout.strip().splitlines()[-1])
                got = echoed["headers"]["authorization"]

                creds = botocore.credentials.Credentials(
                    "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token or None)
                req = AWSRequest(method=method, url=self.srv.base + path,
                                 data=body.encode() if method != "GET" else None,
                                 headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
                fixed = datetime.datetime(2024, 1, 2, 3, 4, 5)
                with mock.patch("botocore.auth.get_current_datetime", return_value=fixed):
                    botocore.auth.SigV4Auth(creds, service, "eu-west-3").add_auth(req)
                self.assertEqual(got, req.headers["Authorization"])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@unittest.skipUnless(shutil.which("moto_server"), "moto_server is not installed")
class MotoTest(unittest.TestCase):
    def test_ec2_describe_regions_signed(self):
        port = free_port()
        tmp = tempfile.mkdtemp(prefix="ephrun-moto-")
        log = open(os.path.join(tmp, "moto.log"), "w")
        proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.time() + 60
            while True:
                try:
                    urllib.request.urlopen(url + "/moto-api/", timeout=1)
                    break
                except Exception:
                    if time.time() > deadline or proc.poll() is not None:
                        raise RuntimeError("moto_server did not start")
                    time.sleep(0.2)
            path = os.path.join(tmp, "recipe.lua")
            with open(path, "w") as f:
                f.write("""local ephrun = require "ephrun"
return ephrun.recipe { name = "moto", params = { url = { default = "" } }, run = function(p)
  local r = ephrun.http.check(ephrun.http.post(p.url .. "/", "Action=DescribeRegions&Version=2016-11-15", {
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8" },
    aws_sigv4 = { region = "us-east-1", service = "ec2", access_key = "AKIDEXAMPLE", secret_key = "testsecret123" },
  }))
  io.stdout:write(r.body)
end }
""")
            res = run([path, f"url={url}"])
            self.assertEqual(res.returncode, 0, res.stderr)
            self.assertIn("DescribeRegionsResponse", res.stdout)
            self.assertIn("us-east-1", res.stdout)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
