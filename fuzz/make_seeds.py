#!/usr/bin/env python3
"""Writes the seed corpus for extract_fuzz into DIR: small tar streams in every format
fetch may meet (pax, GNU, ustar, v7), with the hostile shapes of
tests/integration/test_fetch_hostile.py: dot-dot, absolute, long names, symlink then
file through it, directory then symlink, hard link through a symlink, NUL in a pax
path, setuid, world-writable, sparse (pax 1.0 and GNU old), a huge header."""
import io
import os
import sys
import tarfile


def entry(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, link="", pax=None):
    t = tarfile.TarInfo(name)
    t.type, t.mode, t.linkname, t.mtime = kind, mode, link, 1700000000
    t.size = len(data) if kind in (tarfile.REGTYPE, tarfile.CONTTYPE) else 0
    if pax:
        t.pax_headers = pax
    return t, io.BytesIO(data) if t.size else None


def tar(members, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for t, f in members:
            tf.addfile(t, f)
    return buf.getvalue()


def gnu_old_sparse():
    # GNU 'S' header: one region of 1 byte at offset 4096, real size 8192.
    h = bytearray(512)
    h[0:6] = b"sparse"
    h[100:108] = b"0000644\0"
    h[108:116] = h[116:124] = b"0000000\0"
    h[124:136] = b"00000000001\0"
    h[136:148] = b"14770000000\0"
    h[156:157] = b"S"
    h[257:265] = b"ustar  \0"
    h[386:398] = b"00000010000\0"   # offset 4096
    h[398:410] = b"00000000001\0"   # numbytes 1
    h[483:495] = b"00000020000\0"   # realsize 8192
    h[148:156] = b"        "
    h[148:155] = b"%06o\0" % sum(h)
    return bytes(h) + b"x" + b"\0" * 511 + b"\0" * 1024


def seeds():
    long = "x" * 120 + "/" + "y" * 150
    smap = b"1\n4095\n1\n"
    yield "plain", tar([entry("d", tarfile.DIRTYPE, mode=0o755), entry("d/f", data=b"hello\n"),
                        entry("l", tarfile.SYMTYPE, link="d/f"), entry("h", tarfile.LNKTYPE,
                                                                       link="d/f")])
    for fmt, tag in ((tarfile.PAX_FORMAT, "pax"), (tarfile.GNU_FORMAT, "gnu"),
                     (tarfile.USTAR_FORMAT, "ustar")):
        name = long if fmt != tarfile.USTAR_FORMAT else "x" * 120 + "/" + "z" * 90
        yield "long-" + tag, tar([entry(name, data=b"long\n")], fmt)
        yield "dotdot-" + tag, tar([entry("a/../../out", data=b"x")], fmt)
    yield "v7", tar([entry("old", data=b"v7\n")], tarfile.USTAR_FORMAT)[:512 * 3]
    yield "absolute", tar([entry("/tmp/abs", data=b"x")])
    yield "symlink-then-file", tar([entry("l", tarfile.SYMTYPE, link="/tmp"),
                                    entry("l/planted", data=b"x")])
    yield "dir-then-symlink", tar([entry("d", tarfile.DIRTYPE, mode=0o777),
                                   entry("d", tarfile.SYMTYPE, link="/tmp"),
                                   entry("d/x", data=b"x")])
    yield "hardlink-through-symlink", tar([entry("etcl", tarfile.SYMTYPE, link="/etc"),
                                           entry("x", tarfile.LNKTYPE, link="etcl/passwd")])
    yield "nul-in-pax-path", tar([entry("harmless", tarfile.DIRTYPE, mode=0o777,
                                        pax={"path": "..\x00x"})])
    yield "setuid", tar([entry("id", data=b"#!/bin/sh\n", mode=0o4755),
                         entry("open", tarfile.DIRTYPE, mode=0o1777),
                         entry("fifo", tarfile.FIFOTYPE), entry("dev", tarfile.CHRTYPE)])
    yield "sparse-pax-1.0", tar([entry("GNUSparseFile.0/s", data=smap + b"\0" * (512 - len(smap))
                                       + b"x", pax={"GNU.sparse.major": "1",
                                                    "GNU.sparse.minor": "0",
                                                    "GNU.sparse.name": "s",
                                                    "GNU.sparse.realsize": "4096"})])
    yield "sparse-pax-0.1", tar([entry("s", data=b"x", pax={
        "GNU.sparse.numblocks": "1", "GNU.sparse.map": "4095,1", "GNU.sparse.size": "4096"})])
    yield "sparse-gnu-old", gnu_old_sparse()
    big = tarfile.TarInfo("././@PaxHeader")
    big.type, big.size = tarfile.XHDTYPE, 1500 * 1000 * 1000
    yield "huge-pax-header", big.tobuf(tarfile.USTAR_FORMAT) + b"9999 path=" + b"a" * 2048


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, data in seeds():
        with open(os.path.join(out, name + ".tar"), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
