"""fetch from a hostile remote: crafted tar streams, served by a fake `tar` put first on
the PATH of a real sshd's sessions, against the real ephrun binary (run as root, like a
launcher that fetches build artifacts). Nothing may land outside the destination, no
outside file may gain a link, the destination's parent keeps its mode, setuid bits and
world-writable modes are dropped, sparse files stay sparse and memory stays bounded."""
import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import unittest

from common import BIN, RECIPES, env
from sshd import Sshd

FAKE_TAR = """#!/bin/sh
# Whatever ephrun asks for, the "remote" answers with the crafted stream.
if [ -x {d}/stream.gen ]; then exec {d}/stream.gen; fi
exec cat {d}/stream.tar
"""


def member(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, link="", uid=0, pax=None):
    t = tarfile.TarInfo(name)
    t.type = kind
    t.mode = mode
    t.uid = uid
    t.mtime = 1700000000
    t.linkname = link
    t.size = len(data) if kind == tarfile.REGTYPE else 0
    if pax:
        t.pax_headers = pax
    return t, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def stream(members, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for t, f in members:
            tf.addfile(t, f)
    return buf.getvalue()


def snapshot(root):
    """Every path under root with its mode, size and link count."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_nlink)
    return out


class HostileFetch(unittest.TestCase):
    no_unshare = "0"  # the extractor gets a private cwd (unshare(CLONE_FS))

    @classmethod
    def setUpClass(cls):
        os.umask(0o022)
        cls.sshd = Sshd(start=False).__enter__()
        cls.serve = tempfile.mkdtemp(prefix="ephrun-hostile-serve-")
        os.chmod(cls.serve, 0o755)
        os.makedirs(cls.serve + "/bin")
        with open(cls.serve + "/bin/tar", "w") as f:
            f.write(FAKE_TAR.format(d=cls.serve))
        os.chmod(cls.serve + "/bin/tar", 0o755)
        with open(cls.sshd.config, "a") as f:
            f.write("SetEnv PATH=%s/bin:/usr/local/bin:/usr/bin:/bin\n" % cls.serve)
        cls.sshd.start()
        cls.keydir = tempfile.mkdtemp(prefix="ephrun-hostile-key-")
        cls.key = cls.keydir + "/id"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", cls.key], check=True)
        with open(cls.key + ".pub") as f:
            cls.sshd.authorize(f.read())

    @classmethod
    def tearDownClass(cls):
        cls.sshd.__exit__(None, None, None)
        shutil.rmtree(cls.serve, ignore_errors=True)
        shutil.rmtree(cls.keydir, ignore_errors=True)

    def setUp(self):
        # work/parent/dest is the destination; work/outside must stay as it is.
        self.work = tempfile.mkdtemp(prefix="ephrun-hostile-")
        self.parent = self.work + "/parent"
        self.dest = self.parent + "/dest"
        self.outside = self.work + "/outside"
        os.makedirs(self.parent)
        os.chmod(self.parent, 0o750)
        os.makedirs(self.outside)
        os.chmod(self.outside, 0o750)
        self.secret = self.outside + "/secret"
        with open(self.secret, "w") as f:
            f.write("outside secret\n")
        os.chmod(self.secret, 0o600)
        self.before = snapshot(self.work)
        for f in ("stream.tar", "stream.gen"):
            if os.path.exists(os.path.join(self.serve, f)):
                os.remove(os.path.join(self.serve, f))

    def tearDown(self):
        shutil.rmtree(self.work, ignore_errors=True)

    def serve_stream(self, data):
        with open(self.serve + "/stream.tar", "wb") as f:
            f.write(data)
        os.chmod(self.serve + "/stream.tar", 0o644)

    def fetch(self, remote=None, dest=None, op="fetch"):
        """Runs ephrun; returns (exit code, output, max RSS of the ephrun process in KiB)."""
        args = [BIN, os.path.join(RECIPES, "fetch_one.lua"), "port=%d" % self.sshd.port,
                "user=" + self.sshd.user, "key_file=" + self.key,
                "host_key=" + self.sshd.host_key_pub, "remote=" + (remote or self.serve),
                "dest=" + (dest or self.dest), "op=" + op]
        log = os.path.join(self.work, "debug.log")
        p = subprocess.Popen(args + ["--log-file", log], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT,
                             env=env(EPHRUN_EXTRACT_NO_UNSHARE=self.no_unshare))
        with p.stdout:
            out = p.stdout.read().decode(errors="replace")
        with open(log, errors="replace") as f:
            self.debug_log = f.read()
        os.remove(log)
        _, status, ru = os.wait4(p.pid, 0)
        if os.environ.get("EPHRUN_TEST_VERBOSE"):
            print("\n  peak RSS %d KiB: %s" % (ru.ru_maxrss, out.strip()[-300:]))
        p.returncode = os.waitstatus_to_exitcode(status)
        return p.returncode, out, ru.ru_maxrss

    def assert_contained(self):
        """Nothing outside dest changed; the parent kept its mode; no link to the secret."""
        after = snapshot(self.work)
        for path, (mode, size, nlink) in self.before.items():
            self.assertIn(path, after, "%s vanished" % path)
            if path == "parent":
                self.assertEqual(stat.S_IMODE(after[path][0]), 0o750, "the parent's mode changed")
                continue
            self.assertEqual(after[path], (mode, size, nlink), "%s changed" % path)
        for path in after:
            self.assertTrue(path in self.before or path.startswith("parent/dest"),
                            "%s appeared outside the destination" % path)
        self.assertEqual(os.stat(self.secret).st_nlink, 1, "the outside file gained a link")

    def refused(self, data, *words):
        self.serve_stream(data)
        code, out, _ = self.fetch()
        self.assertNotEqual(code, 0, "fetch accepted a hostile stream:\n" + out)
        for w in words:
            self.assertIn(w, out)
        self.assertNotIn("traceback", out.lower())
        self.assertEqual("extracting with absolute paths" in self.debug_log,
                         self.no_unshare == "1", self.debug_log)
        self.assert_contained()
        if os.environ.get("EPHRUN_TEST_VERBOSE"):
            print(out)
        return out

    def test_dot_dot(self):
        self.refused(stream([member("../outside/planted", data=b"x")]), "refusing")
        # The refused name is shown with its control bytes escaped, not sent to the terminal.
        out = self.refused(stream([member("../\x1b]0;owned\x07\nI fake log line", data=b"x")]),
                           "refusing", "\\x1b]0;owned\\x07\\x0aI fake")
        self.assertNotIn("\x1b", out)

    def test_absolute(self):
        self.refused(stream([member(self.outside + "/abs", data=b"x")]), "refusing")

    def test_long_names_pax_gnu_and_ustar_prefix(self):
        evil = "a/" + "b" * 120 + "/../../../outside/long"
        for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
            with self.subTest(fmt=fmt):
                self.refused(stream([member(evil, data=b"x")], fmt), "refusing")
        # ustar: the escape sits in the 155-byte prefix field, the name field is plain.
        prefix = "../../" + "p" * 100
        self.refused(stream([member(prefix + "/ustar", data=b"x")], tarfile.USTAR_FORMAT),
                     "refusing")
        # And long names that stay inside arrive whole.
        ok = "x" * 120 + "/" + "y" * 150 + ".txt"
        for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT):
            with self.subTest(fmt=fmt):
                name = ok if fmt != tarfile.USTAR_FORMAT else "x" * 120 + "/" + "z" * 90
                self.serve_stream(stream([member(name, data=b"long\n")], fmt))
                code, out, _ = self.fetch()
                self.assertEqual(code, 0, out)
                with open(os.path.join(self.dest, name)) as f:
                    self.assertEqual(f.read(), "long\n")

    def test_symlink_then_file_through_it(self):
        self.refused(stream([member("l", tarfile.SYMTYPE, link=self.outside),
                             member("l/planted", data=b"x")]), "refusing")

    def test_directory_then_symlink(self):
        self.refused(stream([member("d", tarfile.DIRTYPE, mode=0o777),
                             member("d", tarfile.SYMTYPE, link=self.outside),
                             member("d/planted", data=b"x")]), "refusing")

    def test_hard_link_through_planted_symlink(self):
        # etcl -> outside, then x hard-linked to etcl/secret (GNU tar refuses this stream).
        out = self.refused(stream([member("etcl", tarfile.SYMTYPE, link=self.outside),
                                   member("x", tarfile.LNKTYPE, link="etcl/secret")]),
                           "refusing")
        self.assertFalse(os.path.exists(self.dest + "/x"), out)

    def test_nul_in_pax_path(self):
        # The ustar name is harmless; the pax path is "..\0x" on a directory entry.
        for mode in (0o777, 0o000):
            with self.subTest(mode=oct(mode)):
                self.refused(stream([member("harmless", tarfile.DIRTYPE, mode=mode,
                                            pax={"path": "..\x00x"})]), "refusing")

    def test_setuid_and_world_writable_are_dropped(self):
        self.serve_stream(stream([
            member("bin", tarfile.DIRTYPE, mode=0o7777),
            member("bin/id", data=b"#!/bin/sh\nid -u\n", mode=0o4755),
            member("bin/sg", data=b"x", mode=0o2755),
            member("open", tarfile.DIRTYPE, mode=0o1777),
            member("open/wide", data=b"x", mode=0o666),
        ]))
        code, out, _ = self.fetch()
        self.assertEqual(code, 0, out)
        modes = {p: stat.S_IMODE(os.lstat(os.path.join(self.dest, p)).st_mode)
                 for p in ("bin", "bin/id", "bin/sg", "open", "open/wide")}
        self.assertEqual(modes, {"bin": 0o755, "bin/id": 0o755, "bin/sg": 0o755,
                                 "open": 0o755, "open/wide": 0o644})
        # Owned by whoever fetched, never by the uid in the stream.
        self.assertEqual(os.lstat(self.dest + "/bin/id").st_uid, os.getuid())
        self.assert_contained()

    def test_huge_pax_header_keeps_memory_bounded(self):
        gen = self.serve + "/stream.gen"
        with open(gen, "w") as f:
            f.write("""#!/usr/bin/env python3
import sys, tarfile
size = 1500 * 1000 * 1000
t = tarfile.TarInfo("././@PaxHeader")
t.type = tarfile.XHDTYPE
t.size = size
out = sys.stdout.buffer
out.write(t.tobuf(tarfile.USTAR_FORMAT))
chunk = b"a" * (1 << 20)
sent = 0
while sent < size:
    out.write(chunk[:min(len(chunk), size - sent)])
    sent += len(chunk)
""")
        os.chmod(gen, 0o755)
        code, out, maxrss_kib = self.fetch()
        self.assertNotEqual(code, 0, out)
        self.assertIn("too large", out)
        # Generous: ephrun itself needs ~20 MiB; the header alone is 1.5 GB.
        self.assertLess(maxrss_kib, 200 * 1024, "ephrun's peak RSS was %d KiB" % maxrss_kib)
        self.assert_contained()

    def test_huge_sparse_map_keeps_memory_bounded(self):
        # pax sparse 1.0 keeps its map in the entry's data: libarchive makes a 48-byte
        # region of every 4 bytes ("0\n0\n"). 200 MB of map would be 2.4 GB of memory.
        gen = self.serve + "/stream.gen"
        with open(gen, "w") as f:
            f.write("""#!/usr/bin/env python3
import sys, tarfile
count = 50 * 1000 * 1000
t = tarfile.TarInfo("GNUSparseFile.0/s")
t.size = 4 * count + 64
t.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                 "GNU.sparse.name": "s", "GNU.sparse.realsize": "1"}
out = sys.stdout.buffer
out.write(t.tobuf(tarfile.PAX_FORMAT))
out.write(b"%d\\n" % count)
chunk = b"0\\n0\\n" * (1 << 18)
for _ in range(count // (1 << 18) + 1):
    out.write(chunk)
""")
        os.chmod(gen, 0o755)
        code, out, maxrss_kib = self.fetch()
        self.assertNotEqual(code, 0, out)
        self.assertIn("sparse map", out)
        self.assertLess(maxrss_kib, 200 * 1024, "ephrun's peak RSS was %d KiB" % maxrss_kib)
        self.assert_contained()

    def test_sparse_file_stays_sparse(self):
        # pax sparse format 1.0: the map (one 1-byte region at the last offset) heads the data.
        size = 1 << 30
        smap = b"1\n%d\n1\n" % (size - 1)
        data = smap + b"\0" * (512 - len(smap)) + b"x"
        self.serve_stream(stream([member("GNUSparseFile.0/sparse.bin", data=data, pax={
            "GNU.sparse.major": "1", "GNU.sparse.minor": "0",
            "GNU.sparse.name": "sparse.bin", "GNU.sparse.realsize": str(size)})]))
        code, out, _ = self.fetch()
        self.assertEqual(code, 0, out)
        st = os.stat(self.dest + "/sparse.bin")
        self.assertEqual(st.st_size, size)
        self.assertLess(st.st_blocks * 512, 16 << 20, "a 1 GiB sparse file took real disk")
        with open(self.dest + "/sparse.bin", "rb") as f:
            f.seek(size - 1)
            self.assertEqual(f.read(), b"x")
        self.assert_contained()

    def test_single_file_fetch_takes_only_that_file(self):
        self.serve_stream(stream([member("stream.tar", data=b"ok\n")]))
        target = self.dest + "/one.txt"
        code, out, _ = self.fetch(remote=self.serve + "/stream.tar", dest=target)
        self.assertEqual(code, 0, out)
        with open(target) as f:
            self.assertEqual(f.read(), "ok\n")
        # Another name, a symlink, or a second entry: refused.
        for members in ([member("other", data=b"x")],
                        [member("stream.tar", tarfile.SYMTYPE, link=self.secret)],
                        [member("stream.tar", data=b"x"), member("../planted", data=b"x")]):
            with self.subTest(members=[m[0].name for m in members]):
                self.serve_stream(stream(members))
                code, out, _ = self.fetch(remote=self.serve + "/stream.tar",
                                          dest=self.dest + "/two.txt")
                self.assertNotEqual(code, 0, out)
                self.assertFalse(os.path.islink(self.dest + "/two.txt"), out)
                self.assert_contained()


class HostileFetchWithoutPrivateCwd(HostileFetch):
    """The same streams where unshare(CLONE_FS) is refused (as under Docker's default
    seccomp profile): paths are prefixed with the destination instead."""
    no_unshare = "1"


if __name__ == "__main__":
    unittest.main(verbosity=2)
