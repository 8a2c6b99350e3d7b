"""ephrun.s3 against the AWS stand-in (moto behind the proxy), read back with the official
`aws` CLI: single and multipart puts (SHA-256 on every part: the composite checksum the CLI
reads is the one computed here from the file), get streamed to a file and verified, head,
list with paging, delete; a failed and a cancelled multipart upload leave no upload behind
(`aws s3api list-multipart-uploads`); a download whose content does not match its SHA-256 is
refused and removed; the dry-run plans the upload and sends nothing; no credential in output."""
import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

from common import BIN, RECIPES, env

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from aws import SECRET_KEY, ACCESS_KEY, AwsStandin  # noqa: E402

OPS = os.path.join(RECIPES, "s3_ops.lua")
BUCKET = "test-bucket"
MiB = 1024 * 1024


def composite_sha256(path, part):
    digests = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(part)
            if not chunk:
                break
            digests += hashlib.sha256(chunk).digest()
    return base64.b64encode(hashlib.sha256(digests).digest()).decode()


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MiB), b""):
            h.update(chunk)
    return h.hexdigest()


class S3Test(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.standin = AwsStandin().__enter__()
        cls.standin.aws_cli("s3api", "create-bucket", "--bucket", BUCKET,
                            "--create-bucket-configuration", "LocationConstraint=eu-west-1")
        cls.dir = tempfile.mkdtemp(prefix="ephrun-s3-")
        cls.big = os.path.join(cls.dir, "big.bin")
        with open(cls.big, "wb") as f:
            f.write(os.urandom(23 * MiB + 12345))

    @classmethod
    def tearDownClass(cls):
        cls.standin.__exit__(None, None, None)
        shutil.rmtree(cls.dir, ignore_errors=True)

    def tearDown(self):
        self.standin.clear_faults()
        self.assertEqual(self.uploads(), [], "a multipart upload was left behind")

    def env(self):
        e = env(EPHRUN_HOME=os.path.join(self.dir, "home"), **self.standin.env())
        e.pop("EPHRUN_NOTIFY_URL", None)
        return e

    def ephrun(self, *args, check=True, timeout=180):
        r = subprocess.run([BIN] + list(args), capture_output=True, text=True, env=self.env(), timeout=timeout,
                           stdin=subprocess.DEVNULL)
        for secret in (SECRET_KEY,):
            self.assertNotIn(secret, r.stdout + r.stderr)
        if check:
            self.assertEqual(r.returncode, 0, r.stderr)
        return r

    def op(self, *args, check=True):
        r = self.ephrun(OPS, *args, check=check)
        for line in r.stdout.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[7:]), r
        return None, r

    def cli(self, *args, check=True):
        return self.standin.aws_cli(*args, check=check)

    def uploads(self):
        _, out, _ = self.cli("s3api", "list-multipart-uploads", "--bucket", BUCKET)
        return [u["Key"] for u in (out or {}).get("Uploads") or []]

    def test_multipart_put_read_back_by_the_cli(self):
        res, r = self.op("op=put", "key=art/big.bin", "file=" + self.big, "part_mib=5")
        size = os.path.getsize(self.big)
        self.assertEqual(res["size"], size)
        self.assertEqual(res["parts"], 5)
        self.assertEqual(res["sha256"], sha256_of(self.big))
        _, attrs, _ = self.cli("s3api", "get-object-attributes", "--bucket", BUCKET, "--key", "art/big.bin",
                               "--object-attributes", "Checksum", "ObjectSize", "ETag")
        self.assertEqual(attrs["ObjectSize"], size)
        # the composite checksum the store computed from the parts it received
        self.assertEqual(attrs["Checksum"]["ChecksumSHA256"].split("-")[0], composite_sha256(self.big, 5 * MiB))
        self.assertEqual(attrs["ETag"].strip('"'), res["etag"])
        self.assertTrue(res["etag"].endswith("-5"))
        _, head, _ = self.cli("s3api", "head-object", "--bucket", BUCKET, "--key", "art/big.bin")
        self.assertEqual(head["Metadata"], {"build": "42", "ephrun-sha256": res["sha256"]})
        self.assertEqual(head["ContentType"], "application/x-test")
        back = os.path.join(self.dir, "cli-back.bin")
        self.cli("s3api", "get-object", "--bucket", BUCKET, "--key", "art/big.bin", back)
        self.assertEqual(sha256_of(back), res["sha256"])
        self.assertIn("in 5 parts", r.stderr)

    def test_single_put_get_head_delete(self):
        res, _ = self.op("op=body", "key=small/hello.txt", "body=hello, S3")
        self.assertEqual(res["parts"], 1)
        self.assertEqual(res["etag"], hashlib.md5(b"hello, S3").hexdigest())
        self.assertEqual(res["sha256"], hashlib.sha256(b"hello, S3").hexdigest())
        _, head, _ = self.cli("s3api", "head-object", "--bucket", BUCKET, "--key", "small/hello.txt",
                              "--checksum-mode", "ENABLED")
        self.assertEqual(head["ChecksumSHA256"], base64.b64encode(hashlib.sha256(b"hello, S3").digest()).decode())
        got, _ = self.op("op=get", "key=small/hello.txt")
        self.assertEqual(got["body"], "hello, S3")
        self.assertEqual(got["sha256"], res["sha256"])
        h, _ = self.op("op=head", "key=small/hello.txt")
        self.assertEqual(h["size"], 9)
        self.op("op=delete", "key=small/hello.txt")
        h, _ = self.op("op=head", "key=small/hello.txt")
        self.assertEqual(h, {"missing": True})
        _, out, _ = self.cli("s3api", "list-objects-v2", "--bucket", BUCKET, "--prefix", "small/")
        self.assertFalse((out or {}).get("Contents"))

    def test_keys_with_spaces_and_reserved_characters(self):
        key = "odd dir/ä+b=c&d~e.txt"
        res, _ = self.op("op=body", "key=" + key, "body=odd")
        self.assertEqual(res["key"], key)
        _, head, _ = self.cli("s3api", "head-object", "--bucket", BUCKET, "--key", key)
        self.assertEqual(head["ContentLength"], 3)
        got, _ = self.op("op=get", "key=" + key)
        self.assertEqual(got["body"], "odd")
        res, _ = self.op("op=list", "key=odd dir/")
        self.assertEqual(res["keys"], [key])
        self.op("op=delete", "key=" + key)
        h, _ = self.op("op=head", "key=" + key)
        self.assertEqual(h, {"missing": True})

    def test_get_streams_to_a_file_and_verifies(self):
        self.cli("s3", "cp", self.big, "s3://%s/cli/big.bin" % BUCKET)
        dest = os.path.join(self.dir, "got.bin")
        got, _ = self.op("op=get", "key=cli/big.bin", "file=" + dest)
        self.assertEqual(got["sha256"], sha256_of(self.big))
        self.assertEqual(sha256_of(dest), sha256_of(self.big))
        self.assertEqual(got["size"], os.path.getsize(self.big))

    def test_get_refuses_content_that_does_not_match_its_sha256(self):
        src = os.path.join(self.dir, "tampered.txt")
        with open(src, "w") as f:
            f.write("not what the metadata says")
        self.cli("s3api", "put-object", "--bucket", BUCKET, "--key", "bad/x.txt", "--body", src,
                 "--metadata", "ephrun-sha256=" + "0" * 64)
        dest = os.path.join(self.dir, "bad.txt")
        res, r = self.op("op=get", "key=bad/x.txt", "file=" + dest, check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ChecksumMismatch", r.stderr)
        self.assertIn("s3://test-bucket/bad/x.txt", r.stderr)
        self.assertFalse(os.path.exists(dest), "a download that failed verification was left in place")

    def test_list_pages(self):
        for i in range(5):
            self.cli("s3api", "put-object", "--bucket", BUCKET, "--key", "pages/%d" % i)
        res, _ = self.op("op=list", "key=pages/", "page_size=2")
        self.assertEqual(res["keys"], ["pages/%d" % i for i in range(5)])
        calls = [c for c in self.standin.calls() if c["method"] == "GET" and "list-type=2" in c["path"]
                 and "max-keys=2" in c["path"]]
        self.assertEqual(len(calls), 3)

    def test_failed_part_aborts_the_upload(self):
        # a part refused (not retryable): the others are cancelled and the upload aborted
        self.standin.fault("PUT /%s/fail/big.bin" % BUCKET, "AccessDenied", status=403, count=1, service="s3")
        _, r = self.op("op=put", "key=fail/big.bin", "file=" + self.big, "part_mib=5", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("AccessDenied", r.stderr)
        self.assertIn("s3://test-bucket/fail/big.bin", r.stderr)
        aborts = [c for c in self.standin.calls() if c["method"] == "DELETE" and "fail/big.bin?uploadId=" in c["path"]]
        self.assertEqual(len(aborts), 1)
        _, out, _ = self.cli("s3api", "list-objects-v2", "--bucket", BUCKET, "--prefix", "fail/")
        self.assertFalse((out or {}).get("Contents"))

    def test_a_create_whose_answer_is_lost_is_still_aborted(self):
        # CreateMultipartUpload is carried out but its answer lost: the upload id is unknown to
        # ephrun, so its cleanup finds the key's uploads and aborts them
        self.standin.fault("POST /%s/lost/big.bin" % BUCKET, "InternalError", count=1, service="s3", after=True)
        _, r = self.op("op=put", "key=lost/big.bin", "file=" + self.big, "part_mib=5", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("InternalError", r.stderr)
        lists = [c for c in self.standin.calls() if c["method"] == "GET" and "uploads=" in c["path"]]
        self.assertTrue(lists, "the cleanup did not look for the upload")

    def test_sigint_mid_upload_aborts_the_upload(self):
        # every part is stored, but its reply held back: the run is mid-upload until it is interrupted
        self.standin.fault("PUT /%s/cancel/big.bin" % BUCKET, "InternalError", count=100, service="s3",
                           after=True, delay=60)
        p = subprocess.Popen([BIN, OPS, "op=put", "key=cancel/big.bin", "file=" + self.big, "part_mib=5"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env())
        try:
            err = ""
            while "s3: uploading" not in err:
                line = p.stderr.readline()
                self.assertTrue(line, "ephrun ended before uploading: " + err)
                err += line
            self.assertEqual(self.uploads(), ["cancel/big.bin"])
            p.send_signal(signal.SIGINT)
            _, rest = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        self.assertEqual(p.returncode, 130, err + rest)
        self.assertNotIn(SECRET_KEY, err + rest)

    def test_dry_run_plans_the_upload_and_sends_nothing(self):
        before = len(self.standin.calls())
        r = self.ephrun("--dry-run", "--json", OPS, "op=put", "key=dry/big.bin", "file=" + self.big, "part_mib=5")
        plan = json.loads(r.stdout)
        ups = [s for s in plan["steps"] if s["kind"] == "upload"]
        self.assertEqual(len(ups), 1, plan)
        self.assertIn("to s3://test-bucket/dry/big.bin", ups[0]["what"])
        self.assertIn("24.1 MB", ups[0]["what"])
        self.assertTrue(any("5 parts" in d for d in ups[0].get("details", [])), ups[0])
        self.assertEqual(len(self.standin.calls()), before, "the dry-run sent requests")

    def test_a_huge_file_gets_parts_big_enough_for_10000(self):
        sparse = os.path.join(self.dir, "huge.bin")
        with open(sparse, "wb") as f:
            f.truncate(60 * 1024 * MiB)  # 60 GiB, sparse: only planned, never read
        try:
            r = self.ephrun("--dry-run", "--json", OPS, "op=put", "key=huge.bin", "file=" + sparse, "part_mib=5")
        finally:
            os.remove(sparse)
        up = [s for s in json.loads(r.stdout)["steps"] if s["kind"] == "upload"][0]
        parts = [d for d in up["details"] if d.startswith("multipart: ")][0]
        n = int(parts.split()[1])
        # 5 MiB parts would need 12,288; S3 allows 10,000, so the parts grow to whole MiB (7 MiB)
        self.assertEqual(n, -(-60 * 1024 // 7))
        self.assertLessEqual(n, 10000)

    def test_errors_name_the_object_and_keep_credentials_out(self):
        res, r = self.op("op=body", "bucket=no-such-bucket", "key=a", "body=x", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("NoSuchBucket", r.stderr)
        self.assertIn("s3://no-such-bucket/a", r.stderr)
        self.assertNotIn(ACCESS_KEY, r.stdout + r.stderr)
        self.assertNotIn("Traceback", r.stderr)

    def test_parse_url(self):
        res, _ = self.op("op=parse", "url=s3://bkt/prewarmed/1/a.ova")
        self.assertEqual(res, {"bucket": "bkt", "key": "prewarmed/1/a.ova"})
        _, r = self.op("op=parse", "url=https://bkt/x", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("not an S3 URL", r.stderr)


if __name__ == "__main__":
    unittest.main()
