-- ephrun.http against tests/support/http_server.py on 127.0.0.1.
local ephrun = require "ephrun"
local spec = require "ephrun.spec"
local it, eq, ok, raises, contains = spec.it, spec.eq, spec.ok, spec.raises, spec.contains
local http, json, time = ephrun.http, ephrun.json, ephrun.time

local function source_dir()
  local env = os.getenv("EPHRUN_SOURCE_DIR")
  if env and env ~= "" then return env end
  local here = debug.getinfo(1, "S").source:match("^@(.*)/tests/lua/[^/]*$")
  return here or "."
end

-- Starts the server once; it stops when its stdin closes (at the end of the
-- run, or when ephrun dies).
local server
local function srv()
  if server then return server end
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local pipe = assert(io.popen(("exec python3 %s/tests/support/http_server.py --port-file %s/port --log %s/log")
    :format(source_dir(), dir, dir), "w"))
  local port
  for _ = 1, 200 do
    local f = io.open(dir .. "/port")
    if f then port = f:read("n"); f:close() end
    if port then break end
    time.sleep(0.05)
  end
  assert(port, "the test HTTP server did not start")
  ephrun.defer(function()
    pipe:close()
    os.execute("rm -rf " .. dir)
  end, "stop the test HTTP server")
  server = {
    dir = dir,
    base = "http://127.0.0.1:" .. port,
    url = function(path) return "http://127.0.0.1:" .. port .. path end,
    log = function()
      local f = io.open(dir .. "/log")
      if not f then return "" end
      local s = f:read("a"); f:close()
      return s
    end,
  }
  return server
end

local function file_size(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local n = f:seek("end"); f:close()
  return n
end

it("GET, POST, PUT, PATCH, DELETE and HEAD carry method, headers and body", function()
  local s = srv()
  local r = http.get(s.url("/echo/get?x=1"), { headers = { ["X-Test"] = "yes", ["X-Num"] = 42 } })
  eq(r.status, 200); eq(r.ok, true); eq(r.attempts, 1); eq(r.method, "GET")
  local e = json.decode(r.body)
  eq(e.method, "GET"); eq(e.path, "/echo/get"); eq(e.query, "x=1")
  eq(e.headers["x-test"], "yes"); eq(e.headers["x-num"], "42")
  eq(r.headers["content-type"], "application/json")
  ok(r.duration > 0 and r.duration < 5)
  eq(r.url, s.url("/echo/get?x=1"))

  for _, m in ipairs { "post", "put", "patch" } do
    local resp = http[m](s.url("/echo/" .. m), "payload-" .. m, { headers = { ["Content-Type"] = "text/plain" } })
    local d = json.decode(resp.body)
    eq(d.method, m:upper()); eq(d.body, "payload-" .. m); eq(d.headers["content-type"], "text/plain")
    eq(d.headers.expect, nil)
  end
  eq(json.decode(http.delete(s.url("/echo/d")).body).method, "DELETE")
  local h = http.head(s.url("/echo/h"))
  eq(h.status, 200); eq(h.body, ""); eq(h.method, "HEAD")
  local custom = http.request { method = "options", url = s.url("/echo/o") }
  eq(json.decode(custom.body).method, "OPTIONS")
  local empty = http.put(s.url("/echo/empty"))
  eq(json.decode(empty.body).headers["content-length"], "0")
end)

it("redirects are followed unless follow=false", function()
  local s = srv()
  local r = http.get(s.url("/redirect?to=/echo/there"))
  eq(r.status, 200); eq(r.url, s.url("/echo/there"))
  local r2 = http.get(s.url("/redirect?to=/echo/there"), { follow = false })
  eq(r2.status, 302); eq(r2.headers.location, "/echo/there")
end)

it("HTTP errors are returned; check and raise=true raise with method, redacted URL, status, body", function()
  local s = srv()
  local r = http.get(s.url("/status/404?token=abc123"))
  eq(r.status, 404); eq(r.ok, false); eq(r.attempts, 1)
  local err = raises(function() http.check(r) end)
  contains(err, "http: GET " .. s.url("/status/404?token=<redacted>") .. " returned 404 Not Found: status 404")
  ok(not err:find("abc123", 1, true), err)
  contains(err, "http_spec.lua:")
  local err2 = raises(function() http.post(s.url("/status/400"), "x", { raise = true }) end)
  contains(err2, "POST " .. s.url("/status/400") .. " returned 400 Bad Request: status 400")
  eq(http.check(http.get(s.url("/echo/ok"))).status, 200)
  raises(function() http.check(http.get("http://127.0.0.1:1/", { retries = 0 })) end, "Couldn't connect to server", true)
end)

it("transport failures return nil, message, curl code", function()
  local r, msg, code = http.get("http://127.0.0.1:1/x", { retries = 1, connect_timeout = 2 })
  eq(r, nil); eq(code, 7)
  contains(msg, "GET http://127.0.0.1:1/x")
  contains(msg, "after 2 attempts")
  raises(function() http.get("http://127.0.0.1:1/x", { retries = 0, raise = true }) end, "http: GET http://127.0.0.1:1/x")
end)

it("timeout accepts seconds or a duration and bounds one attempt", function()
  local s = srv()
  local t0 = time.monotonic()
  local r, msg, code = http.get(s.url("/delay/3"), { timeout = "500ms", retries = 0 })
  eq(r, nil); eq(code, 28); contains(msg, "timed out")
  ok(time.monotonic() - t0 < 2, "timed out promptly")
  local r2 = http.get(s.url("/delay/0.2"), { timeout = 5 })
  eq(r2.status, 200)
  raises(function() http.get(s.url("/"), { timeout = "soon" }) end, "is not a duration")
end)

it("misuse raises: unknown options, bad URLs, bad headers", function()
  raises(function() http.request { url = "http://x/", tiemout = 3 } end, "unknown option 'tiemout'", true)
  raises(function() http.request { url = "ftp://x/" } end, "must start with http")
  raises(function() http.request {} end, "needs a non-empty string 'url'", true)
  raises(function() http.get("http://x/", { headers = { ["X-Bad"] = "a\r\nInjected: 1" } }) end, "newline")
  raises(function() http.get("http://x/", { aws_sigv4 = { region = "r" } }) end, "aws_sigv4 needs", true)
end)

it("download streams to a file atomically; an error status writes nothing", function()
  local s = srv()
  local path = s.dir .. "/big.bin"
  local r = http.get(s.url("/bytes?size=2500000"), { download = path })
  eq(r.status, 200); eq(r.body, ""); eq(r.path, path); eq(r.size, 2500000)
  eq(file_size(path), 2500000)
  local f = assert(io.open(path, "rb")); local head = f:read(3); f:close()
  eq(head, "\0\1\2")

  local missing = s.dir .. "/missing.bin"
  local r2 = http.get(s.url("/status/404"), { download = missing })
  eq(r2.status, 404); eq(r2.path, nil); eq(r2.body, "status 404")
  eq(file_size(missing), nil)
  local p = io.popen("ls " .. s.dir); local listing = p:read("a"); p:close()
  ok(not listing:find("part", 1, true), "no temporary file left: " .. listing)
end)

it("retries 503 and 429, honouring Retry-After (seconds and HTTP date)", function()
  local s = srv()
  local r = http.get(s.url("/seq/a?s=503,429:1,200"))
  eq(r.status, 200); eq(r.attempts, 3)
  eq(json.decode(r.body).n, 3)
  ok(r.duration >= 1.0 and r.duration < 4, ("took %.2fs"):format(r.duration))

  local r2 = http.get(s.url("/seq/b?s=503:date:2,200"))
  eq(r2.status, 200); eq(r2.attempts, 2)
  ok(r2.duration >= 0.9, ("took %.2fs"):format(r2.duration))

  local r3 = http.get(s.url("/seq/c?s=500"), { retries = 1 })
  eq(r3.status, 500); eq(r3.attempts, 2)
  eq(json.decode(http.get(s.url("/count/c")).body).count, 2)
end)

it("POST is retried on 5xx only with retry=true", function()
  local s = srv()
  local r = http.post(s.url("/seq/p1?s=503,200"), "x")
  eq(r.status, 503); eq(r.attempts, 1)
  local r2 = http.post(s.url("/seq/p2?s=503,200"), "x", { retry = true })
  eq(r2.status, 200); eq(r2.attempts, 2)
end)

it("four concurrent 1-s requests finish in well under 2 s", function()
  local s = srv()
  local t0 = time.monotonic()
  local tasks = {}
  for i = 1, 4 do
    tasks[i] = ephrun.spawn(function() return http.get(s.url("/delay/1?i=" .. i)).status end)
  end
  for i = 1, 4 do eq(tasks[i]:wait(), 200) end
  local dt = time.monotonic() - t0
  ok(dt >= 0.95 and dt < 2, ("took %.2fs"):format(dt))
end)

it("task:cancel stops a slow download in under 1.5 s and leaves no file", function()
  local s = srv()
  local path = s.dir .. "/slow.bin"
  local t = ephrun.spawn(function()
    return http.get(s.url("/slow?size=2000000&rate=50000"), { download = path })
  end)
  time.sleep(0.5)
  local t0 = time.monotonic()
  t:cancel("stop the download")
  raises(function() t:wait() end, "stop the download")
  local dt = time.monotonic() - t0
  ok(dt < 1.5, ("cancel took %.2fs"):format(dt))
  eq(file_size(path), nil)
end)

it("task:cancel interrupts a Retry-After wait", function()
  local s = srv()
  local t = ephrun.spawn(function() return http.get(s.url("/seq/w?s=503:60,200")) end)
  time.sleep(0.3)
  local t0 = time.monotonic()
  t:cancel("enough")
  raises(function() t:wait() end, "enough")
  ok(time.monotonic() - t0 < 1.5)
end)

it("aws_sigv4 signs the request and sends the session token", function()
  local s = srv()
  local r = http.request {
    method = "POST", url = s.url("/echo/sig"), body = "Action=DescribeRegions&Version=2016-11-15",
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded" },
    aws_sigv4 = { region = "us-east-1", service = "ec2", access_key = "AKIDEXAMPLE",
                  secret_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", session_token = "SESSIONTOKEN123" },
  }
  local h = json.decode(r.body).headers
  ok(h.authorization:match("^AWS4%-HMAC%-SHA256 Credential=AKIDEXAMPLE/%d+/us%-east%-1/ec2/aws4_request, SignedHeaders=.*, Signature=%x+$"),
    h.authorization)
  eq(h["x-amz-security-token"], "SESSIONTOKEN123")
  contains(h.authorization, "x-amz-security-token")
  ok(h["x-amz-date"])
end)

it("redact_url hides userinfo and query values", function()
  eq(http.redact_url("https://u:p@h:1/a/b?token=x&y=2#f"), "https://<redacted>@h:1/a/b?token=<redacted>&y=<redacted>")
end)

it("non-GET requests are plan steps (GETs are not)", function()
  local s = srv()
  http.get(s.url("/echo/plain-get"))
  http.post(s.url("/echo/planned?key=secretvalue"), "x")
  -- Not under --dry-run here, so both were sent; the plan holds the POST only
  -- (tests/integration/test_http.py checks the --dry-run side).
  local log = s.log()
  contains(log, "GET /echo/plain-get")
  contains(log, "POST /echo/planned?key=secretvalue")
end)

return spec.recipe("http")
