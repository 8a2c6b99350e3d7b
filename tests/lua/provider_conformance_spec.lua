-- The provider contract (meta/ephrun/provider.lua) checked against a real
-- provider and its fake: `ephrun tests/lua/provider_conformance_spec.lua
-- provider=NAME`. ctest runs it for `local`; tests/integration/
-- test_provider_conformance.py starts the Vultr stand-in and runs it for `vultr`.
-- A new provider adds one line to FIXTURES (and its fake to that driver).
local spec = require "ephrun.spec"
local ephrun = require "ephrun"
local errors = require "ephrun.errors"
local it, eq, ok, raises, contains = spec.it, spec.eq, spec.ok, spec.raises, spec.contains

-- What each provider launches for the spec (the cheapest plan), what it resizes
-- to, and provider options with a wrong credential (for a provider that has one).
local FIXTURES = {
  ["local"] = { spec = {}, resize_to = "local-1c-512m" },
  vultr = { spec = { plan = "vc2-1c-1gb", region = "ewr" }, resize_to = "vc2-2c-4gb",
    bad_credentials = { api_key = "ephrun-conformance-wrong-key" } },
  aws = { spec = { plan = "t3.micro", region = "eu-west-1" }, resize_to = "t3.small" },
}

local STATES = { pending = true, running = true, stopping = true, stopped = true, terminated = true }
local TTL_EFFECTS = { ["ends billing"] = true, ["stops the CPU only"] = true, none = true }

-- Shared by the tests below, which run in order.
local S = {}

local function setup()
  if S.cloud then return S end
  local name = spec.params.provider
  -- A provider outside this repository (`ephrun new provider`) brings its own.
  local found, cloud = pcall(ephrun.provider, name)
  S.fixture = FIXTURES[name] or (found and cloud.impl._conformance) or error(("no conformance fixture for "
    .. "provider '%s' (have: %s)"):format(name, table.concat(ephrun.cloud.builtin_providers(), ", ")))
  S.cloud = ephrun.provider(name)
  S.impl, S.opts = S.cloud.impl, S.cloud.opts
  S.mark = "c-" .. ephrun.fs.hash_string(ephrun.run_id() .. tostring(math.random())):sub(1, 8)
  return S
end

local function launch_spec(extra)
  local s = {}
  for k, v in pairs(S.fixture.spec) do s[k] = v end
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

-- The contract's functions, read from the meta class: name -> {nparams, optional}.
local function contract()
  -- This repository's copy while developing it; the binary's own elsewhere.
  local src = os.getenv("EPHRUN_SOURCE_DIR")
  local text = src and assert(ephrun.fs.read(src .. "/meta/ephrun/provider.lua"))
    or assert(require("ephrun._core").builtin_text("meta/ephrun/provider.lua"))
  local fns, comment = {}, ""
  for line in text:gmatch("[^\n]*") do
    local name, args = line:match("^function Provider%.([%w_]+)%(([^)]*)%) end$")
    if name then
      local n = 0
      for _ in args:gmatch("[%w_]+") do n = n + 1 end
      fns[name] = { nparams = n, optional = comment:find("--- Optional.", 1, true) ~= nil }
    end
    comment = line:match("^%-%-%-") and (comment .. line .. "\n") or ""
  end
  return fns
end

local function instances(list)
  local out = {}
  for _, i in ipairs(list) do
    if (i.kind or "instance") == "instance" then out[#out + 1] = i end
  end
  return out
end

local function gone(id)
  local cur = S.impl.get(id, S.opts)
  return cur == nil or cur.state == "terminated"
end

it("the module has every required contract function, only contract functions, each with the contract's parameters", function()
  setup()
  local fns = contract()
  ok(fns.launch and fns.snapshot, "read the contract from meta/ephrun/provider.lua")
  for name, c in pairs(fns) do
    if not c.optional then ok(type(S.impl[name]) == "function", "required function " .. name .. " is missing") end
  end
  for name, v in pairs(S.impl) do
    if type(v) == "function" and not name:match("^_") then
      ok(fns[name], ("%s is not a contract function (meta/ephrun/provider.lua)"):format(name))
      local info = debug.getinfo(v, "u")
      eq(info.nparams, fns[name].nparams, name .. ": number of parameters (opts comes last)")
    end
  end
  if S.impl.ttl_effect ~= nil then ok(TTL_EFFECTS[S.impl.ttl_effect], "ttl_effect " .. tostring(S.impl.ttl_effect)) end
  ok(S.impl.static == nil or type(S.impl.static) == "boolean", "static is a boolean")
  ok(S.impl.price_basis == nil or type(S.impl.price_basis) == "string", "price_basis is a string")
end)

it("price is a non-negative hourly number for the fixture's spec", function()
  setup()
  local p = S.impl.price(launch_spec(), S.opts)
  ok(type(p) == "number" and p >= 0, "price " .. tostring(p))
end)

it("get of an id the cloud does not know is nil", function()
  setup()
  eq(S.impl.get("ephrun-conformance-no-such-instance", S.opts), nil)
end)

it("a wrong credential raises an auth error that is not retried (providers with credentials)", function()
  setup()
  local bad = S.fixture.bad_credentials
  if not bad then return end -- this provider has no credentials to get wrong
  local done, err = pcall(S.impl.get, "ephrun-conformance-no-such-instance", bad)
  ok(not done, "get with a wrong credential succeeded")
  ok(errors.is(err, "auth") and err.retry == false, "a structured auth error, got: " .. tostring(err))
end)

it("launch returns at once an instance with an id, its tags and a contract state", function()
  setup()
  local host = ephrun.keys.generate("conformance host")
  S.client = ephrun.keys.generate("conformance client")
  S.host_key = host.public_key
  local user_data = ephrun.cloudinit.user_data { host_key = host, authorized_keys = { S.client.public_key }, ttl = 600 }
  S.tags = { ["ephrun-run"] = ephrun.run_id(), ["ephrun-recipe"] = "provider-conformance",
    ["ephrun-expires"] = ephrun.time.iso8601(ephrun.time.now() + 600), ["ephrun-conformance"] = S.mark }
  local inst = S.impl.launch(launch_spec { ttl = 600, tags = S.tags, user_data = user_data,
    label = "ephrun-conformance-" .. S.mark }, S.opts)
  ok(type(inst) == "table" and type(inst.id) == "string" and inst.id ~= "", "an id")
  -- whatever a later test does, the instance goes at the end of the run
  local impl, opts = S.impl, S.opts
  ephrun.defer(function() impl.destroy(inst, opts) end, "destroy conformance instance " .. inst.id)
  ok(STATES[inst.state], "state " .. tostring(inst.state))
  eq(inst.tags["ephrun-conformance"], S.mark, "tags")
  S.inst = inst
end)

it("wait reaches running within its deadline, and ssh_endpoint says where to log in", function()
  setup()
  local w = S.impl.wait(S.inst, "running", 300, S.opts)
  eq(w.state, "running")
  eq(w.id, S.inst.id)
  local ep = S.impl.ssh_endpoint(w, S.opts)
  ok(type(ep.host) == "string" and math.type(ep.port) == "integer" and type(ep.user) == "string",
    "endpoint " .. spec.repr(ep))
  local sh <close> = ephrun.ssh.wait { host = ep.host, port = ep.port, user = ep.user, key = S.client.private_key,
    host_key = S.host_key, deadline = "2m" }
  eq(sh:run("echo conformance").stdout, "conformance\n")
  S.inst = w
end)

it("wait for a state it will not reach raises a timeout at its deadline", function()
  setup()
  local t0 = ephrun.time.monotonic()
  local done, err = pcall(S.impl.wait, S.inst, "stopped", 1, S.opts)
  local took = ephrun.time.monotonic() - t0
  ok(not done, "wait returned")
  ok(errors.is(err, "timeout"), "a structured timeout error, got: " .. tostring(err))
  contains(tostring(err), S.inst.id)
  -- A wait may give up as soon as its next poll would land past the deadline,
  -- so only an upper bound holds.
  ok(took < 60, ("took %.1fs"):format(took))
end)

it("get finds it running with its tags; list finds it by tag and not by another", function()
  setup()
  local cur = S.impl.get(S.inst.id, S.opts)
  eq({ cur.id, cur.state, cur.tags["ephrun-conformance"] }, { S.inst.id, "running", S.mark })
  local found = instances(S.impl.list({ tags = { ["ephrun-conformance"] = S.mark } }, S.opts))
  eq(#found, 1, "instances listed by tag")
  eq(found[1].id, S.inst.id)
  ok(STATES[found[1].state], "state " .. tostring(found[1].state))
  eq(#instances(S.impl.list({ tags = { ["ephrun-conformance"] = S.mark .. "-nobody" } }, S.opts)), 0)
  -- by the run's tag, as a run's own listing and reap's journal-less search do
  local by_run = instances(S.impl.list({ tags = { ["ephrun-run"] = ephrun.run_id() } }, S.opts))
  eq(#by_run, 1, "instances listed by ephrun-run")
  eq(by_run[1].id, S.inst.id)
  local all = instances(S.impl.list({}, S.opts))
  local seen = false
  for _, i in ipairs(all) do seen = seen or i.id == S.inst.id end
  ok(seen, "list without tags includes it")
end)

it("destroy ends it, and destroying it again is success", function()
  setup()
  S.impl.destroy(S.inst, S.opts)
  S.impl.destroy(S.inst, S.opts)
  local cur = S.impl.get(S.inst.id, S.opts)
  ok(cur == nil or cur.state == "terminated" or cur.state == "stopping", "after destroy: " .. spec.repr(cur))
  eq(#instances(S.impl.list({ tags = { ["ephrun-conformance"] = S.mark } }, S.opts)) <= 1, true)
end)

-- Through the lifecycle from here on: cloud:launch journals the instance.
it("cloud:launch journals the instance; the snapshot is taken, listed and deleted twice, or refused with 'cannot'", function()
  setup()
  S.box = S.cloud:launch(launch_spec { ttl = "10m" })
  ok(S.box.id and not gone(S.box.id), "launched")
  if not S.impl.snapshot then
    raises(function() S.box:snapshot { description = "x" } end, "provider '" .. S.cloud.name .. "' cannot take snapshots", true)
    return
  end
  local desc = "conformance " .. S.mark
  local sid = S.box:snapshot { description = desc }
  local snap = S.impl.get_snapshot(sid, S.opts)
  eq({ snap.id, snap.status }, { sid, "complete" })
  local listed = S.impl.snapshots({ description = desc }, S.opts)
  eq(#listed, 1)
  eq(listed[1].id, sid)
  S.cloud:delete_snapshot(sid)
  S.cloud:delete_snapshot(sid)
  eq(S.impl.get_snapshot(sid, S.opts), nil)
end)

it("resize changes the plan and the price follows, or is refused with 'cannot'", function()
  setup()
  if not S.impl.resize then
    raises(function() S.box:resize("bigger") end, "provider '" .. S.cloud.name .. "' cannot resize instances", true)
    return
  end
  local to = assert(S.fixture.resize_to, "FIXTURES." .. S.cloud.name .. ".resize_to")
  S.box:resize(to)
  eq(S.impl.get(S.box.id, S.opts).plan, to)
  eq(S.box.hourly, S.impl.price(launch_spec { plan = to }, S.opts))
end)

it("halt and start, or refused with 'cannot'", function()
  setup()
  if not S.impl.halt then
    raises(function() S.box:halt() end, "provider '" .. S.cloud.name .. "' cannot halt instances", true)
    raises(function() S.box:start() end, "cannot start instances", true)
    return
  end
  S.box:halt()
  eq(S.impl.get(S.box.id, S.opts).state, "stopped")
  S.box:start()
  eq(S.impl.get(S.box.id, S.opts).state, "running")
end)

it("an instance rebuilt from the journal is destroyed through the provider, as reap does", function()
  setup()
  local row
  for _, r in ipairs(ephrun.journal.resources { run_id = ephrun.run_id(), live = true }) do
    if r.id == S.box.id then row = r end
  end
  ok(row, "journal row for " .. S.box.id)
  eq(row.provider, S.cloud.name)
  -- what reap does (stdlib/ephrun/cmd/reap.lua): the journalled extra, its id and tags
  local inst = {}
  for k, v in pairs(row.extra or {}) do inst[k] = v end
  inst.id, inst.tags = row.id, inst.tags or row.tags
  S.cloud:destroy(inst)
  ephrun.journal.destroyed(row.key)
  ok(gone(S.box.id), "gone after the journal's destroy")
  -- the run's own cleanup destroys it once more: idempotent
  S.box:close()
  ok(gone(S.box.id))
end)

return spec.recipe("provider_conformance", {
  provider = { default = "local", doc = "the provider to check (a key of FIXTURES)" },
})
