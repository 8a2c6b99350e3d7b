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
  local core = require "ephrun._core"
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
