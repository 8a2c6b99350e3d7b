-- Sends the requests whose SigV4 signatures test_aws_signing.py checks against
-- botocore: to the echo server (AWS_ENDPOINT_URL points at it), writing each
-- echoed request (method, path, query, headers, body) as one JSON line to
-- echoes.jsonl (a file: what a recipe prints is redacted, and the access key
-- id the test compares is a secret).
local ephrun = require "ephrun"
local aws = require "ephrun.aws"

local function show(name, resp)
  assert(resp and resp.status == 200, "the echo server did not answer 200")
  local f = assert(io.open("echoes.jsonl", "a"))
  f:write(ephrun.json.encode { name = name, echo = ephrun.json.decode(resp.body) }, "\n")
  f:close()
end

return ephrun.recipe {
  name = "aws-signing",
  run = function()
    local s = aws.session()
    -- EC2 write: a form POST.
    local form = { ["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8" }
    show("ec2-post", s:request("ec2", { method = "POST", headers = form,
      body = aws.form_encode { Action = "RunInstances", Version = "2016-11-15", ImageId = "ami-12345678", MinCount = 1,
        MaxCount = 1, UserData = "I2Nsb3VkLWNvbmZpZw==",
        TagSpecification = { { ResourceType = "instance", Tag = { { Key = "Name", Value = "a b/c" } } } } } }))
    -- EC2 read: a GET whose query needs encoding and sorting.
    show("ec2-get", s:request("ec2", { method = "GET", query = { Action = "DescribeInstances", Version = "2016-11-15",
      Filter = { { Name = "tag:ephrun-run", Value = { "run 1", "x=y&z" } } } } }))
    -- S3: PUT of an object whose key needs encoding, with x-amz-content-sha256.
    show("s3-put", s:request("s3", { method = "PUT", path = "/ephrun-bucket/" .. aws.uri_encode("dir/a b+c.txt", true),
      headers = { ["Content-Type"] = "text/plain" }, body = "hello, signed world\n" }))
    show("s3-get-query", s:request("s3", { method = "GET", path = "/ephrun-bucket",
      query = { ["list-type"] = 2, prefix = "dir/" } }))
    -- Temporary credentials: the session token is sent and signed.
    local t = aws.session { credentials = { access_key = os.getenv("SIGN_TOKEN_AK"),
      secret_key = os.getenv("SIGN_TOKEN_SK"), session_token = os.getenv("SIGN_TOKEN") } }
    show("ec2-token", t:request("ec2", { method = "POST", headers = form,
      body = aws.form_encode { Action = "DescribeInstances", Version = "2016-11-15" } }))
    show("s3-token", t:request("s3", { method = "PUT", path = "/ephrun-bucket/t.bin", body = "\0\1\2binary\255" }))
  end,
}
