"""A throwaway OpenSSH sshd on 127.0.0.1 for integration tests.

    with Sshd() as d:
        d.authorize(pub_line)
        ... connect to 127.0.0.1:d.port as d.user, pinning d.host_key_pub ...

It has its own config, generated ed25519 host key and AuthorizedKeysFile, and logs
in as the plain user `ephrun-test` (root's shell startup is slow; with UsePAM=no
sshd refuses locked accounts, hence `usermod -p '*'`), or as root with
`Sshd(user="root")` for tests that need it. Must run as root.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time

USER = "ephrun-test"


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_user(user=USER):
    if subprocess.run(["id", "-u", user], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", user], capture_output=True)
    subprocess.run(["usermod", "-p", "*", user], check=True, capture_output=True)


class Sshd:
    """Context manager; `start=False` prepares everything but starts sshd later."""

    def __init__(self, start=True, user=USER):
        self._autostart = start
        self.proc = None
        self.user = user
        self.home = "/root" if user == "root" else "/home/" + user

    def __enter__(self):
        if self.user != "root":
            ensure_user(self.user)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix="ephrun-sshd-")
        os.chmod(self.dir, 0o755)
        key = os.path.join(self.dir, "host_ed25519")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test-host",
                        "-f", key], check=True)
        with open(key + ".pub") as f:
            self.host_key_pub = f.read().strip()
        self.host_key_fingerprint = subprocess.run(
            ["ssh-keygen", "-l", "-f", key + ".pub"], check=True, capture_output=True,
            text=True).stdout.split()[1]
        self.authorized_keys = os.path.join(self.dir, "authorized_keys")
        open(self.authorized_keys, "w").close()
        os.chmod(self.authorized_keys, 0o644)
        self.port = free_port()
        self.config = os.path.join(self.dir, "sshd_config")
        with open(self.config, "w") as f:
            f.write(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {key}
PidFile none
AuthorizedKeysFile {self.authorized_keys}
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AllowUsers {self.user}
PermitRootLogin {"prohibit-password" if self.user == "root" else "no"}
MaxStartups 200
MaxSessions 200
PrintMotd no
UseDNS no
Subsystem sftp internal-sftp
LogLevel VERBOSE
""")
        self.log_path = os.path.join(self.dir, "sshd.log")
        if self._autostart:
            self.start()
        return self

    def start(self, timeout=10):
        if self.proc:
            return
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", self.config],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    probe = "Connection from 127.0.0.1 port %d " % s.getsockname()[1]
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("sshd exited at start: " + self.log())
                time.sleep(0.02)
                continue
            # sshd logs each connection from its child, late: once this probe is in the log, the
            # count of "Connection from" lines changes only when someone else connects.
            while time.monotonic() < deadline:
                if probe in self.log():
                    return
                time.sleep(0.02)
        raise RuntimeError("sshd did not start listening: " + self.log())

    def stop(self):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def authorize(self, pubkey_line):
        with open(self.authorized_keys, "a") as f:
            f.write(pubkey_line.strip() + "\n")

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def __exit__(self, *exc):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        return False


if __name__ == "__main__":
    # Self-check: start, log in with a fresh key through OpenSSH's client, stop.
    with Sshd() as d:
        kd = tempfile.mkdtemp()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", kd + "/id"],
                       check=True)
        d.authorize(open(kd + "/id.pub").read())
        kh = kd + "/known_hosts"
        with open(kh, "w") as f:
            f.write(f"[127.0.0.1]:{d.port} {d.host_key_pub}\n")
        out = subprocess.run(["ssh", "-i", kd + "/id", "-p", str(d.port), "-o",
                              "UserKnownHostsFile=" + kh, "-o", "StrictHostKeyChecking=yes",
                              f"{d.user}@127.0.0.1", "whoami"], check=True,
                             capture_output=True, text=True).stdout.strip()
        shutil.rmtree(kd)
        assert out == USER, out
        print("ok", d.port, d.host_key_fingerprint)
