--- ephrun.errors: the structured errors providers raise. A provider says what
--- went wrong as a `kind` (and whether the same call may succeed later as
--- `retry`); the lifecycle decides on those fields only, never on the text, so
--- a provider words its messages for people, not for a pattern in cloud.lua.
---
--- ```lua
--- local errors = require "ephrun.errors"
--- errors.raise { kind = "locked", message = "instance 42 is still booting" }
--- ```
local M = {}

--- Every kind, with whether a call that failed so may succeed when tried again
--- (the default for `retry`).
---@type table<ephrun.ErrorKind, boolean>
M.KINDS = {
  locked = true,        -- the resource refuses the change for now (installing, booting from a snapshot)
  rate_limited = true,  -- the API throttled us (HTTP 429)
  server = true,        -- the API failed (5xx)
  network = true,       -- no answer: connection refused or reset, timed out
  not_found = false,    -- the resource does not exist (any more)
  auth = false,         -- credentials missing, wrong or not allowed (401, 403)
  quota = false,        -- an account limit was reached
  capacity = false,     -- the cloud has no room for this plan or region now
  invalid = false,      -- the request itself is wrong (bad plan, bad parameter)
  timeout = false,      -- a wait reached its deadline
}

---@alias ephrun.ErrorKind "locked"|"rate_limited"|"server"|"network"|"not_found"|"auth"|"quota"|"capacity"|"invalid"|"timeout"

---@class ephrun.Error
---@field kind ephrun.ErrorKind
---@field retry boolean whether the same call may succeed later
---@field message string what happened and what to do next
---@field status? integer the HTTP status, when there was one

local Error = {}
Error.__index = Error
Error.__tostring = function(e) return e.message end
-- Code that builds a message with `..` keeps working with an error object.
Error.__concat = function(a, b) return tostring(a) .. tostring(b) end

--- A structured error: `kind` is required and must be one of `errors.KINDS`;
--- `retry` defaults to what the kind implies; extra fields are kept.
---@param e {kind: ephrun.ErrorKind, message: string, retry?: boolean, status?: integer}
---@return ephrun.Error
function M.new(e)
  if type(e) ~= "table" then error("errors.new expects {kind=, message=}", 2) end
  local default = M.KINDS[e.kind]
  if default == nil then
    local kinds = {}
    for k in pairs(M.KINDS) do kinds[#kinds + 1] = k end
    table.sort(kinds)
    error(("errors.new: unknown kind %s (one of: %s)"):format(tostring(e.kind), table.concat(kinds, ", ")), 2)
  end
  local o = {}
  for k, v in pairs(e) do o[k] = v end
  o.message = tostring(e.message or e.kind)
  if o.retry == nil then o.retry = default end
  o.retry = o.retry and true or false
  return setmetatable(o, Error)
end

--- Raises `errors.new(e)` (no position is added: the message says where).
---@param e {kind: ephrun.ErrorKind, message: string, retry?: boolean, status?: integer}
function M.raise(e)
  error(M.new(e), 0)
end

--- True when `err` is a structured error (of `kind`, when given).
---@param err any
---@param kind? ephrun.ErrorKind
---@return boolean
function M.is(err, kind)
  return getmetatable(err) == Error and (kind == nil or err.kind == kind)
end

--- Whether a failed call may be tried again: the error's `retry`. Anything that
--- is not a structured error (a plain string, whatever it says) is not retried.
---@param err any
---@return boolean
function M.retryable(err)
  return type(err) == "table" and err.retry == true
end

return M
