"""setup-server's checks of what small VPSes get wrong, against a real sshd playing the
server (logged in as root): DNS from the server (a name that does not resolve says what to
do; one that does says so), DNS from its containers when Docker is installed, and services
that use the data directories started only once those exist (here without systemd, the
check says to start them by hand). A check that needs action does not fail the run: the
summary counts it."""
import os
import shutil
import subprocess
import tempfile
import unittest

from common import BIN, env
from sshd import Sshd
from test_server_recipes import client_key, write


def docker_state():
    if not shutil.which("docker"):
        return "absent"
    r = subprocess.run(["docker", "info"], capture_output=True, timeout=60)
    return "up" if r.returncode == 0 else "down"


class SetupServerChecks(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ephrun-setup-checks-")
        self.key, pub = client_key(self.tmp)
        self.sshd = Sshd(user="root").__enter__()
        self.sshd.authorize(pub)
        self.known_hosts = os.path.join(self.tmp, "known_hosts")
        write(self.known_hosts, "[127.0.0.1]:%d %s\n" % (self.sshd.port, self.sshd.host_key_pub))

    def tearDown(self):
        self.sshd.__exit__(None, None, None)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def setup_server(self, *args):
        argv = [BIN, "setup-server", "host=127.0.0.1", "port=%d" % self.sshd.port, "user=root",
                "key_file=" + self.key, "known_hosts=" + self.known_hosts, "packages=coreutils",
                "swap_threshold_mb=0", "dirs=%s/data/app" % self.tmp] + list(args)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=180,
                           env=env(EPHRUN_HOME=os.path.join(self.tmp, "home")))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r

    def test_dns_that_fails_says_what_to_do(self):
        r = self.setup_server("dns=localhost,no-such-host.invalid")
        self.assertRegex(r.stdout, r"dns\s+needs action\s+the server cannot resolve no-such-host\.invalid "
                         r"\(nameservers in /etc/resolv\.conf: [^)]*[^ )]\): fix /etc/resolv\.conf")
        self.assertNotIn("cannot resolve localhost", r.stdout)
        self.assertRegex(r.stdout, r"\d+ checks? needs? action: see above")
        self.assertIn("dns: needs action", r.stderr)

    def test_dns_that_works_and_the_containers(self):
        r = self.setup_server("dns=localhost")
        self.assertRegex(r.stdout, r"dns\s+already done\s+the server resolves localhost")
        state = docker_state()
        if state == "absent":
            self.assertNotIn("Docker", r.stdout)
            self.assertNotIn("container", r.stdout)
        elif state == "down":
            self.assertIn("Docker is installed but its daemon does not answer", r.stdout)
        else:
            self.assertRegex(r.stdout, r"containers resolve localhost|containers cannot resolve|cannot get image")

    def test_services_start_only_once_the_data_directories_exist(self):
        r = self.setup_server("services=ephrun-test-app.service", "dns=")
        out = r.stdout
        self.assertTrue(os.path.isdir(os.path.join(self.tmp, "data", "app")))
        # the directories step comes first in the summary, then the services
        self.assertLess(out.index("dirs "), out.index("services "))
        if os.path.isdir("/run/systemd/system"):
            self.assertRegex(out, r"services\s+needs action\s+ephrun-test-app\.service does not start")
        else:
            self.assertRegex(out, r"services\s+needs action\s+systemd is not running here: start "
                             r"ephrun-test-app\.service yourself, now that the data directories exist")
        self.assertNotRegex(out, r"dns\s")

    def test_dry_run_lists_the_checks(self):
        argv = [BIN, "--dry-run", "setup-server", "host=127.0.0.1", "port=%d" % self.sshd.port, "user=root",
                "key_file=" + self.key, "known_hosts=" + self.known_hosts, "services=app.service",
                "dirs=/srv/app/data"]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                           env=env(EPHRUN_HOME=os.path.join(self.tmp, "home")))
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("dns: check that deb.debian.org resolve from the server and its containers", r.stdout)
        self.assertIn("services: start when not running, once the data directories exist: app.service", r.stdout)
        self.assertLess(r.stdout.index("dirs: ensure directory /srv/app/data"), r.stdout.index("services: start"))


if __name__ == "__main__":
    unittest.main()
