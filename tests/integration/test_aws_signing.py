"""ephrun's SigV4 signatures (libcurl's CURLOPT_AWS_SIGV4 through ephrun.aws),
recomputed with botocore's own signer over the exact request that arrived.

moto does not check signatures, so this is what shows that real AWS would accept
them: a local HTTP receiver records each request (EC2 form POST, EC2 GET with a
query, S3 PUT with x-amz-content-sha256, S3 GET with a query, and both with a
session token), and botocore's SigV4Auth / S3SigV4Auth sign the same method, URL,
signed headers, body and time: the signatures must be equal."""
import hashlib
import json
import os
import re
import subprocess
import tempfile
import unittest

from botocore.auth import S3SigV4Auth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from common import BIN, RECIPES, SRC, env

AK, SK, REGION = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "eu-central-1"
TOKEN_AK, TOKEN_SK = "ASIAEXAMPLETEMPORARY", "tempSecret/with+chars="
TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQ+token=="
AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                  r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$")


def botocore_signature(echo, service, access_key, secret_key, token, region=REGION):
    """(signature, signed headers) botocore computes for the request in `echo`."""
    m = AUTH.match(echo["headers"]["authorization"])
    signed = m.group(5).split(";")
    headers = {h: echo["headers"][h] for h in signed}
    url = "http://" + echo["headers"]["host"] + echo["path"] + ("?" + echo["query"] if echo["query"] else "")
    req = AWSRequest(method=echo["method"], url=url, headers=headers, data=echo["body"].encode("latin-1"))
    req.context["timestamp"] = echo["headers"]["x-amz-date"]
    cls = S3SigV4Auth if service == "s3" else SigV4Auth
    signer = cls(Credentials(access_key, secret_key, token), service, region)
    canonical = signer.canonical_request(req)
    sig = signer.signature(signer.string_to_sign(req, canonical), req)
    return sig, signer.signed_headers(signer.headers_to_sign(req))


class Signing(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ephrun-aws-sign-")
        port_file = os.path.join(cls.tmp, "port")
        cls.server = subprocess.Popen(["python3", os.path.join(SRC, "tests", "support", "http_server.py"),
                                       "--port-file", port_file], stdin=subprocess.PIPE)
        for _ in range(400):
            if os.path.exists(port_file):
                break
            subprocess.run(["sleep", "0.05"])
        with open(port_file) as f:
            port = int(f.read())
        e = env(AWS_ENDPOINT_URL="http://127.0.0.1:%d/echo" % port, AWS_REGION=REGION,
                AWS_ACCESS_KEY_ID=AK, AWS_SECRET_ACCESS_KEY=SK,
                SIGN_TOKEN_AK=TOKEN_AK, SIGN_TOKEN_SK=TOKEN_SK, SIGN_TOKEN=TOKEN)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            e.pop(k, None)
        r = subprocess.run([BIN, os.path.join(RECIPES, "aws_signing.lua")], capture_output=True, text=True,
                           timeout=120, env=e, cwd=cls.tmp)
        cls.server.stdin.close()
        cls.server.wait(timeout=30)
        if r.returncode != 0:
            raise AssertionError("the signing recipe failed: " + r.stdout + r.stderr)
        cls.sent = {}
        # What the recipe printed is redacted, so the access key id would show as a mask there.
        for k in (AK, TOKEN_AK, SK, TOKEN_SK, TOKEN):
            assert k not in r.stdout + r.stderr, "a credential was printed"
        with open(os.path.join(cls.tmp, "echoes.jsonl")) as f:
            lines = f.read().splitlines()
        for line in lines:
            doc = json.loads(line)
            cls.sent[doc["name"]] = doc["echo"]

    def check(self, name, service, must_sign, token=False):
        echo = self.sent[name]
        h = echo["headers"]
        m = AUTH.match(h["authorization"])
        self.assertIsNotNone(m, h["authorization"])
        ak, sk = (TOKEN_AK, TOKEN_SK) if token else (AK, SK)
        self.assertEqual(m.group(1), ak)
        self.assertEqual((m.group(3), m.group(4)), (REGION, service))
        self.assertEqual(m.group(2), h["x-amz-date"][:8])
        signed = m.group(5).split(";")
        for header in must_sign:
            self.assertIn(header, signed, "%s: %s is not signed" % (name, header))
        sig, boto_signed = botocore_signature(echo, service, ak, sk, TOKEN if token else None)
        self.assertEqual(boto_signed, m.group(5), name + ": botocore would sign other headers")
        self.assertEqual(sig, m.group(6), name + ": botocore computes another signature")
        # The comparison can fail: another secret gives another signature.
        wrong, _ = botocore_signature(echo, service, ak, sk + "x", TOKEN if token else None)
        self.assertNotEqual(wrong, m.group(6))
        return echo

    def test_ec2_form_post(self):
        echo = self.check("ec2-post", "ec2", ["host", "x-amz-date", "content-type"])
        self.assertEqual(echo["method"], "POST")
        self.assertIn("TagSpecification.1.Tag.1.Value=a%20b%2Fc", echo["body"])

    def test_ec2_get_with_query(self):
        echo = self.check("ec2-get", "ec2", ["host", "x-amz-date"])
        self.assertEqual(echo["method"], "GET")
        self.assertIn("Filter.1.Value.2=x%3Dy%26z", echo["query"])

    def test_s3_put_with_content_sha256(self):
        echo = self.check("s3-put", "s3", ["host", "x-amz-date", "x-amz-content-sha256", "content-type"])
        self.assertEqual(echo["path"], "/echo/ephrun-bucket/dir/a%20b%2Bc.txt")
        self.assertEqual(echo["headers"]["x-amz-content-sha256"],
                         hashlib.sha256(echo["body"].encode("latin-1")).hexdigest())

    def test_s3_get_with_query(self):
        echo = self.check("s3-get-query", "s3", ["host", "x-amz-date", "x-amz-content-sha256"])
        self.assertEqual(echo["headers"]["x-amz-content-sha256"], hashlib.sha256(b"").hexdigest())

    def test_session_token_is_sent_and_signed(self):
        for name, service in (("ec2-token", "ec2"), ("s3-token", "s3")):
            echo = self.check(name, service, ["host", "x-amz-date", "x-amz-security-token"], token=True)
            self.assertEqual(echo["headers"]["x-amz-security-token"], TOKEN)
        self.assertEqual(self.sent["s3-token"]["body"].encode("latin-1"), b"\0\1\2binary\xff")


if __name__ == "__main__":
    unittest.main(verbosity=2)
