local ephrun = require "ephrun"
local spec = require "ephrun.spec"
local it, eq, ok, raises = spec.it, spec.eq, spec.ok, spec.raises
local time = ephrun.time

it("four tasks sleeping 1 s finish together, well under 2 s", function()
  local t0 = time.monotonic()
  local tasks = {}
  for i = 1, 4 do tasks[i] = ephrun.spawn(function() time.sleep(1); return i end) end
  local sum = 0
  for i = 1, 4 do sum = sum + tasks[i]:wait() end
  local dt = time.monotonic() - t0
  eq(sum, 10)
  ok(dt >= 0.95 and dt < 1.9, ("took %.2fs"):format(dt))
end)

it("parallel keeps order and honours limit", function()
  local running, peak = 0, 0
  local out = ephrun.parallel({ 1, 2, 3, 4, 5, 6 }, function(x)
    running = running + 1
    peak = math.max(peak, running)
    time.sleep(0.05)
    running = running - 1
    return x * x
  end, { limit = 2 })
  eq(out, { 1, 4, 9, 16, 25, 36 })
  eq(peak, 2)
end)

it("an error in one task cancels its siblings and their cleanups run", function()
  local cleaned = {}
  local err = raises(function()
    ephrun.parallel({ 1, 2, 3 }, function(x)
      local _ <close> = setmetatable({}, { __close = function() cleaned[#cleaned + 1] = x end })
      if x == 2 then time.sleep(0.1); error("boom in " .. x) end
      time.sleep(30)
    end)
  end, "boom in 2")
  ok(err)
  table.sort(cleaned)
  eq(cleaned, { 1, 2, 3 })
end)

it("task:wait returns results and re-raises errors", function()
  local t = ephrun.spawn(function(a, b) return a + b, "x" end, 2, 3)
  local s, x = t:wait()
  eq({ s, x }, { 5, "x" })
  local bad = ephrun.spawn(function() error("nope") end)
  raises(function() bad:wait() end, "nope")
  eq(bad:status(), "failed")
end)

it("cancel interrupts a sleeping task promptly", function()
  local t = ephrun.spawn(function() time.sleep(30) end)
  time.sleep(0.05)
  local t0 = time.monotonic()
  t:cancel("stop now")
  raises(function() t:wait() end, "stop now")
  ok(time.monotonic() - t0 < 1)
end)

it("a cancelled task can still wait in its own cleanup", function()
  local done = false
  local t = ephrun.spawn(function()
    local _ <close> = setmetatable({}, { __close = function() time.sleep(0.05); done = true end })
    time.sleep(30)
  end)
  time.sleep(0.02)
  t:cancel()
  pcall(t.wait, t)
  ok(done, "cleanup ran to the end")
end)

local core = require "ephrun._core"

local function threads()
  for line in io.lines("/proc/self/status") do
    local n = line:match("^Threads:%s*(%d+)")
    if n then return tonumber(n) end
  end
end

it("a pcall cannot swallow a cancel: the task ends and its next call never runs", function()
  local after = {}
  local t = ephrun.spawn(function()
    local returned = pcall(time.sleep, 30)
    after[#after + 1] = "pcall returned " .. tostring(returned)
    ephrun.fs.write(os.tmpname(), "the next native call ran")
  end)
  local x = ephrun.spawn(function()
    xpcall(time.sleep, debug.traceback, 30)
    after[#after + 1] = "xpcall returned"
  end)
  time.sleep(0.02)
  t:cancel("stop now")
  x:cancel("stop x")
  local caught, err = pcall(t.wait, t)
  eq(caught, false)
  ok(ephrun.is_cancelled(err), "a typed error: " .. tostring(err))
  eq(getmetatable(err), ephrun.Cancelled)
  eq(err.reason, "stop now")
  eq(tostring(err), "stop now")
  local _, xerr = pcall(x.wait, x)
  ok(ephrun.is_cancelled(xerr), "xpcall's handler did not turn it into text: " .. tostring(xerr))
  eq(after, {})
end)

it("every wait of a cancelled task stops, until one raises the cancel", function()
  local seen = {}
  local inside = ephrun.event()
  local t = ephrun.spawn(function()
    ephrun.shield(function()
      inside:set()
      time.sleep(0.1) -- the cancel arrives here and waits
    end)
    -- A callback of a C function cannot yield: its wait runs inline, already
    -- cancelled, so it stops at once with a plain error a pcall may catch...
    local t0 = time.monotonic()
    local caught = pcall(string.gsub, "a", "a", function() time.sleep(20) end)
    seen[#seen + 1] = caught or time.monotonic() - t0 < 10
    -- ...and the next wait raises the cancellation itself.
    time.sleep(0)
    seen[#seen + 1] = "not reached"
  end)
  inside:wait()
  t:cancel("later")
  local _, err = pcall(t.wait, t)
  ok(ephrun.is_cancelled(err), tostring(err))
  eq(seen, { true })
end)

it("a shielded section runs to its end and the cancel is raised at the next wait", function()
  local steps = {}
  local inside = ephrun.event()
  local slept
  local t = ephrun.spawn(function()
    local r = ephrun.shield(function()
      inside:set()
      local t0 = time.monotonic()
      time.sleep(0.2)
      slept = time.monotonic() - t0
      steps[#steps + 1] = "slept through the cancel"
      return "made"
    end)
    steps[#steps + 1] = r
    time.sleep(30)
    steps[#steps + 1] = "not reached"
  end)
  inside:wait() -- runs before the task's timer can fire: the cancel lands inside the shield
  t:cancel("stop")
  local _, err = pcall(t.wait, t)
  ok(ephrun.is_cancelled(err))
  ok(slept >= 0.19, ("the shielded sleep was cut short: %.3fs"):format(slept))
  eq(steps, { "slept through the cancel", "made" })
end)

it("a native job that finished delivers its result even when a cancel came meanwhile", function()
  local got = {}
  local worker = ephrun.spawn(function()
    local r = ephrun.proc.run({ "echo", "created" }, { stream = false })
    got[#got + 1] = r.stdout
    time.sleep(0)
    got[#got + 1] = "not reached"
  end)
  -- Hold the Lua thread until the job has ended but is not yet collected,
  -- then cancel: the reply is in hand.
  local canceller = ephrun.spawn(function()
    local t0 = time.monotonic()
    while core.sched_stats().finished < 1 do
      if time.monotonic() - t0 > 20 then error("the job never finished") end
    end
    worker:cancel("too late")
  end)
  canceller:wait()
  local _, err = pcall(worker.wait, worker)
  ok(ephrun.is_cancelled(err), tostring(err))
  eq(got, { "created\n" })
end)

it("sleeps are timers: two hundred sleeping tasks add no thread", function()
  local before = threads()
  local tasks = {}
  for i = 1, 200 do tasks[i] = ephrun.spawn(function() time.sleep(0.2); return i end) end
  time.sleep(0.05)
  local during = threads()
  local sum = 0
  for i = 1, 200 do sum = sum + tasks[i]:wait() end
  eq(sum, 200 * 201 / 2)
  ok(during <= before, ("threads went from %d to %d"):format(before, during))
end)

it("tasks that end release their registry references and leave the task table", function()
  local function registry_size() -- freed references stay as numbers (Lua's free list)
    local n = 0
    for _, v in pairs(debug.getregistry()) do
      if type(v) ~= "number" then n = n + 1 end
    end
    return n
  end
  local stats0 = core.sched_stats()
  collectgarbage()
  local before = registry_size()
  for _ = 1, 500 do
    local t = ephrun.spawn(function() return {} end)
    t:wait()
  end
  for _ = 1, 500 do ephrun.spawn(function() end) end
  time.sleep(0)
  time.sleep(0)
  collectgarbage()
  local after = registry_size()
  ok(after <= before + 2, ("registry grew from %d to %d entries"):format(before, after))
  eq(core.sched_stats().tasks, stats0.tasks)
end)

it("a mutex hands itself over in arrival order, without polling", function()
  local m = ephrun.mutex()
  local order = {}
  local holder = ephrun.spawn(function()
    local _ <close> = m:lock()
    time.sleep(0.1)
    order[#order + 1] = "holder"
  end)
  time.sleep(0)
  local waiters = {}
  for i = 1, 3 do
    waiters[i] = ephrun.spawn(function()
      local _ <close> = m:lock()
      order[#order + 1] = i
      time.sleep(0.01)
    end)
  end
  time.sleep(0.02)
  ok(m:locked())
  waiters[2]:cancel("gave up")
  holder:wait()
  waiters[1]:wait()
  waiters[3]:wait()
  raises(function() waiters[2]:wait() end, "gave up")
  eq(order, { "holder", 1, 3 })
  ok(not m:locked())
  raises(function() m:unlock() end, "not held by this task")
  local _ <close> = m:lock()
  raises(function() m:lock() end, "not re%-entrant")
end)

it("an event wakes every waiter, times out, and a cancel reaches its waiter", function()
  local e = ephrun.event()
  eq(e:wait(0.01), false)
  local woke = 0
  local ts = {}
  for i = 1, 3 do ts[i] = ephrun.spawn(function() if e:wait() then woke = woke + 1 end end) end
  local stuck = ephrun.spawn(function() e:wait() end)
  time.sleep(0.01)
  stuck:cancel("no more")
  local _, err = pcall(stuck.wait, stuck)
  ok(ephrun.is_cancelled(err))
  e:set()
  for i = 1, 3 do ts[i]:wait() end
  eq(woke, 3)
  ok(e:is_set())
  eq(e:wait(), true)
  e:clear()
  eq(e:is_set(), false)
end)

it("a sleep of NaN ends at once and a sleep of math.huge until cancelled", function()
  time.sleep(0 / 0)
  local t = ephrun.spawn(function() time.sleep(math.huge) end)
  time.sleep(0.01)
  t:cancel("enough")
  raises(function() t:wait() end, "enough")
  eq(core.sched_stats().timers, 0)
end)

it("a wait nobody can end is a deadlock error, not a hang", function()
  local e = ephrun.event()
  local t = ephrun.spawn(function() e:wait() end)
  raises(function() t:wait() end, "deadlock")
end)

it("defer handles are closable and idempotent", function()
  local n = 0
  do
    local d <close> = ephrun.defer(function() n = n + 1 end, "count")
    d:close()
  end
  eq(n, 1)
  local d2 = ephrun.defer(function() n = n + 100 end, "dismissed")
  d2:cancel()
  eq(d2:close(), true)
  eq(n, 1)
end)

it("params convert and reject with clear messages", function()
  local params = require "ephrun.params"
  local r = ephrun.recipe { name = "x", run = function() end, params = {
    n = { default = 1 }, d = { type = "duration", default = "90s" }, l = { type = "list", default = { "a" } },
    b = { default = false }, s = { required = true }, p = { type = "path", default = "~/x" },
  } }
  local p = assert(params.bind(r, { "n=5", "d=1h30m", "l=x, y,z", "b=yes", "s=hi" }))
  eq(p.n, 5); eq(p.d, 5400); eq(p.l, { "x", "y", "z" }); eq(p.b, true); eq(p.s, "hi")
  eq(p.p, os.getenv("HOME") .. "/x")
  local _, e1 = params.bind(r, { "s=1", "n=abc" })
  spec.contains(e1, "parameter 'n' expects a number")
  local _, e2 = params.bind(r, { "s=1", "zz=1" })
  spec.contains(e2, "unknown parameter 'zz'")
  local _, e3 = params.bind(r, {})
  spec.contains(e3, "missing required parameter 's'")
  local _, e4 = params.bind(r, { "s=1", "d=soon" })
  spec.contains(e4, "parameter 'd' expects a duration")
end)

it("durations parse and format", function()
  eq(time.parse_duration("90s"), 90)
  eq(time.parse_duration("45m"), 2700)
  eq(time.parse_duration("3h"), 10800)
  eq(time.parse_duration("1h30m"), 5400)
  eq(time.parse_duration("250ms"), 0.25)
  eq(time.parse_duration("soon"), nil)
  eq(time.format_duration(3725), "1h 02m")
end)

it("json round-trips and reports positions", function()
  local json = ephrun.json
  local v = json.decode('{"a":[1,2,{"b":null}],"c":"x","e":[]}')
  eq(v.a[1], 1); eq(v.a[3].b, json.null); eq(#v.e, 0)
  eq(json.encode(v.e), "[]")
  eq(json.decode(json.encode(v)).c, "x")
  local bad, err = json.decode('{"a": 1,\n "b": }')
  eq(bad, nil)
  spec.contains(err, "line 2")
end)

it("secrets are redacted from logs, plans and errors", function()
  core.secret_add("TOKEN", "s3cr3t-value")
  eq(core.redact("auth s3cr3t-value here"), "auth <secret:TOKEN> here")
end)

it("the phase is reported and restorable", function()
  local prev = ephrun.phase("build")
  eq(ephrun.phase(prev), "build")
end)

it("shell_quote makes one shell word that the shell reads back unchanged", function()
  eq(ephrun.shell_quote("plain"), "'plain'")
  eq(ephrun.shell_quote("it's"), "'it'\\''s'")
  eq(ephrun.shell_quote(42), "'42'")
  local tricky = "a b'c\"d$e`f\\g\nh"
  local r = ephrun.proc.run({ "printf %s " .. ephrun.shell_quote(tricky) }, { shell = true, stream = false })
  eq(r.stdout, tricky)
end)

return spec.recipe("core")
