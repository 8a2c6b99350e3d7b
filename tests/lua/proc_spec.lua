local ephrun = require "ephrun"
local spec = require "ephrun.spec"
local it, eq, ok, raises, contains = spec.it, spec.eq, spec.ok, spec.raises, spec.contains
local proc, fs, time = ephrun.proc, ephrun.fs, ephrun.time

local function alive(pid) return fs.exists("/proc/" .. pid) end

-- Waits until `path` has content (a child writes its pid there).
local function read_when_ready(path)
  for _ = 1, 200 do
    local s = fs.read(path)
    if s and s:match("%d") then return s end
    time.sleep(0.02)
  end
  error("nothing written to " .. path)
end

-- Writes `src` as a recipe file in a fresh directory; returns its path.
local function recipe_file(src)
  local dir = fs.tempdir("proc-spec-")
  local path = fs.join(dir, "r.lua")
  assert(fs.write(path, src))
  return path, dir
end

local self_exe = assert(fs.realpath("/proc/self/exe"))

it("run captures stdout, stderr, code and duration", function()
  local r = proc.run({ "sh", "-c", "echo out; echo err >&2" }, { stream = false })
  eq(r.code, 0); eq(r.stdout, "out\n"); eq(r.stderr, "err\n"); eq(r.ok, true)
  ok(r.duration >= 0 and r.duration < 5)
  eq(r.signal, nil)
end)

it("env, env_clear, cwd and stdin reach the child", function()
  local r = proc.run({ "sh", "-c", 'printf "%s|%s" "$GREETING" "$HOME"' },
    { env = { GREETING = "hello", HOME = false } })
  eq(r.stdout, "hello|")
  r = proc.run({ "/usr/bin/env" }, { env_clear = true, env = { ONLY = "1" } })
  eq(r.stdout, "ONLY=1\n")
  r = proc.run({ "pwd" }, { cwd = "/usr" })
  eq(r.stdout, "/usr\n")
  r = proc.run({ "tr", "a-z", "A-Z" }, { stdin = "shout\n" })
  eq(r.stdout, "SHOUT\n")
  local big = string.rep("0123456789abcdef", 64 * 1024) -- 1 MiB through stdin and back
  r = proc.run({ "cat" }, { stdin = big, stream = false })
  eq(#r.stdout, #big)
  ok(r.stdout == big)
end)

it("shell=true runs /bin/sh -c; a table passes positional parameters", function()
  eq(proc.run("echo $((6 * 7))", { shell = true }).stdout, "42\n")
  eq(proc.run({ 'printf "%s" "$1"', "it's; not $(run)" }, { shell = true }).stdout, "it's; not $(run)")
  raises(function() proc.run("echo hi") end, "needs shell=true")
end)

it("check=false returns a non-zero exit; check=true raises with the command, code and stderr", function()
  local r = proc.run({ "sh", "-c", "exit 3" }, { check = false })
  eq(r.code, 3); eq(r.ok, false)
  local err = raises(function()
    proc.run({ "sh", "-c", "echo first >&2; echo 'disk full' >&2; exit 4", "ignored" }, { stream = false })
  end)
  contains(err, "command 'sh -c ")
  contains(err, "failed with exit code 4")
  contains(err, "disk full")
  contains(err, "proc_spec.lua:") -- the caller's line
end)

it("secrets are redacted from the error message", function()
  require("ephrun._core").secret_add("PROC_TOKEN", "tok-9f8e7d6c")
  local err = raises(function() proc.run({ "sh", "-c", "echo tok-9f8e7d6c >&2; exit 1" }) end)
  ok(not err:find("tok-9f8e7d6c", 1, true), err)
  contains(err, "<secret:PROC_TOKEN>")
end)

it("a missing program raises, or returns nil and a message with check=false", function()
  raises(function() proc.run({ "no-such-program-ephrun" }) end, "command not found: no-such-program-ephrun", true)
  local r, e = proc.run({ "no-such-program-ephrun" }, { check = false })
  eq(r, nil); contains(e, "command not found")
  local _, e2 = proc.run({ "true" }, { cwd = "/no/such/dir", check = false })
  contains(e2, "/no/such/dir")
end)

it("timeout terminates the child", function()
  local t0 = time.monotonic()
  raises(function() proc.run({ "sleep", "5" }, { timeout = 0.3 }) end, "timed out after")
  local r = proc.run({ "sleep", "5" }, { timeout = "300ms", check = false })
  eq(r.timed_out, true); eq(r.signal, 15); eq(r.code, nil)
  ok(time.monotonic() - t0 < 2, "both timeouts well under 2 s")
end)

it("four concurrent `sleep 1` finish in under 2 s", function()
  local t0 = time.monotonic()
  local out = ephrun.parallel({ 1, 2, 3, 4 }, function(i)
    return proc.run({ "sleep", "1" }).code + i
  end)
  local dt = time.monotonic() - t0
  eq(out, { 1, 2, 3, 4 })
  ok(dt >= 0.95 and dt < 2, ("took %.2fs"):format(dt))
end)

it("cancelling a task kills its `sleep 30` within a second", function()
  local dir = fs.tempdir("proc-cancel-")
  local pidfile = fs.join(dir, "pid")
  local t = ephrun.spawn(function()
    proc.run({ "sh", "-c", 'echo $$ > "$1"; exec sleep 30', "sh", pidfile })
  end)
  local pid = tonumber(read_when_ready(pidfile))
  ok(alive(pid), "child is running")
  local t0 = time.monotonic()
  t:cancel("stop the sleeper")
  raises(function() t:wait() end, "stop the sleeper")
  ok(time.monotonic() - t0 < 1.5, ("cancel took %.2fs"):format(time.monotonic() - t0))
  ok(not alive(pid), "child " .. pid .. " is gone")
end)

it("a spawned sleep dies from SIGTERM (children get an empty signal mask)", function()
  local p <close> = assert(proc.spawn({ "sleep", "30" }))
  ok(p:running())
  local pid = p:pid()
  ok(alive(pid))
  local function blocked(status) return status:match("SigBlk:%s*(%x+)") end
  ok(tonumber(blocked(fs.read("/proc/self/status")), 16) ~= 0, "ephrun blocks signals")
  eq(tonumber(blocked(fs.read("/proc/" .. pid .. "/status")), 16), 0, "the child blocks none")
  eq(p:kill("TERM"), true)
  local r = p:wait(5)
  eq(r.signal, 15)
  ok(not p:running())
  ok(not alive(pid))
  -- the same for SIGINT and SIGHUP, which the host also blocks
  for _, sig in ipairs({ "INT", "HUP" }) do
    local q <close> = assert(proc.spawn({ "sleep", "30" }, { check = false }))
    q:kill(sig)
    local rq = q:wait(5)
    ok(rq and rq.signal ~= nil, sig .. " killed it")
  end
end)

it("spawn: wait with a timeout, kill, and an idempotent close", function()
  local p = assert(proc.spawn({ "sleep", "30" }))
  local r, e = p:wait(0.1)
  eq(r, nil); eq(e, "timeout")
  ok(p:running())
  local pid = p:pid()
  p:close()
  ok(not alive(pid), "close killed it")
  p:close()
  ok(not p:running())
  eq(p:kill(), false)
  local q = assert(proc.spawn({ "sh", "-c", "echo done" }))
  eq(q:wait().stdout, "done\n")
  q:close()
  raises(function() q:wait() end, "was closed")
end)

it("children in their own process group: the whole group is stopped", function()
  local dir = fs.tempdir("proc-group-")
  local pidfile = fs.join(dir, "pid")
  local p = assert(proc.spawn({ "sh", "-c", 'sleep 30 & echo $! > "$1"; wait', "sh", pidfile }))
  local grandchild = tonumber(read_when_ready(pidfile))
  ok(alive(grandchild))
  p:close()
  -- the grandchild is reaped by init (which may be slow to): a zombie counts as gone
  local st
  for _ = 1, 50 do
    st = fs.read("/proc/" .. grandchild .. "/stat")
    if st == nil or st:match("^%d+ %b() Z") then break end
    time.sleep(0.02)
  end
  ok(st == nil or st:match("^%d+ %b() Z"), "grandchild gone")
end)

it("proc.which finds programs", function()
  ok(proc.which("sh"):match("^/.*/sh$"), proc.which("sh"))
  eq(proc.which("no-such-program-ephrun"), nil)
end)

it("children left running are killed when ephrun ends, even on error or SIGTERM", function()
  local path, dir = recipe_file([[
    local ephrun = require "ephrun"
    return ephrun.recipe { name = "leaky", run = function()
      local p = ephrun.proc.spawn({ "sleep", "30" })
      ephrun.fs.write(arg_dir .. "/pid", tostring(p:pid()))
      if mode == "error" then error("recipe failed on purpose") end
      ephrun.time.sleep(30)
    end }
  ]])
  local src = fs.read(path)
  -- error: the run fails with the child still running
  assert(fs.write(path, ("arg_dir, mode = %q, %q\n"):format(dir, "error") .. src))
  local r = proc.run({ self_exe, path }, { check = false, stream = false })
  eq(r.code, 1)
  local pid = tonumber(read_when_ready(fs.join(dir, "pid")))
  ok(not alive(pid), "child of a failed run is gone")
  -- SIGTERM while the recipe sleeps
  fs.remove(fs.join(dir, "pid"))
  assert(fs.write(path, ("arg_dir, mode = %q, %q\n"):format(dir, "sleep") .. src))
  local e = assert(proc.spawn({ self_exe, path }, { check = false, stream = false }))
  pid = tonumber(read_when_ready(fs.join(dir, "pid")))
  ok(alive(pid))
  e:kill("TERM")
  local er = e:wait(10)
  ok(er and er.code ~= 0, "ephrun stopped")
  ok(not alive(pid), "child of a signalled run is gone")
end)

it("under --dry-run nothing is spawned and the plan says what would be", function()
  local path, dir = recipe_file(([[
    local ephrun = require "ephrun"
    return ephrun.recipe { name = "dry", run = function()
      local r = ephrun.proc.run({ "touch", %q })
      assert(r.dry_run and r.code == 0 and r.stdout == "")
      local p = ephrun.proc.spawn({ "sleep", "30" })
      assert(p:pid() == nil and p:wait().dry_run)
    end }
  ]]):format("/tmp/ephrun-proc-spec-should-not-exist"))
  local r = proc.run({ self_exe, "--dry-run", path }, { stream = false, check = false })
  eq(r.code, 0, r.stderr)
  contains(r.stdout .. r.stderr, "touch /tmp/ephrun-proc-spec-should-not-exist")
  ok(not fs.exists("/tmp/ephrun-proc-spec-should-not-exist"))
  ok(dir)
end)

return spec.recipe("proc")
