--- __NAME__: an ephrun provider. `ephrun.provider("__NAME__")` finds this file
--- as providers/__NAME__.lua beside the recipe (or on EPHRUN_PATH).
---
--- The contract is ephrun.Provider (`ephrun meta install` puts its stubs in
--- this repository for the editor): every function takes its subject first and
--- the provider options `opts` last, and raises structured errors
--- (`errors.raise { kind = "auth", message = ... }`) that the lifecycle decides
--- on: `locked`, `rate_limited`, `server` and `network` are retried.
---
--- As written, each function hands the call to the built-in `local` provider
--- (an sshd on 127.0.0.1), so this skeleton works and passes the conformance
--- spec from the start. Replace one body at a time with calls to your cloud's
--- API (`ephrun.http`), and run the spec after each:
---     ephrun __NAME___conformance_spec.lua
local ephrun = require "ephrun"
local errors = require "ephrun.errors"

-- Delete once every function below calls your cloud.
local backend = ephrun.provider("local").impl

---@type ephrun.Provider
local M = {}

-- What the instance's lifetime timer does when it fires: "ends billing" when
-- the cloud deletes it, "stops the CPU only" when a halted instance still bills
-- (then `ephrun reaper install` does the deleting), or "none".
M.ttl_effect = "ends billing"

-- What the conformance spec launches: the cheapest plan of your cloud.
M._conformance = { spec = {} }

--- Hourly USD price of an instance of `spec` (the plan's worst case), or nil when unknown.
function M.price(spec, opts)
  return backend.price(spec, opts)
end

--- Creates one instance carrying `spec.tags` with `spec.user_data`, and returns
--- at once. Look the label up before retrying a create that may have gone through.
function M.launch(spec, opts)
  if spec.plan and spec.plan:match("%s") then
    errors.raise { kind = "invalid", message = ("__NAME__: no plan '%s'"):format(spec.plan) }
  end
  return backend.launch(spec, opts)
end

--- The instance `id`, or nil when the cloud does not know it.
function M.get(id, opts)
  return backend.get(id, opts)
end

--- Instances whose tags include every pair in `filter.tags`.
function M.list(filter, opts)
  return backend.list(filter, opts)
end

--- Ends the instance; one already gone is success.
function M.destroy(inst, opts)
  return backend.destroy(inst, opts)
end

--- A shell command that removes the instance by hand.
function M.destroy_hint(inst, opts)
  return backend.destroy_hint(inst, opts)
end

--- Polls until the instance is in `state`; raises kind "timeout" after `deadline` seconds.
function M.wait(inst, state, deadline, opts)
  return backend.wait(inst, state, deadline, opts)
end

--- Where `instance:ssh()` connects: {host=, port=, user=}.
function M.ssh_endpoint(inst, opts)
  return backend.ssh_endpoint(inst, opts)
end

return M
