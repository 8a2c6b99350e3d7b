#!/usr/bin/env python3
"""A small HTTP server on 127.0.0.1 for ephrun's HTTP tests (stdlib only).

    python3 http_server.py --port-file F [--log L] [--port N]

Writes its port to F once listening (atomically) and appends "METHOD PATH" for
every request to L. Exits when its stdin reaches end-of-file (so a parent that
opened it with popen(..., "w") takes it down by exiting), or on SIGTERM.

Paths:
  /echo[...]               200, JSON {method, path, query, headers, body}
  /status/N                answers N (body "status N")
  /seq/NAME?s=503,429:2,200  answers the listed statuses in turn (per NAME);
                           "429:2" adds "Retry-After: 2", "503:date:1" a
                           Retry-After HTTP date 1 s ahead. The last repeats.
                           Body of each answer: JSON {n, status}.
  /count/NAME              JSON {count}: requests seen by /seq/NAME so far
  /delay/SECONDS[...]      waits, then echoes like /echo
  /slow?size=N&rate=B&chunk=C  N bytes at about B bytes/s in C-byte chunks
  /bytes?size=N            N bytes of a fixed pattern at full speed
  /redirect?to=PATH        302 to PATH
  /log                     the request log (these requests are not logged)
"""
import argparse
import email.utils
import json
import os
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
SEQ_COUNTS = {}
LOG_PATH = None
LOG_LINES = []


def pattern(n):
    block = bytes(range(256))
    return (block * (n // 256 + 1))[:n]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ephrun-test"

    def log_message(self, fmt, *args):  # quiet
        pass

    def _record(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/log":
            return
        line = f"{self.command} {self.path}"
        with LOCK:
            LOG_LINES.append(line)
            if LOG_PATH:
                with open(LOG_PATH, "a") as f:
                    f.write(line + "\n")

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status, body=b"", ctype="application/json", headers=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _echo(self, body):
        u = urllib.parse.urlsplit(self.path)
        doc = {
            "method": self.command,
            "path": u.path,
            "query": u.query,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("latin-1"),
        }
        self._send(200, json.dumps(doc))

    def _handle(self):
        self._record()
        body = self._body()
        u = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(u.query)
        parts = u.path.strip("/").split("/")
        head = parts[0] if parts else ""
        if head == "echo":
            return self._echo(body)
        if head == "status":
            n = int(parts[1])
            return self._send(n, f"status {n}", "text/plain")
        if head == "seq":
            name = parts[1] if len(parts) > 1 else "default"
            steps = q.get("s", ["200"])[0].split(",")
            with LOCK:
                i = SEQ_COUNTS.get(name, 0)
                SEQ_COUNTS[name] = i + 1
            spec = steps[min(i, len(steps) - 1)].split(":")
            status = int(spec[0])
            headers = []
            if len(spec) == 2:
                headers.append(("Retry-After", spec[1]))
            elif len(spec) == 3 and spec[1] == "date":
                when = time.time() + float(spec[2])
                headers.append(("Retry-After", email.utils.formatdate(when, usegmt=True)))
            return self._send(status, json.dumps({"n": i + 1, "status": status}), headers=headers)
        if head == "count":
            with LOCK:
                n = SEQ_COUNTS.get(parts[1], 0)
            return self._send(200, json.dumps({"count": n}))
        if head == "delay":
            time.sleep(float(parts[1]))
            return self._echo(body)
        if head == "bytes":
            size = int(q.get("size", ["0"])[0])
            return self._send(200, pattern(size), "application/octet-stream")
        if head == "slow":
            size = int(q.get("size", ["1000000"])[0])
            rate = float(q.get("rate", ["10000"])[0])
            chunk = int(q.get("chunk", ["1000"])[0])
            data = pattern(size)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            try:
                for off in range(0, size, chunk):
                    self.wfile.write(data[off:off + chunk])
                    self.wfile.flush()
                    time.sleep(chunk / rate)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return None
        if head == "redirect":
            to = q.get("to", ["/echo"])[0]
            return self._send(302, "", "text/plain", [("Location", to)])
        if head == "log":
            with LOCK:
                text = "\n".join(LOG_LINES) + ("\n" if LOG_LINES else "")
            return self._send(200, text, "text/plain")
        return self._send(404, "no such path", "text/plain")

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # Clients that give up (timeouts, cancellations) are part of the tests.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def main():
    global LOG_PATH
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log")
    ap.add_argument("--no-stdin-watch", action="store_true")
    args = ap.parse_args()
    LOG_PATH = args.log
    srv = Server(("127.0.0.1", args.port), Handler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.server_address[1]))
    os.rename(tmp, args.port_file)

    if not args.no_stdin_watch:
        def watch():
            try:
                while sys.stdin.buffer.read(4096):
                    pass
            except OSError:
                pass
            os._exit(0)
        threading.Thread(target=watch, daemon=True).start()
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
