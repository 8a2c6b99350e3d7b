"""The permanent-server recipes for real, against a throwaway OpenSSH sshd on 127.0.0.1 that
plays the server (its host key written to a known_hosts file, as a person would after
checking the fingerprint): deploy-to-server end to end (tarball without node_modules and
secrets, release swap, install, restart of a small HTTP service, health check), a failing
install leaving the live release alone, a failing health check, an unknown host key refused;
sync-to-server; setup-server twice (the second run changes nothing); --dry-run of each
connects to nothing. Every process started here is stopped."""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request

from common import BIN, env
from sshd import Sshd, free_port


def write(path, text, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    if mode:
        os.chmod(path, mode)


def client_key(d):
    key = os.path.join(d, "id_ed25519")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ephrun-test-client", "-f", key],
                   check=True)
    with open(key + ".pub") as f:
        return key, f.read()


def connections(sshd):
    return sshd.log().count("Connection from")


def swap_works(d):
    """Whether this machine lets swap be enabled at all (a container may refuse)."""
    f = os.path.join(d, "probe.swap")
    try:
        subprocess.run(["fallocate", "-l", "16M", f], check=True, capture_output=True)
        os.chmod(f, 0o600)
        subprocess.run(["mkswap", f], check=True, capture_output=True)
        ok = subprocess.run(["swapon", f], capture_output=True).returncode == 0
        if ok:
            subprocess.run(["swapoff", f], capture_output=True)
        return ok
    except (OSError, subprocess.CalledProcessError):
        return False
    finally:
        if os.path.exists(f):
            os.remove(f)


class ServerRecipes(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ephrun-server-test-")
        os.chmod(cls.tmp, 0o755)
        cls.key, pub = client_key(cls.tmp)
        cls.sshd = Sshd().__enter__()
        cls.sshd.authorize(pub)
        cls.known_hosts = os.path.join(cls.tmp, "known_hosts")
        write(cls.known_hosts, "[127.0.0.1]:%d %s\n" % (cls.sshd.port, cls.sshd.host_key_pub))

    @classmethod
    def tearDownClass(cls):
        cls.sshd.__exit__(None, None, None)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="case-", dir=self.tmp)
        os.chmod(self.work, 0o755)
        self.home = os.path.join(self.work, "ephrun-home")
        # Each case deploys into its own directory of the server user's home.
        self.remote = "srv-%d-%s" % (os.getpid(), os.path.basename(self.work))
        self.remote_abs = os.path.join(self.sshd.home, self.remote)
        self.http_port = free_port()
        self.pidfile = os.path.join(self.sshd.home, ".%s.pid" % self.remote)

    def tearDown(self):
        try:
            with open(self.pidfile) as f:
                pid = int(f.read().strip())
            os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.02)
        except (OSError, ValueError):
            pass
        for p in (self.pidfile,):
            if os.path.exists(p):
                os.remove(p)
        shutil.rmtree(self.remote_abs, ignore_errors=True)
        for name in os.listdir(self.sshd.home):
            if name.startswith(self.remote) or name.startswith("." + self.remote):
                shutil.rmtree(os.path.join(self.sshd.home, name), ignore_errors=True)

    def ephrun(self, recipe, *args, known_hosts=None, timeout=120):
        argv = [BIN, recipe, "host=127.0.0.1", "port=%d" % self.sshd.port, "user=" + self.sshd.user,
                "key_file=" + self.key, "known_hosts=" + (known_hosts or self.known_hosts)] + list(args)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=env(EPHRUN_HOME=self.home), cwd=self.work)

    def app(self, version):
        """A tiny app: restart.sh (re)starts a detached HTTP server on the deployed directory."""
        src = os.path.join(self.work, "app-" + version)
        write(os.path.join(src, "version.txt"), version + "\n")
        write(os.path.join(src, "only-%s.txt" % version), "x\n")
        write(os.path.join(src, "lib", "util.js"), "module.exports = 1\n")
        write(os.path.join(src, ".env"), "TOKEN=never-leaves\n")
        write(os.path.join(src, ".env.production"), "TOKEN=never-leaves-either\n")
        write(os.path.join(src, "node_modules", "left-pad", "index.js"), "module.exports = 1\n")
        write(os.path.join(src, "server.pem"), "-----BEGIN PRIVATE KEY-----\n")
        write(os.path.join(src, "id_ed25519"), "not for servers\n")
        write(os.path.join(src, ".git", "config"), "[core]\n")
        write(os.path.join(src, "restart.sh"), """#!/bin/sh
pidf="$HOME/.%s.pid"
if [ -f "$pidf" ]; then
  old=$(cat "$pidf")
  kill "$old" 2>/dev/null
  while kill -0 "$old" 2>/dev/null; do sleep 0.05; done
fi
setsid nohup /usr/bin/python3 -m http.server %d --bind 127.0.0.1 </dev/null >/dev/null 2>&1 &
echo $! > "$pidf"
""" % (self.remote, self.http_port), mode=0o755)
        return src

    def deploy(self, src, *args, **kw):
        params = {"src": src, "dir": self.remote + "/app",
                  "install": "echo installing; test -f version.txt && echo ok > installed.txt",
                  "restart": "sh restart.sh", "health_url": "http://127.0.0.1:%d/version.txt" % self.http_port,
                  "health_deadline": "20s", "health_interval": "0.2s"}
        flags = []
        for a in args:
            if "=" in a and not a.startswith("-"):
                k, v = a.split("=", 1)
                params[k] = v
            else:
                flags.append(a)
        return self.ephrun("deploy-to-server", *["%s=%s" % kv for kv in params.items()], *flags, **kw)

    def served(self, path):
        with urllib.request.urlopen("http://127.0.0.1:%d/%s" % (self.http_port, path), timeout=5) as r:
            return r.read().decode()

    def leftovers(self):
        base = os.path.join(self.remote_abs)
        return sorted(n for n in os.listdir(base) if n != "app") if os.path.isdir(base) else []

    def test_deploy_end_to_end_then_a_second_deploy_replaces_the_first(self):
        r = self.deploy(self.app("v1"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("deploy-to-server summary", r.stdout)
        self.assertRegex(r.stdout, r"health:\s+HTTP 200 after \d+ attempts?")
        self.assertEqual(self.served("version.txt"), "v1\n")
        live = os.path.join(self.remote_abs, "app")
        shipped = set()
        for root, dirs, files in os.walk(live):
            for f in files:
                shipped.add(os.path.relpath(os.path.join(root, f), live))
        self.assertEqual(shipped, {"version.txt", "only-v1.txt", "lib/util.js", "restart.sh", "installed.txt"})
        self.assertNotIn("never-leaves", r.stdout + r.stderr)
        self.assertEqual(self.leftovers(), [], "tarball or release left next to the service")

        # A file that lives only on the server survives the next deploy (preserve=.env).
        write(os.path.join(live, ".env"), "SERVER_ONLY=1\n")
        r = self.deploy(self.app("v2"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.served("version.txt"), "v2\n")
        self.assertFalse(os.path.exists(os.path.join(live, "only-v1.txt")))
        self.assertTrue(os.path.exists(os.path.join(live, "only-v2.txt")))
        with open(os.path.join(live, ".env")) as f:
            self.assertEqual(f.read(), "SERVER_ONLY=1\n")
        with open(os.path.join(self.remote_abs, "app.previous", "version.txt")) as f:
            self.assertEqual(f.read(), "v1\n")
        self.assertEqual(self.leftovers(), ["app.previous"])

    def wait_served(self, want, timeout=30):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.served("version.txt")
                if last == want:
                    return
            except OSError as e:
                last = e
            time.sleep(0.05)
        self.fail("the service never served %r (last: %r)" % (want, last))

    def test_first_deploy_has_no_previous_and_the_printed_rollback_works(self):
        app = self.remote + "/app"
        r = self.deploy(self.app("v1"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("previous:  none (the first deploy to %s)" % app, r.stdout)
        self.assertNotIn("app.previous", r.stdout)
        self.assertNotIn("roll back with", r.stdout)

        r = self.deploy(self.app("v2"))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(self.served("version.txt"), "v2\n")
        self.assertIn("previous:  %s.previous; roll back with:" % app, r.stdout)
        cmd = r.stdout.split("roll back with:\n", 1)[1].splitlines()[0].strip()
        self.assertIn("-i %s" % self.key, cmd)
        self.assertIn("UserKnownHostsFile=%s" % self.known_hosts, cmd)
        # The command works as printed, with nothing from ~/.ssh: the run's key and known_hosts.
        e = env(HOME=os.path.join(self.work, "empty-home"))
        e.pop("SSH_AUTH_SOCK", None)
        rb = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=60, env=e,
                            stdin=subprocess.DEVNULL)
        self.assertEqual(rb.returncode, 0, cmd + "\n" + rb.stdout + rb.stderr)
        with open(os.path.join(self.remote_abs, "app", "version.txt")) as f:
            self.assertEqual(f.read(), "v1\n")
        self.wait_served("v1\n")

        # A failing health check after a deploy that has a previous release prints the same command.
        r = self.deploy(self.app("v3"), "health_url=http://127.0.0.1:%d/missing" % self.http_port,
                        "health_deadline=1s", "health_interval=0.2s")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("the previous one is in %s/%s.previous" % (self.remote, "app"), r.stderr)
        self.assertIn("-i %s" % self.key, r.stderr)
        self.assertIn("UserKnownHostsFile=%s" % self.known_hosts, r.stderr)

    def test_failing_health_check_on_a_first_deploy_says_there_is_nothing_to_roll_back_to(self):
        r = self.deploy(self.app("v1"), "health_url=http://127.0.0.1:%d/missing" % self.http_port,
                        "health_deadline=1s", "health_interval=0.2s")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("there is no previous release to roll back to (this was the first deploy to %s/app)"
                      % self.remote, r.stderr)
        self.assertNotIn(".previous", r.stderr)

    def test_failing_install_leaves_the_live_release_alone(self):
        self.assertEqual(self.deploy(self.app("v1")).returncode, 0)
        r = self.deploy(self.app("v2"), "install=echo cannot install >&2; exit 7")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("install", r.stderr)
        self.assertIn("exited with code 7", r.stderr)
        with open(os.path.join(self.remote_abs, "app", "version.txt")) as f:
            self.assertEqual(f.read(), "v1\n")
        self.assertEqual(self.served("version.txt"), "v1\n")
        self.assertEqual(self.leftovers(), ["app.previous"] if os.path.exists(
            os.path.join(self.remote_abs, "app.previous")) else [])
        self.assertFalse([n for n in self.leftovers() if "new-" in n or "upload" in n])

    def test_failing_health_check_exits_non_zero_and_says_what_to_do(self):
        dead = free_port()
        r = self.deploy(self.app("v1"), "health_url=http://127.0.0.1:%d/health" % dead, "health_deadline=2s",
                        "health_interval=0.3s")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("health check failed: http://127.0.0.1:%d/health did not answer 2xx" % dead, r.stderr)
        self.assertRegex(r.stderr, r"last: .*(connect|refused)")
        self.assertIn("roll back", r.stderr)
        self.assertEqual(self.leftovers(), [])

        # A server that answers, but with 404: the status is reported.
        r = self.deploy(self.app("v1"), "health_url=http://127.0.0.1:%d/missing" % self.http_port,
                        "health_deadline=2s", "health_interval=0.3s")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("last: HTTP 404", r.stderr)

    def test_unknown_or_missing_host_key_is_refused(self):
        empty = os.path.join(self.work, "known_hosts_empty")
        write(empty, "")
        before = os.path.exists(self.remote_abs)
        r = self.deploy(self.app("v1"), known_hosts=empty)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("is not in " + empty, r.stderr)
        self.assertIn("ssh-keyscan -p %d 127.0.0.1" % self.sshd.port, r.stderr)
        self.assertIn(self.sshd.host_key_fingerprint, r.stderr)
        self.assertEqual(os.path.exists(self.remote_abs), before)

        other = os.path.join(self.work, "known_hosts_other")
        write(other, "[127.0.0.1]:%d ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ\n"
              % self.sshd.port)
        r = self.ephrun("sync-to-server", "src=" + self.app("v1"), "dir=" + self.remote, known_hosts=other)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("HOST KEY MISMATCH", r.stderr)
        self.assertIn("ssh-keygen -R", r.stderr)

        r = self.ephrun("sync-to-server", "src=" + self.app("v1"), "dir=" + self.remote,
                        known_hosts=os.path.join(self.work, "nope"))
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("does not exist", r.stderr)
        self.assertIn("ssh-keyscan", r.stderr)
        self.assertFalse(os.path.exists(self.remote_abs))

    def test_sync_to_server_sends_only_what_changed_and_no_secrets(self):
        src = self.app("v1")
        r = self.ephrun("sync-to-server", "src=" + src, "dir=" + self.remote + "/code")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"4 of 4 files sent")
        code = os.path.join(self.remote_abs, "code")
        self.assertEqual(sorted(os.listdir(code)), ["lib", "only-v1.txt", "restart.sh", "version.txt"])
        write(os.path.join(src, "version.txt"), "v1.1\n")
        r = self.ephrun("sync-to-server", "src=" + src, "dir=" + self.remote + "/code")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"1 of 4 files sent")
        with open(os.path.join(code, "version.txt")) as f:
            self.assertEqual(f.read(), "v1.1\n")

    def test_dry_runs_show_the_plan_and_connect_to_nothing(self):
        src = self.app("v1")
        before = connections(self.sshd)
        r = self.deploy(src, "--dry-run")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for step in ("attach", "existing server ephrun-test@127.0.0.1:%d" % self.sshd.port, "never destroyed",
                     "--exclude=node_modules", "upload", "extract into the new release", "cd '%s/app.new-" % self.remote,
                     "swap:", "sh restart.sh", "health check GET http://127.0.0.1:%d/version.txt" % self.http_port):
            self.assertIn(step, r.stdout)
        r = self.ephrun("sync-to-server", "src=" + src, "dir=" + self.remote, "--dry-run")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("sync    %s → %s" % (src, self.remote), r.stdout)
        self.assertIn("excludes: .env* *.pem id_* .git node_modules", r.stdout)
        r = self.ephrun("setup-server", "dirs=/srv/x:www-data:0750", "--dry-run")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for step in ("dirs: ensure directory /srv/x (owner www-data, mode 750)", "packages: install if missing",
                     "swap: when RAM < 2048 MB"):
            self.assertIn(step, r.stdout)
        self.assertEqual(connections(self.sshd), before, "a dry run connected")
        self.assertFalse(os.path.exists(self.remote_abs))
        self.assertFalse(os.path.exists(self.home) and os.listdir(self.home))

    def test_dry_run_fails_where_the_real_run_would(self):
        """The attach checks run in both modes: a missing key or known_hosts, or a server known_hosts does
        not know, fails the dry-run (rc 1, what to do next) as it fails the run, and nothing connects."""
        src = self.app("v1")
        before = connections(self.sshd)
        empty = os.path.join(self.work, "known_hosts_empty")
        write(empty, "# nothing yet\n")
        nohome = os.path.join(self.work, "nohome")
        os.makedirs(nohome)
        cases = [
            ({"known_hosts": os.path.join(self.work, "nope")}, ["known_hosts file %s/nope does not exist" % self.work,
                                                                "ssh-keyscan -p %d 127.0.0.1" % self.sshd.port]),
            ({"key_file": os.path.join(self.work, "no-such-key")}, ["key_file %s/no-such-key does not exist"
                                                                    % self.work]),
            ({"key_file": ""}, ["no login key: %s/.ssh/id_ed25519 does not exist and no ssh-agent is running"
                                % nohome, "set key_file"]),
            ({"known_hosts": empty}, ["is not in " + empty, "refusing to connect",
                                      "ssh-keyscan -p %d 127.0.0.1" % self.sshd.port]),
        ]
        for recipe, extra in (("sync-to-server", ["src=" + src, "dir=" + self.remote]),
                              ("deploy-to-server", ["src=" + src, "dir=" + self.remote + "/app"]),
                              ("setup-server", [])):
            for over, expect in cases:
                with self.subTest(recipe=recipe, case=over):
                    params = {"host": "127.0.0.1", "port": str(self.sshd.port), "user": self.sshd.user,
                              "key_file": self.key, "known_hosts": self.known_hosts}
                    params.update(over)
                    e = env(EPHRUN_HOME=self.home, HOME=nohome)
                    e.pop("SSH_AUTH_SOCK", None)
                    r = subprocess.run([BIN, "--dry-run", recipe] + ["%s=%s" % kv for kv in params.items()] + extra,
                                       capture_output=True, text=True, timeout=60, env=e, cwd=self.work)
                    self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
                    self.assertIn("error in phase 'attach'", r.stderr)
                    for text in expect:
                        self.assertIn(text, r.stderr)
                    self.assertNotIn("Traceback", r.stderr)
                    self.assertNotIn("host key verified against", r.stdout)
                    self.assertNotIn("no key found", r.stdout)
        self.assertEqual(connections(self.sshd), before, "a dry run connected")

    def test_unknown_server_is_refused_before_anything_but_shows_its_fingerprint(self):
        empty = os.path.join(self.work, "known_hosts_empty")
        write(empty, "")
        r = self.ephrun("sync-to-server", "src=" + self.app("v1"), "dir=" + self.remote, known_hosts=empty)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("error in phase 'attach'", r.stderr)
        self.assertIn(self.sshd.host_key_fingerprint, r.stderr)
        self.assertFalse(os.path.exists(self.remote_abs))

    def test_setup_server_refuses_without_root(self):
        r = self.ephrun("setup-server", "packages=coreutils", "swap_threshold_mb=0")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("setup-server needs root", r.stderr)


class SetupServer(unittest.TestCase):
    """setup-server logs in as root (it installs packages and enables swap)."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-setup-test-")
        self.key, pub = client_key(self.tmp)
        self.sshd = Sshd(user="root").__enter__()
        self.sshd.authorize(pub)
        self.known_hosts = os.path.join(self.tmp, "known_hosts")
        write(self.known_hosts, "[127.0.0.1]:%d %s\n" % (self.sshd.port, self.sshd.host_key_pub))
        self.swapfile = os.path.join(self.tmp, "swap", "swapfile")
        self.fstab = os.path.join(self.tmp, "fstab")
        write(self.fstab, "# test fstab\n")

    def tearDown(self):
        subprocess.run(["swapoff", self.swapfile], capture_output=True)
        self.sshd.__exit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def setup_server(self, *args):
        argv = [BIN, "setup-server", "host=127.0.0.1", "port=%d" % self.sshd.port, "user=root",
                "key_file=" + self.key, "known_hosts=" + self.known_hosts, "packages=coreutils,tar",
                "dirs=%s/data/app:ephrun-test:ephrun-test:0750,%s/data/logs" % (self.tmp, self.tmp),
                "swapfile=" + self.swapfile, "fstab=" + self.fstab, "swap_size=16M"] + list(args)
        return subprocess.run(argv, capture_output=True, text=True, timeout=180,
                              env=env(EPHRUN_HOME=os.path.join(self.tmp, "home")))

    def test_second_run_changes_nothing(self):
        # A threshold above any machine's RAM forces the swap path.
        force = "swap_threshold_mb=100000000"
        if not swap_works(self.tmp):
            r = self.setup_server(force)
            self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
            self.assertIn("was refused", r.stderr)
            self.assertIn("swap_threshold_mb=0", r.stderr)
            self.assertFalse(os.path.exists(self.swapfile))
            return
        r = self.setup_server(force)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        out = r.stdout
        self.assertRegex(out, r"dirs\s+changed\s+%s/data/app: created, owner ephrun-test:ephrun-test, mode 750"
                         % self.tmp)
        self.assertRegex(out, r"dirs\s+changed\s+%s/data/logs: created" % self.tmp)
        self.assertRegex(out, r"packages\s+already done\s+all 2 already installed")
        self.assertRegex(out, r"swap\s+changed\s+.*created %s \(16M\), swapon %s, added to %s"
                         % (self.swapfile, self.swapfile, self.fstab))
        st = os.stat(os.path.join(self.tmp, "data", "app"))
        self.assertEqual(oct(st.st_mode & 0o777), "0o750")
        with open("/proc/swaps") as f:
            self.assertIn(self.swapfile, f.read())

        r = self.setup_server(force)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("nothing changed: the server was already set up", r.stdout)
        self.assertNotRegex(r.stdout, r"\bchanged\s{2,}")
        self.assertRegex(r.stdout, r"swap\s+already done\s+%s is active and in %s" % (self.swapfile, self.fstab))
        with open(self.fstab) as f:
            self.assertEqual(f.read().count(self.swapfile), 1)

        # With the default threshold this 24 GB machine needs no swap at all.
        subprocess.run(["swapoff", self.swapfile], check=True)
        r = self.setup_server()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertRegex(r.stdout, r"swap\s+already done\s+\d+ MB of RAM is at least 2048 MB")


if __name__ == "__main__":
    unittest.main(verbosity=2)
