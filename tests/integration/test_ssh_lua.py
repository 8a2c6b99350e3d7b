"""The Lua SSH API (ephrun.ssh, ephrun.keys) against a real OpenSSH sshd."""
import os
import subprocess
import tempfile
import unittest

from common import BIN, SRC, env
from sshd import Sshd


class SshFromLua(unittest.TestCase):
    def test_spec(self):
        with Sshd() as d:
            work = tempfile.mkdtemp(prefix="ephrun-sshlua-")
            key = os.path.join(work, "id_ed25519")
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
            with open(key + ".pub") as f:
                d.authorize(f.read().strip())
            enc = os.path.join(work, "id_enc")
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "open sesame 7", "-f", enc], check=True)
            with open(enc + ".pub") as f:
                d.authorize(f.read().strip())
            tmp = tempfile.mkdtemp(prefix="ephrun-sshlua-remote-")
            os.chmod(tmp, 0o777)
            r = subprocess.run(
                [BIN, os.path.join(SRC, "tests", "integration", "ssh_spec.lua")],
                capture_output=True, text=True, timeout=300,
                env=env(SSHD_PORT=d.port, SSHD_USER=d.user, SSHD_KEY_FILE=key,
                        SSHD_HOST_KEY=d.host_key_pub, SSHD_AUTHORIZED_KEYS=d.authorized_keys,
                        SSHD_TMP=tmp, SSHD_ENC_KEY_FILE=enc, SSHD_ENC_PASS="open sesame 7"))
            print(r.stdout)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr + "\nsshd log:\n" + d.log())


if __name__ == "__main__":
    unittest.main(verbosity=2)
