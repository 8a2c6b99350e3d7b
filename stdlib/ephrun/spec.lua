--- A small test framework for Lua spec files, which are recipes run by the
--- ephrun binary itself (see tests/lua/). Each `it` runs inside the run's main
--- task, so tests may sleep, spawn tasks and wait on native work.
---
--- ```lua
--- local spec = require "ephrun.spec"
--- spec.it("adds", function() spec.eq(1 + 1, 2) end)
--- return spec.recipe("arith")
--- ```
local M = {}

local tests = {}

--- Registers a test.
---@param name string
---@param fn fun()
function M.it(name, fn)
  tests[#tests + 1] = { name = name, fn = fn }
end

local function repr(v, depth)
  depth = depth or 0
  if type(v) == "string" then return ("%q"):format(v) end
  if type(v) ~= "table" or depth > 3 then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do parts[#parts + 1] = tostring(k) .. "=" .. repr(v[k], depth + 1) end
  return "{" .. table.concat(parts, ", ") .. "}"
end
--- A value as short readable text (tables with sorted keys), for messages.
---@type fun(v: any): string
M.repr = repr

local function deep_eq(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not deep_eq(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

--- Asserts deep equality.
---@param got any
---@param want any
---@param msg? string
function M.eq(got, want, msg)
  if not deep_eq(got, want) then
    error(("%sexpected %s, got %s"):format(msg and (msg .. ": ") or "", repr(want), repr(got)), 2)
  end
end

--- Asserts that `v` is truthy.
---@param v any
---@param msg? string
function M.ok(v, msg)
  if not v then error(msg or "expected a true value", 2) end
  return v
end

--- Asserts that `fn` raises an error matching the Lua pattern `pattern`
--- (plain text when `plain` is true); returns the message.
---@param fn fun()
---@param pattern? string
---@param plain? boolean
---@return string
function M.raises(fn, pattern, plain)
  local ok, err = pcall(fn)
  if ok then error("expected an error, but the call succeeded", 2) end
  err = tostring(err)
  if pattern and not err:find(pattern, 1, plain) then
    error(("error %q does not match %q"):format(err, pattern), 2)
  end
  return err
end

--- Asserts that `s` contains `needle` (plain text).
---@param s string
---@param needle string
function M.contains(s, needle)
  if type(s) ~= "string" or not s:find(needle, 1, true) then
    error(("%s does not contain %q"):format(repr(s), needle), 2)
  end
end

--- The bound parameters of the running spec (its `params` and `only`), set
--- before the first test runs.
M.params = {}

--- Builds the recipe that runs every registered test and fails if any did.
--- `ephrun tests/lua/x_spec.lua only=PATTERN` runs the matching tests only;
--- `params` declares more parameters (as in `ephrun.recipe`), which tests read
--- from `spec.params`.
---@param name string
---@param params? table<string, ephrun.ParamSpec>
---@return ephrun.RecipeDef
function M.recipe(name, params)
  local ephrun = require "ephrun"
  local registered = tests
  tests = {}
  local all = { only = { default = "", doc = "run only tests whose name contains this" } }
  for k, v in pairs(params or {}) do all[k] = v end
  return ephrun.recipe {
    name = name,
    summary = "Lua spec: " .. name,
    params = all,
    run = function(p)
      M.params = p
      local failed, ran = {}, 0
      for _, t in ipairs(registered) do
        if p.only == "" or t.name:find(p.only, 1, true) then
          ran = ran + 1
          local t0 = ephrun.time.monotonic()
          local ok, err = xpcall(t.fn, debug.traceback)
          local dt = ephrun.time.monotonic() - t0
          if ok then
            io.stdout:write(("ok    %-60s %6.2fs\n"):format(t.name, dt))
          else
            failed[#failed + 1] = t.name
            io.stdout:write(("FAIL  %s\n      %s\n"):format(t.name, tostring(err):gsub("\n", "\n      ")))
          end
          io.stdout:flush()
        end
      end
      io.stdout:write(("%s: %d run, %d failed\n"):format(name, ran, #failed))
      if ran == 0 then error("no test matched") end
      if #failed > 0 then error(#failed .. " test(s) failed: " .. table.concat(failed, "; "), 0) end
    end,
  }
end

return M
