-- Structured provider errors (ephrun.errors) and the lifecycle's retry, which
-- decides on an error's kind and retry flag, never on its text.
local spec = require "ephrun.spec"
local ephrun = require "ephrun"
local errors = require "ephrun.errors"
local it, eq, ok, raises = spec.it, spec.eq, spec.ok, spec.raises

-- A provider whose destroy fails with the given errors, one per call, then succeeds.
local n = 0
local function provider_failing_with(...)
  n = n + 1
  local name = "errors_spec_" .. n
  local queue, calls = { ... }, { n = 0 }
  package.loaded["providers." .. name] = {
    launch = function() error("not used") end,
    destroy = function(_inst, opts)
      assert(type(opts) == "table", "destroy gets the provider options last")
      calls.n = calls.n + 1
      local e = table.remove(queue, 1)
      if e ~= nil then error(e, 0) end
    end,
  }
  return ephrun.provider(name), calls
end

local function destroy(cloud)
  return pcall(cloud.destroy, cloud, { id = "i-1" }, { deadline = 60 })
end

it("errors.new keeps kind and message, defaults retry from the kind, and reads as its message", function()
  local e = errors.new { kind = "locked", message = "instance 7 is still booting", status = 500 }
  eq({ e.kind, e.retry, e.status, tostring(e) }, { "locked", true, 500, "instance 7 is still booting" })
  eq("destroy: " .. e, "destroy: instance 7 is still booting")
  eq(errors.new { kind = "auth", message = "no" }.retry, false)
  eq(errors.new { kind = "server", message = "x", retry = false }.retry, false)
  ok(errors.is(e) and errors.is(e, "locked") and not errors.is(e, "auth") and not errors.is("locked"))
end)

it("errors.new refuses an unknown kind, naming the kinds there are", function()
  raises(function() errors.new { kind = "busy", message = "x" } end, "unknown kind busy (one of: auth, capacity,", true)
end)

it("every kind's default retry: only locked, rate_limited, server and network", function()
  local retried = {}
  for kind in pairs(errors.KINDS) do
    if errors.retryable(errors.new { kind = kind, message = "m" }) then retried[#retried + 1] = kind end
  end
  table.sort(retried)
  eq(retried, { "locked", "network", "rate_limited", "server" })
  for _, k in ipairs { "locked", "rate_limited", "server", "not_found", "auth", "quota", "capacity" } do
    ok(errors.KINDS[k] ~= nil, "the contract's kind " .. k)
  end
end)

it("an error whose text says locked but whose kind is auth is not retried", function()
  local cloud, calls = provider_failing_with(errors.new { kind = "auth",
    message = "HTTP 500: Server is currently locked (429 Too Many Requests, temporarily)" })
  local done, err = destroy(cloud)
  ok(not done, "destroy should have failed")
  eq(calls.n, 1, "destroy calls")
  ok(errors.is(err, "auth"), "the provider's error reaches the caller unchanged: " .. tostring(err))
end)

it("an error whose kind is locked is retried whatever its text says", function()
  local cloud, calls = provider_failing_with(errors.new { kind = "locked", message = "HTTP 403: Forbidden" })
  local done, err = destroy(cloud)
  ok(done, tostring(err))
  eq(calls.n, 2, "destroy calls")
end)

it("a rate-limited, then a server error, are both retried", function()
  local cloud, calls = provider_failing_with(errors.new { kind = "rate_limited", message = "slow down" },
    errors.new { kind = "server", message = "oops" })
  ok(destroy(cloud))
  eq(calls.n, 3)
end)

it("retry=false wins over the kind's default", function()
  local cloud, calls = provider_failing_with(errors.new { kind = "server", message = "HTTP 503", retry = false })
  ok(not destroy(cloud))
  eq(calls.n, 1)
end)

it("a plain string error is never retried, even one that says locked, 429 or 5xx", function()
  local cloud, calls = provider_failing_with("vultr instance 1 is locked: HTTP 500 (429, timed out, temporary)")
  local done, err = destroy(cloud)
  ok(not done)
  eq(calls.n, 1)
  spec.contains(tostring(err), "is locked")
end)

it("a destroy still locked at its deadline fails naming the instance, the error and the by-hand command", function()
  local cloud = provider_failing_with(errors.new { kind = "locked", message = "still booting" },
    errors.new { kind = "locked", message = "still booting" }, errors.new { kind = "locked", message = "still booting" })
  local done, err = pcall(cloud.destroy, cloud, { id = "i-9" }, { deadline = 2 })
  ok(not done)
  spec.contains(tostring(err), "instance i-9 is NOT destroyed after ")
  spec.contains(tostring(err), " of trying (still booting)")
  spec.contains(tostring(err), "ephrun reap")
end)

return spec.recipe("provider_errors")
