-- ephrun.aws against the AWS stand-in (moto behind tests/fakes/aws/standin.py);
-- started by test_aws_lua.py, which passes the stand-in and a scratch
-- directory through the environment.
local ephrun = require "ephrun"
local aws = require "ephrun.aws"
local core = require "ephrun._core"
local spec = require "ephrun.spec"
local it, eq, ok, raises, contains = spec.it, spec.eq, spec.ok, spec.raises, spec.contains
local http, json = ephrun.http, ephrun.json

local URL = assert(os.getenv("AWS_STANDIN_URL"), "AWS_STANDIN_URL is not set")
local TMP = assert(os.getenv("AWS_SPEC_TMP"), "AWS_SPEC_TMP is not set")
local AK, SK = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"

local function write(path, data, mode)
  assert(ephrun.fs.write(path, data, { mode = mode or "0600" }))
  return path
end

local n = 0
-- A fresh HOME with ~/.aws/config and ~/.aws/credentials holding `config` and `creds`.
local function home(config, creds)
  n = n + 1
  local h = TMP .. "/home" .. n
  assert(ephrun.fs.mkdir_p(h .. "/.aws"))
  if config then write(h .. "/.aws/config", config) end
  if creds then write(h .. "/.aws/credentials", creds) end
  return h
end

local function env(t)
  local e = { AWS_ENDPOINT_URL = URL, AWS_REGION = "eu-west-1", HOME = home() }
  for k, v in pairs(t or {}) do e[k] = v or nil end
  return e
end

local function keys_env(t)
  local e = env(t)
  e.AWS_ACCESS_KEY_ID, e.AWS_SECRET_ACCESS_KEY = e.AWS_ACCESS_KEY_ID or AK, e.AWS_SECRET_ACCESS_KEY or SK
  return e
end

local function control(method, path, body)
  local r = http.check(http.request { method = method, url = URL .. path, body = body and json.encode(body),
    headers = { ["Content-Type"] = "application/json" } })
  return r.body ~= "" and json.decode(r.body) or nil
end

local function fault(action, code, count, status)
  control("POST", "/_standin/faults", { action = action, code = code, count = count or 1, status = status })
end

local function calls(action)
  local out = {}
  for _, c in ipairs(control("GET", "/_standin/state").log) do
    if c.action == action then out[#out + 1] = c end
  end
  return out
end

local function raised(fn)
  local okc, e = pcall(fn)
  ok(not okc, "expected an error")
  return e
end

it("environment keys, region and endpoint: EC2 reads are signed GETs, writes form POSTs, replies tables", function()
  local s = aws.session { env = keys_env() }
  eq(s:region(), "eu-west-1")
  eq(s:endpoint("ec2"), URL)
  local c = s:credentials()
  eq(c.access_key, AK); eq(c.source, "environment")
  eq(core.redact("k " .. SK), "k <secret:AWS secret access key>")
  local before = #calls("DescribeInstances")
  local r, root = s:ec2("DescribeInstances", {})
  eq(root, "DescribeInstancesResponse")
  eq(type(r.reservationSet), "table")
  local d = calls("DescribeInstances")
  eq(#d, before + 1); eq(d[#d].method, "GET")
  local run = s:ec2("RunInstances", { ImageId = "ami-12345678", MinCount = 1, MaxCount = 1, InstanceType = "t3.micro",
    TagSpecification = { { ResourceType = "instance", Tag = { { Key = "ephrun-run", Value = "spec-1" } } } } })
  local inst = run.instancesSet[1]
  ok(inst.instanceId:match("^i%-"), inst.instanceId)
  local rr = calls("RunInstances")
  eq(rr[#rr].method, "POST")
  local found = s:ec2("DescribeInstances", { Filter = { { Name = "tag:ephrun-run", Value = { "spec-1" } } } })
  eq(#found.reservationSet, 1)
  eq(found.reservationSet[1].instancesSet[1].instanceId, inst.instanceId)
  eq(aws.tags(found.reservationSet[1].instancesSet[1].tagSet)["ephrun-run"], "spec-1")
  s:ec2("TerminateInstances", { InstanceId = { inst.instanceId } })
end)

it("form_encode flattens lists and tables the Query way, sorted and RFC 3986-encoded", function()
  eq(aws.form_encode { Action = "X", Filter = { { Name = "tag:a b", Value = { "1", "2" } } }, Flag = true, N = 3 },
    "Action=X&Filter.1.Name=tag%3Aa%20b&Filter.1.Value.1=1&Filter.1.Value.2=2&Flag=true&N=3")
  eq(aws.uri_encode("a b/c~d", true), "a%20b/c~d")
  eq(aws.parse_time("2026-12-01T15:30:00Z"), 1796139000)
  eq(aws.parse_time("2026-12-01T16:30:00.000+01:00"), 1796139000)
  eq(aws.parse_time("tomorrow"), nil)
end)

it("the session's own environment: the process's AWS_* variables are read when no env table is given", function()
  local s = aws.session()
  eq(s:region(), "eu-west-1")
  eq(s:endpoint("ec2"), URL)
  eq(s:credentials().source, "environment")
end)

it("endpoints: _<SERVICE> over the global one, services sections, profile endpoint_url, the ignore switch", function()
  local s = aws.session { env = env { AWS_ENDPOINT_URL_EC2 = "http://127.0.0.1:9/ec2/" } }
  eq(s:endpoint("ec2"), "http://127.0.0.1:9/ec2")
  eq(s:endpoint("s3"), URL)
  eq(aws.session({ env = env { AWS_ENDPOINT_URL_SCHEDULER = "http://sched" } }):endpoint("scheduler"), "http://sched")
  s = aws.session { env = env { AWS_IGNORE_CONFIGURED_ENDPOINT_URLS = "true", AWS_ENDPOINT_URL_EC2 = "http://x" } }
  eq(s:endpoint("ec2"), "https://ec2.eu-west-1.amazonaws.com")
  eq(s:endpoint("sts"), "https://sts.eu-west-1.amazonaws.com")
  local h = home("[profile p]\nregion = cn-north-1\nservices = mine\nendpoint_url = http://all\n\n"
    .. "[services mine]\ns3 =\n  endpoint_url = http://s3.local/\n")
  s = aws.session { env = { HOME = h, AWS_PROFILE = "p" } }
  eq(s:endpoint("s3"), "http://s3.local")
  eq(s:endpoint("ec2"), "http://all")
  s = aws.session { env = { HOME = h, AWS_PROFILE = "p", AWS_IGNORE_CONFIGURED_ENDPOINT_URLS = "TRUE" } }
  eq(s:endpoint("ec2"), "https://ec2.cn-north-1.amazonaws.com.cn")
  raises(function() aws.session({ env = env { AWS_ENDPOINT_URL = "ftp://x" } }):endpoint("ec2") end,
    "AWS_ENDPOINT_URL: endpoint \"ftp://x\" must start with http:// or https://", true)
end)

it("region: AWS_REGION over AWS_DEFAULT_REGION over the profile; none is an error saying what to set", function()
  local h = home("[default]\nregion = us-west-2\n[profile dev]\nregion = ap-south-1\n")
  eq(aws.session({ env = { HOME = h } }):region(), "us-west-2")
  eq(aws.session({ env = { HOME = h, AWS_PROFILE = "dev" } }):region(), "ap-south-1")
  eq(aws.session({ env = { HOME = h, AWS_DEFAULT_REGION = "eu-north-1" } }):region(), "eu-north-1")
  eq(aws.session({ env = { HOME = h, AWS_DEFAULT_REGION = "eu-north-1", AWS_REGION = "sa-east-1" } }):region(), "sa-east-1")
  eq(aws.session({ env = { HOME = h }, region = "me-south-1" }):region(), "me-south-1")
  local e = raises(function() aws.session({ env = { HOME = home() } }):region() end)
  contains(e, "AWS region is not set: export AWS_REGION=")
  contains(e, "[default] in ")
end)

it("profiles: [profile x] in config, [x] in credentials; an explicit profile skips the environment's keys", function()
  local h = home("[profile dev]\nregion = eu-central-1\n",
    "[default]\naws_access_key_id = AKIADEFAULT0000000001\naws_secret_access_key = defaultsecret/abc\n"
      .. "[dev]\naws_access_key_id = AKIADEV00000000000001\naws_secret_access_key = devsecret/xyz\naws_session_token = devtoken123\n")
  local s = aws.session { env = { HOME = h, AWS_PROFILE = "dev" } }
  local c = s:credentials()
  eq(c.access_key, "AKIADEV00000000000001"); eq(c.session_token, "devtoken123")
  eq(c.source, "profile dev (credentials file)")
  eq(s:region(), "eu-central-1")
  eq(core.redact("devsecret/xyz devtoken123"), "<secret:AWS secret access key> <secret:AWS session token>")
  -- AWS_PROFILE does not hide environment keys (as in botocore); an explicit profile does.
  s = aws.session { env = { HOME = h, AWS_PROFILE = "dev", AWS_ACCESS_KEY_ID = AK, AWS_SECRET_ACCESS_KEY = SK } }
  eq(s:credentials().source, "environment")
  s = aws.session { profile = "dev", env = { HOME = h, AWS_ACCESS_KEY_ID = AK, AWS_SECRET_ACCESS_KEY = SK } }
  eq(s:credentials().access_key, "AKIADEV00000000000001")
  eq(aws.session({ env = { HOME = h } }):credentials().access_key, "AKIADEFAULT0000000001")
  -- Keys in the config file count too; AWS_SHARED_CREDENTIALS_FILE and AWS_CONFIG_FILE move the files.
  local cfg = write(TMP .. "/other-config", "[profile cfgkeys]\naws_access_key_id = AKIACFG\naws_secret_access_key = cfgsecret\n")
  s = aws.session { env = { HOME = home(), AWS_CONFIG_FILE = cfg, AWS_PROFILE = "cfgkeys" } }
  eq(s:credentials().source, "profile cfgkeys (config file)")
end)

it("credential errors say what to do: missing, half-set, unknown profile, a source_profile loop", function()
  local e = raises(function() aws.session({ env = env() }):credentials() end)
  contains(e, "AWS credentials not found")
  contains(e, "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
  e = raises(function() aws.session({ env = env { AWS_ACCESS_KEY_ID = AK } }):credentials() end)
  contains(e, "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not")
  e = raises(function() aws.session({ env = env { AWS_PROFILE = "nope" } }):credentials() end)
  contains(e, "AWS profile nope is not in")
  local h = home("[profile a]\nrole_arn = arn:aws:iam::123456789012:role/a\nsource_profile = b\n"
    .. "[profile b]\nrole_arn = arn:aws:iam::123456789012:role/b\nsource_profile = a\n")
  e = raises(function() aws.session({ env = { HOME = h, AWS_PROFILE = "a", AWS_REGION = "eu-west-1" } }):credentials() end)
  contains(e, "source_profile loop (a -> b)")
end)

it("credential_process: its JSON output becomes credentials (secrets registered), refreshed before expiry", function()
  local counter = TMP .. "/process-count"
  local script = write(TMP .. "/creds.sh", ([[#!/bin/sh
echo x >> %s
n=$(wc -l < %s)
exp=$(date -u -d "+%s seconds" +%%Y-%%m-%%dT%%H:%%M:%%SZ)
printf '{"Version": 1, "AccessKeyId": "ASIAPROC%%s", "SecretAccessKey": "procsecret%%s", ' $n $n
printf '"SessionToken": "proctoken%%s", "Expiration": "%%s"}\n' $n $exp
]]):format(counter, counter, "$1"), "0755")
  local h = home("[profile proc]\nregion = eu-west-1\ncredential_process = " .. script .. " 200\n"
    .. "[profile short]\ncredential_process = " .. script .. " 60\n")
  local s = aws.session { env = { HOME = h, AWS_PROFILE = "proc", AWS_ENDPOINT_URL = URL } }
  local c = s:credentials()
  eq(c.access_key, "ASIAPROC1"); eq(c.session_token, "proctoken1")
  contains(c.source, "credential_process of profile proc")
  ok(c.expires > ephrun.time.now() + 100 and c.expires < ephrun.time.now() + 300, "expiry read")
  eq(core.redact("procsecret1"), "<secret:AWS secret access key>")
  -- 200 s left is inside the 5-minute margin: every use fetches fresh ones.
  eq(s:credentials().access_key, "ASIAPROC2")
  s:ec2("DescribeInstances")   -- and they sign a call
  local bad = write(TMP .. "/bad.sh", "#!/bin/sh\necho oops >&2\nexit 3\n", "0755")
  local h2 = home("[default]\ncredential_process = " .. bad .. "\n")
  local e = raises(function() aws.session({ env = { HOME = h2 } }):credentials() end)
  contains(e, "credential_process of profile default failed (exit 3): oops")
  local v2 = write(TMP .. "/v2.sh", "#!/bin/sh\necho '{\"Version\": 2}'\n", "0755")
  e = raises(function() aws.session({ env = { HOME = home("[default]\ncredential_process = " .. v2 .. "\n") } }):credentials() end)
  contains(e, "printed Version 2; only Version 1 is understood")
end)

it("role_arn + source_profile: STS AssumeRole (a signed GET to the STS endpoint) gives temporary keys", function()
  local h = home("[profile builder]\nrole_arn = arn:aws:iam::123456789012:role/builder\nsource_profile = base\n"
    .. "role_session_name = spec-session\nregion = eu-west-1\n",
    "[base]\naws_access_key_id = " .. AK .. "\naws_secret_access_key = " .. SK .. "\n")
  local before = #calls("AssumeRole")
  local s = aws.session { env = { HOME = h, AWS_PROFILE = "builder", AWS_ENDPOINT_URL_STS = URL, AWS_ENDPOINT_URL_EC2 = URL } }
  local c = s:credentials()
  ok(c.access_key ~= AK and c.session_token and c.session_token ~= "", "temporary keys with a token")
  contains(c.source, "assume-role arn:aws:iam::123456789012:role/builder (profile builder)")
  ok(c.expires and c.expires > ephrun.time.now() + 600, "an expiry an hour out")
  eq(core.redact(c.secret_key), "<secret:AWS secret access key>")
  eq(core.redact(c.session_token), "<secret:AWS session token>")
  local a = calls("AssumeRole")
  eq(#a, before + 1); eq(a[#a].method, "GET"); eq(a[#a].service, "sts")
  eq(s:credentials(), c, "cached while far from expiry")
  s:ec2("DescribeInstances")
end)

it("errors are structured: kind, retry, code, message; tostring is Code: Message", function()
  local s = aws.session { env = keys_env() }
  local e = raised(function() s:ec2("DescribeInstances", { InstanceId = { "i-0123456789abcdef0" } }) end)
  ok(aws.is_error(e, "not_found"), tostring(e))
  eq(e.code, "InvalidInstanceID.NotFound"); eq(e.retry, false); eq(e.status, 400)
  eq(tostring(e), "InvalidInstanceID.NotFound: " .. e.message)
  fault("RunInstances", "InsufficientInstanceCapacity", 1, 400)
  e = raised(function() s:ec2("RunInstances", { ImageId = "ami-1", MinCount = 1, MaxCount = 1 }) end)
  eq({ e.kind, e.retry, e.code }, { "capacity", false, "InsufficientInstanceCapacity" })
  eq(tostring(e), "InsufficientInstanceCapacity: Injected by the stand-in: InsufficientInstanceCapacity")
  fault("DescribeInstances", "UnauthorizedOperation", 1)
  e = raised(function() s:ec2("DescribeInstances") end)
  eq({ e.kind, e.retry }, { "auth", false })
  fault("TerminateInstances", "IncorrectInstanceState", 1)
  e = raised(function() s:ec2("TerminateInstances", { InstanceId = { "i-1" } }) end)
  eq({ e.kind, e.retry }, { "locked", true })
  eq({ aws.classify("VcpuLimitExceeded") }, { "quota", false })
  eq({ aws.classify("InvalidGroup.Duplicate") }, { "conflict", false })
  eq({ aws.classify("InvalidParameterValue", 400) }, { "invalid", false })
  eq({ aws.classify("Whatever", 503) }, { "server", true })
end)

it("a RequestLimitExceeded storm: reads retry through a short one and raise rate_limited after a long one", function()
  local s = aws.session { env = keys_env() }
  fault("DescribeInstances", "RequestLimitExceeded", 2)
  local before = #calls("DescribeInstances")
  s:ec2("DescribeInstances", {}, { retries = 3 })
  eq(#calls("DescribeInstances") - before, 3, "two throttled answers, then the real one")
  fault("DescribeInstances", "RequestLimitExceeded", 10)
  local e = raised(function() s:ec2("DescribeInstances", {}, { retries = 1 }) end)
  eq({ e.kind, e.retry, e.code, e.status }, { "rate_limited", true, "RequestLimitExceeded", 503 })
  control("DELETE", "/_standin/faults")
  -- A POST without a ClientToken is not resent (it might have been acted on)...
  fault("CreateSecurityGroup", "RequestLimitExceeded", 1)
  before = #calls("CreateSecurityGroup")
  e = raised(function() s:ec2("CreateSecurityGroup", { GroupName = "g-storm", GroupDescription = "d" }) end)
  eq(e.kind, "rate_limited"); eq(#calls("CreateSecurityGroup") - before, 1)
  -- ...one with a ClientToken is.
  fault("RunInstances", "RequestLimitExceeded", 1)
  local r = s:ec2("RunInstances", { ImageId = "ami-1", MinCount = 1, MaxCount = 1, ClientToken = "spec-token-1" })
  ok(r.instancesSet[1].instanceId)
  s:ec2("TerminateInstances", { InstanceId = { r.instancesSet[1].instanceId } })
end)

it("DependencyViolation (locked, retry) on a group in use until its instance is terminated", function()
  local s = aws.session { env = keys_env() }
  local g = s:ec2("CreateSecurityGroup", { GroupName = "g-dep", GroupDescription = "ephrun spec" })
  local r = s:ec2("RunInstances", { ImageId = "ami-1", MinCount = 1, MaxCount = 1, SecurityGroupId = { g.groupId } })
  local iid = r.instancesSet[1].instanceId
  local e = raised(function() s:ec2("DeleteSecurityGroup", { GroupId = g.groupId }) end)
  eq({ e.kind, e.retry, e.code }, { "locked", true, "DependencyViolation" })
  s:ec2("TerminateInstances", { InstanceId = { iid } })
  local deadline = ephrun.time.monotonic() + 30
  while true do
    local okd, err = pcall(s.ec2, s, "DeleteSecurityGroup", { GroupId = g.groupId })
    if okd then break end
    ok(aws.is_error(err, "locked"), tostring(err))
    ok(ephrun.time.monotonic() < deadline, "the group is still in use 30 s after terminating")
    ephrun.time.sleep(0.1)
  end
end)

it("S3 through the same session: signed with x-amz-content-sha256; S3's XML errors are structured", function()
  local s = aws.session { env = keys_env() }
  s:s3("PUT", "ephrun-spec", nil, { body = '<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    .. "<LocationConstraint>eu-west-1</LocationConstraint></CreateBucketConfiguration>" })
  s:s3("PUT", "ephrun-spec", "dir/a b.txt", { body = "hello s3", headers = { ["Content-Type"] = "text/plain" } })
  eq(s:s3("GET", "ephrun-spec", "dir/a b.txt").body, "hello s3")
  local e = raised(function() s:s3("GET", "ephrun-spec", "missing") end)
  eq({ e.kind, e.code }, { "not_found", "NoSuchKey" })
  e = raised(function()
    s:s3("PUT", "ephrun-spec", "dir/a b.txt", { body = "again", headers = { ["If-None-Match"] = "*" } })
  end)
  eq({ e.kind, e.code }, { "conflict", "PreconditionFailed" })
end)

return spec.recipe("aws")
