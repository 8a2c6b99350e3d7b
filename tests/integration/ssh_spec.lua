-- ephrun.ssh and ephrun.keys from Lua against a real sshd; started by
-- test_ssh_lua.py, which passes the server through the environment.
local ephrun = require "ephrun"
local spec = require "ephrun.spec"
local it, eq, ok, raises, contains = spec.it, spec.eq, spec.ok, spec.raises, spec.contains
local ssh, keys, time = ephrun.ssh, ephrun.keys, ephrun.time

local HOST, PORT = "127.0.0.1", tonumber(os.getenv("SSHD_PORT"))
local USER, KEY_FILE = os.getenv("SSHD_USER"), os.getenv("SSHD_KEY_FILE")
local HOST_KEY, AUTH_KEYS = os.getenv("SSHD_HOST_KEY"), os.getenv("SSHD_AUTHORIZED_KEYS")
local TMP = os.getenv("SSHD_TMP")

local function connect(extra)
  local o = { host = HOST, port = PORT, user = USER, key_file = KEY_FILE, host_key = HOST_KEY }
  for k, v in pairs(extra or {}) do o[k] = v end
  return ssh.connect(o)
end

local function write(path, data)
  local f = assert(io.open(path, "w"))
  f:write(data)
  f:close()
end

it("keys.generate gives an openssh key, a .pub line and its fingerprint", function()
  local kp = keys.generate("spec")
  contains(kp.private_key, "-----BEGIN OPENSSH PRIVATE KEY-----")
  ok(kp.public_key:match("^ssh%-ed25519 AAAA[%w+/=]+ spec$"), kp.public_key)
  ok(kp.fingerprint:match("^SHA256:[%w+/]+$"), kp.fingerprint)
  eq(keys.fingerprint(kp.public_key), kp.fingerprint)
  eq(require("ephrun._core").redact("k=" .. kp.private_key), "k=<secret:ssh-private-key>")
end)

it("a generated key authenticates, and the host key is pinned", function()
  local kp = keys.generate("fresh")
  local f = assert(io.open(AUTH_KEYS, "a"))
  f:write(kp.public_key, "\n")
  f:close()
  local s <close> = ssh.connect { host = HOST, port = PORT, user = USER, key = kp.private_key, host_key = HOST_KEY }
  eq(s:run("echo hello", { stream = false }).stdout, "hello\n")
  eq(s:fingerprint(), keys.fingerprint(HOST_KEY))
end)

it("an encrypted key file opens with a passphrase from the environment", function()
  local enc = os.getenv("SSHD_ENC_KEY_FILE")
  local s <close> = ssh.connect { host = HOST, port = PORT, user = USER, key_file = enc, host_key = HOST_KEY,
    passphrase_env = "SSHD_ENC_PASS" }
  eq(s:run("echo enc", { stream = false }).stdout, "enc\n")
  eq(require("ephrun._core").redact("open sesame 7"), "<secret:SSHD_ENC_PASS>")
  eq(keys.load(enc, os.getenv("SSHD_ENC_PASS")).encrypted, true)
  raises(function() keys.load(enc) end, "encrypted")
end)

it("run returns code and output; non-zero raises with the stderr tail", function()
  local s <close> = connect()
  local r = s:run("echo out; echo err >&2; exit 3", { check = false })
  eq({ r.code, r.stdout, r.stderr }, { 3, "out\n", "err\n" })
  local e = raises(function() s:run("echo broken-thing >&2; exit 7") end)
  contains(e, "exited with code 7")
  contains(e, "broken-thing")
end)

it("env and stdin reach the command, cwd is honoured", function()
  local s <close> = connect()
  local r = s:run("printf '%s|' \"$FOO\"; cat; pwd", { env = { FOO = "bar baz" }, stdin = "in-data|", cwd = "/tmp" })
  eq(r.stdout, "bar baz|in-data|/tmp\n")
end)

it("a timeout stops the remote command", function()
  local s <close> = connect()
  local t0 = time.monotonic()
  local e = raises(function() s:run("sleep 31.25", { timeout = 1 }) end)
  ok(time.monotonic() - t0 < 5)
  ok(tostring(e):lower():find("time"), tostring(e))
  local r = s:run("pgrep -f 'sleep 3[1].25' || true", { stream = false })
  eq(r.stdout, "")
end)

it("task:cancel stops a remote command within a second", function()
  local s <close> = connect()
  local t = ephrun.spawn(function() s:run("sleep 32.5") end)
  time.sleep(0.5)
  local t0 = time.monotonic()
  t:cancel("stop the remote")
  raises(function() t:wait() end, "stop the remote")
  ok(time.monotonic() - t0 < 1.5, "cancel took too long")
  time.sleep(0.3)
  eq(s:run("pgrep -f 'sleep 3[2].5' || true", { stream = false }).stdout, "")
end)

it("four sessions run `sleep 1` concurrently", function()
  local t0 = time.monotonic()
  ephrun.parallel({ 1, 2, 3, 4 }, function()
    local s <close> = connect()
    s:run("sleep 1")
  end)
  local dt = time.monotonic() - t0
  ok(dt < 2.5, ("took %.2fs"):format(dt))
end)

it("a wrong pinned host key is refused, naming both fingerprints", function()
  local other = keys.generate("not-the-host")
  local e = tostring(raises(function() connect { host_key = other.public_key } end))
  contains(e, other.fingerprint)
  contains(e, keys.fingerprint(HOST_KEY))
end)

it("no host key and no known_hosts is refused before connecting", function()
  raises(function() ssh.connect { host = HOST, port = PORT, user = USER, key_file = KEY_FILE } end,
    "no accept-anything default", true)
end)

it("an unknown user fails with an auth error", function()
  local e = tostring(raises(function() connect { user = "nobody-here" } end))
  ok(e:lower():find("auth"), e)
end)

it("sftp: strings, stat, mkdir -p, remove", function()
  local s <close> = connect()
  local dir = TMP .. "/sftp/a/b"
  s:mkdir_p(dir)
  s:put_string(dir .. "/f.txt", "content\n", tonumber("600", 8))
  eq(s:get_string(dir .. "/f.txt"), "content\n")
  local st = s:stat(dir .. "/f.txt")
  eq({ st.type, st.size, st.mode & tonumber("777", 8) }, { "file", 8, tonumber("600", 8) })
  eq(s:remove(dir .. "/f.txt"), true)
  eq(s:stat(dir .. "/f.txt"), false)
end)

it("sync sends only changes, never secrets, and fetch brings files back", function()
  local src = TMP .. "/src"
  os.execute("mkdir -p '" .. src .. "/sub'")
  write(src .. "/a.txt", "alpha")
  write(src .. "/sub/b.txt", "beta")
  write(src .. "/.env", "TOKEN=x")
  write(src .. "/key.pem", "pem")
  local s <close> = connect()
  local cold = s:sync(src, TMP .. "/dst")
  eq({ cold.files_sent, cold.files_total }, { 2, 2 })
  local warm = s:sync(src, TMP .. "/dst")
  eq(warm.files_sent, 0)
  eq(s:stat(TMP .. "/dst/.env"), false)
  eq(s:stat(TMP .. "/dst/key.pem"), false)
  local fetched = s:fetch(TMP .. "/dst", TMP .. "/back")
  eq(fetched.files, 2)
  local f = assert(io.open(TMP .. "/back/sub/b.txt"))
  eq(f:read("a"), "beta")
  f:close()
  local scan = ssh.scan_local(src)
  eq({ scan.files_total, scan.excluded }, { 2, 2 })
end)

it("detached jobs survive the session and can be waited for", function()
  local job
  do
    local s <close> = connect()
    job = s:run_detached("sleep 1; echo job-done; exit 4", { log = TMP .. "/job.log" })
    ok(job.pid > 0)
  end
  local s <close> = connect()
  eq(s:job_status(job).alive, true)
  eq(s:job_wait(job, 20), 4)
  contains(s:job_tail(job, 5), "job-done")
end)

return spec.recipe("ssh")
