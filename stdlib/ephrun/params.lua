--- Recipe parameters: typed `name=value` arguments with defaults and docs.
local time = require "ephrun.time"
local core = require "ephrun._core"

---@class ephrun.params
local M = {}

local TYPES = {
  string = true, number = true, bool = true, duration = true, path = true, list = true, secret = true,
}
local TYPE_NAMES = "string, number, bool, duration, path, list, secret"

-- Without a `max`, values stay where arithmetic on them is still exact: a
-- duration of 10 years at most (a shutdown timer in minutes, an expiry in
-- epoch milliseconds), a number no larger than 2^53.
local MAX_DURATION = 10 * 365 * 86400
local MAX_NUMBER = 2 ^ 53

local function infer(spec)
  if spec.type then return spec.type end
  local d = spec.default
  if type(d) == "number" then return "number" end
  if type(d) == "boolean" then return "bool" end
  if type(d) == "table" then return "list" end
  return "string"
end

local function ranged(spec)
  return spec.type == "number" or spec.type == "duration"
end

local function show(spec, v)
  if spec.type == "duration" and v == 0 then return "0s" end
  if spec.type == "duration" and type(v) == "number" then return time.format_duration(v) end
  return tostring(v)
end

-- Strict decimal: Lua's tonumber also takes "0x10", " 5 " and "1e999".
local function parse_number(raw)
  local s = raw:match("^[+-]?%d+%.?%d*$") or raw:match("^[+-]?%d*%.%d+$")
    or raw:match("^[+-]?%d+%.?%d*[eE][+-]?%d+$") or raw:match("^[+-]?%d*%.%d+[eE][+-]?%d+$")
  local n = s and tonumber(s)
  if n == nil or n ~= n or n == math.huge or n == -math.huge then return nil end
  return n
end

-- A bound given in the spec (a number, or for durations text like "5m").
local function bound(spec, name, key, level)
  local b = spec[key]
  if b == nil then return nil end
  if type(b) == "string" and spec.type == "duration" then b = time.parse_duration(b) end
  if type(b) ~= "number" or b ~= b then
    error(("parameter '%s': %s must be a %s"):format(name, key,
      spec.type == "duration" and "duration (a number of seconds or text like \"5m\")" or "number"), level)
  end
  return b
end

--- Whether `v` lies in the parameter's range; nil, why when not. Without a
--- `min`, a value must be more than 0 (0 too when the default is 0).
---@param spec ephrun.ParamSpec
---@param v number
---@return true|nil ok, string? why
function M.check_range(spec, v)
  local lo, hi = spec._min, spec._max
  if lo == nil and spec._zero_default and v < 0 then return nil, "at least " .. show(spec, 0) end
  if lo == nil and not spec._zero_default and v <= 0 then return nil, "more than " .. show(spec, 0) end
  if lo ~= nil and v < lo then return nil, "at least " .. show(spec, lo) end
  hi = hi or (spec.type == "duration" and MAX_DURATION or MAX_NUMBER)
  if v > hi then return nil, "at most " .. show(spec, hi) end
  return true
end

local function check_choices(name, spec, level)
  local c = spec.choices
  if c == nil then return end
  local okc = type(c) == "table" and #c > 0
  if okc then
    for _, x in ipairs(c) do
      if type(x) ~= "string" and type(x) ~= "number" then okc = false end
    end
  end
  if not okc then
    error(("parameter '%s': choices must be a list such as { \"a\", \"b\" }, got %s"):format(name,
      type(c) == "string" and ("the string %q"):format(c) or type(c)), level)
  end
end

local function is_source(v)
  return type(v) == "string" and (v:match("^@env:.") or v:match("^@file:.")) ~= nil
end

local function default_value(spec)
  local d = spec.default
  if d == nil then return nil end
  if d == false and ranged(spec) then return false end -- the recipe's "none" (ttl=false)
  if type(d) == "string" and spec.type ~= "string" and spec.type ~= "secret" then
    local v, why = M.convert(spec, d)
    if v == nil then error(("default %q is not %s"):format(d, why), 0) end
    return v
  end
  if type(d) == "table" then
    local copy = {}
    for i, x in ipairs(d) do copy[i] = x end
    return copy
  end
  return d
end

--- Checks a recipe's `params` table; raises at `level` on a bad spec.
---@param specs table<string, ephrun.ParamSpec>
---@param level? integer
function M.validate_specs(specs, level)
  if type(specs) ~= "table" then error("ephrun.recipe: 'params' must be a table", level) end
  for name, spec in pairs(specs) do
    if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") then
      error(("parameter name %q must be an identifier"):format(tostring(name)), level)
    end
    if type(spec) ~= "table" then error(("parameter '%s': spec must be a table"):format(name), level) end
    spec.type = infer(spec)
    if not TYPES[spec.type] then
      error(("parameter '%s': unknown type '%s' (%s)"):format(name, tostring(spec.type), TYPE_NAMES), level)
    end
    local inner = level and level + 1 -- the helpers below add a frame
    check_choices(name, spec, inner)
    if (spec.min ~= nil or spec.max ~= nil) and not ranged(spec) then
      error(("parameter '%s': min and max apply to number and duration parameters"):format(name), level)
    end
    spec._min, spec._max = bound(spec, name, "min", inner), bound(spec, name, "max", inner)
    if spec._min and spec._max and spec._min > spec._max then
      error(("parameter '%s': min is larger than max"):format(name), level)
    end
    if spec.type == "secret" and spec.default ~= nil and not is_source(spec.default) then
      error(("parameter '%s': a secret's default must be \"@env:VAR\" or \"@file:PATH\", never the value")
        :format(name), level)
    end
    local ok, v = pcall(default_value, spec)
    if not ok then error(("parameter '%s': %s"):format(name, v), level) end
    spec._zero_default = v == 0
    if type(v) == "number" and ranged(spec) then
      local in_range, why = M.check_range(spec, v)
      if not in_range then
        error(("parameter '%s': the default %s is outside its range (must be %s)"):format(name, show(spec, v), why),
          level)
      end
    end
  end
end

local function expand_path(v)
  if v:sub(1, 2) == "~/" or v == "~" then v = (os.getenv("HOME") or "") .. v:sub(2) end
  return v
end

--- Converts the text `raw` to the parameter's type. Returns value or nil, why.
---@param spec ephrun.ParamSpec
---@param raw string
---@return any value, string? why
function M.convert(spec, raw)
  local t = spec.type
  if (t == "number" or t == "duration") and spec.default == false then
    local l = raw:lower()
    if l == "false" or l == "none" or l == "off" then return false end
  end
  if t == "string" or t == "secret" then
    return raw
  elseif t == "path" then
    if raw == "" then return nil, "a path, not an empty string" end
    return expand_path(raw)
  elseif t == "number" then
    local n = parse_number(raw)
    if not n then return nil, "a number (decimal, finite)" end
    return n
  elseif t == "bool" then
    local l = raw:lower()
    if l == "true" or l == "yes" or l == "1" or l == "on" then return true end
    if l == "false" or l == "no" or l == "0" or l == "off" then return false end
    return nil, "true or false"
  elseif t == "duration" then
    local s = time.parse_duration(raw)
    if not s or s ~= s or s == math.huge then return nil, "a duration such as 90s, 45m or 3h" end
    return s
  elseif t == "list" then
    local out = {}
    if raw ~= "" then
      for item in (raw .. ","):gmatch("(.-),") do
        item = item:match("^%s*(.-)%s*$")
        if item ~= "" then out[#out + 1] = item end
      end
    end
    return out
  end
  return nil, "a value of type " .. tostring(t)
end

--- The value of a secret given as `@env:VAR`, `@file:PATH` or literally.
--- Returns value or nil, why (never quoting the value).
---@param raw string
---@return string|nil value, string? why
function M.resolve_secret(raw)
  local var = raw:match("^@env:(.+)$")
  if var then
    local v = os.getenv(var)
    if v == nil or v == "" then return nil, ("environment variable %s is not set"):format(var) end
    return v
  end
  local path = raw:match("^@file:(.+)$")
  if path then
    path = expand_path(path)
    local fs = require "ephrun.fs"
    local st, err = fs.stat(path, { follow = true })
    if not st then return nil, ("cannot read %s: %s"):format(path, err) end
    if st.type ~= "file" then return nil, ("%s is not a regular file"):format(path) end
    local data, rerr = fs.read(path)
    if not data then return nil, ("cannot read %s: %s"):format(path, rerr) end
    data = data:gsub("\r?\n$", "")
    if data == "" then return nil, ("%s is empty"):format(path) end
    return data
  end
  local scheme = raw:match("^(@%a+:)")
  if scheme then return nil, ("unknown source '%s' (use @env:VAR or @file:PATH)"):format(scheme) end
  return raw
end

local function sorted_names(specs)
  local names = {}
  for k in pairs(specs) do names[#names + 1] = k end
  table.sort(names)
  return names
end

local function in_choices(spec, v)
  for _, c in ipairs(spec.choices) do
    if c == v or tostring(c) == tostring(v) then return true end
  end
  return false
end

-- One `name=value` argument: the value, or nil and why (naming the parameter).
-- The redactor skips values this short (they would mask ordinary text), so a
-- secret this short could not be kept out of logs.
local MIN_SECRET = 4

local function bind_secret(name, raw)
  local v, why = M.resolve_secret(raw)
  if v == nil then return nil, ("parameter '%s': %s"):format(name, why) end
  if #v < MIN_SECRET then
    return nil, ("parameter '%s': a secret needs at least %d characters to be kept out of logs")
      :format(name, MIN_SECRET)
  end
  core.secret_add(name, v)
  if raw:sub(1, 1) ~= "@" then
    require("ephrun.log").warn("parameter '%s' was given on the command line, where other users can read it;"
      .. " prefer %s=@env:VAR or %s=@file:PATH", name, name, name)
  end
  return v
end

local function bind_one(spec, name, raw)
  if spec.type == "secret" then return bind_secret(name, raw) end
  local v, why = M.convert(spec, raw)
  if v == nil then return nil, ("parameter '%s' expects %s, got %q"):format(name, why, raw) end
  if type(v) == "number" and ranged(spec) then
    local ok, rwhy = M.check_range(spec, v)
    if not ok then return nil, ("parameter '%s' must be %s, got %q"):format(name, rwhy, raw) end
  end
  if spec.choices and not in_choices(spec, v) then
    return nil, ("parameter '%s' must be one of %s, got %q"):format(name, table.concat(spec.choices, ", "), raw)
  end
  return v
end

local function describe(name, spec)
  return ("'%s' (%s)%s"):format(name, spec.type, spec.doc and (": " .. spec.doc) or "")
end

-- A required secret nobody gave: prompt on a terminal, else say how to give it.
local function ask_secret(name, spec)
  if core.dry_run() then
    core.plan_add { kind = "secret",
      what = ("secret parameter %s is not given: a real run needs %s=@env:VAR or %s=@file:PATH, or asks on a terminal")
        :format(name, name, name) }
    return "<secret:" .. name .. ">"
  end
  if not (core.isatty(0) and core.isatty(2)) then
    return nil, ("missing required secret parameter %s: give %s=@env:VAR or %s=@file:PATH"
      .. " (no terminal to ask on)"):format(describe(name, spec), name, name)
  end
  local v, why = core.read_password(("%s%s: "):format(name, spec.doc and (" (" .. spec.doc .. ")") or ""), name)
  if v == nil or v == "" then
    return nil, ("missing required secret parameter '%s': %s"):format(name, why or "nothing was entered")
  end
  if #v < MIN_SECRET then
    return nil, ("parameter '%s': a secret needs at least %d characters to be kept out of logs"):format(name, MIN_SECRET)
  end
  core.secret_add(name, v)
  return v
end

local function seen_error(errs, name)
  local prefix = ("parameter '%s':"):format(name)
  for _, e in ipairs(errs) do
    if e:sub(1, #prefix) == prefix then return true end
  end
  return false
end

--- Binds `name=value` arguments to a recipe's params. Every problem is
--- reported, not only the first: returns the params table, or nil, the
--- messages joined by newlines, and the list of messages.
---@param recipe ephrun.RecipeDef
---@param args string[]
---@return table|nil params, string? err, string[]? errs
function M.bind(recipe, args)
  local specs = recipe.params or {}
  local out, seen, errs = {}, {}, {}
  for _, arg in ipairs(args) do
    local name, raw = arg:match("^([^=]+)=(.*)$")
    local spec = name and specs[name]
    if not name then
      errs[#errs + 1] = ("argument '%s' is not name=value (parameters of %s: %s)")
        :format(arg, recipe.name, table.concat(sorted_names(specs), ", "))
    elseif not spec then
      errs[#errs + 1] = ("unknown parameter '%s' for recipe %s (known: %s)")
        :format(name, recipe.name, table.concat(sorted_names(specs), ", "))
    elseif seen[name] then
      errs[#errs + 1] = ("parameter '%s' given twice"):format(name)
    else
      seen[name] = true
      local v, why = bind_one(spec, name, raw)
      if v == nil then errs[#errs + 1] = why else out[name] = v end
    end
  end
  local asks = {}
  for _, name in ipairs(sorted_names(specs)) do
    local spec = specs[name]
    if out[name] == nil and not seen[name] then
      local v = default_value(spec)
      if spec.type == "secret" and v ~= nil then
        local source, resolved, why = v, M.resolve_secret(v)
        v = nil
        if resolved == nil then
          require("ephrun.log").debug("parameter '%s' has no value: %s", name, why)
        else
          v, why = bind_secret(name, source)
          if v == nil then errs[#errs + 1] = why end
        end
      end
      if v == nil and spec.required and not (spec.type == "secret" and seen_error(errs, name)) then
        if spec.type == "secret" then
          asks[#asks + 1] = name
        else
          errs[#errs + 1] = "missing required parameter " .. describe(name, spec)
        end
      end
      out[name] = v
    end
  end
  -- Ask only once everything else is right, so a typo is not found after the prompt.
  if #errs == 0 then
    for _, name in ipairs(asks) do
      local v, why = ask_secret(name, specs[name])
      if v == nil then errs[#errs + 1] = why else out[name] = v end
    end
  else
    for _, name in ipairs(asks) do
      errs[#errs + 1] = ("missing required secret parameter %s: give %s=@env:VAR or %s=@file:PATH")
        :format(describe(name, specs[name]), name, name)
    end
  end
  if #errs > 0 then return nil, table.concat(errs, "\n"), errs end
  return out
end

--- The bound parameters as sorted `name=value` lines (secrets as
--- `<secret:NAME>`); the journal keeps their hash.
---@param p table
---@param specs? table<string, ephrun.ParamSpec>
---@return string
function M.canonical(p, specs)
  specs = specs or {}
  local lines = {}
  for _, k in ipairs(sorted_names(p)) do
    local v = p[k]
    if specs[k] and specs[k].type == "secret" then
      v = "<secret:" .. k .. ">"
    elseif type(v) == "table" then
      local parts = {}
      for i, x in ipairs(v) do parts[i] = tostring(x) end
      v = table.concat(parts, ",")
    end
    lines[#lines + 1] = k .. "=" .. tostring(v)
  end
  return table.concat(lines, "\n")
end

local function show_default(spec)
  local d = spec.default
  if d == nil then return spec.required and "required" or "" end
  if type(d) == "table" then return "default: " .. table.concat(d, ",") end
  if d == "" then return 'default: ""' end
  return "default: " .. tostring(d)
end

-- A longer default goes on a line of its own rather than widening the column.
local DEFAULT_COLUMN = 24

local function pad(s, w)
  return s .. (" "):rep(w - #s)
end

--- The `--help` text for a recipe.
---@param recipe ephrun.RecipeDef
---@param invoked? string how the user named the recipe (defaults to its name)
---@return string
function M.help(recipe, invoked)
  local lines = { recipe.name .. (recipe.summary and (" — " .. recipe.summary) or ""), "",
    ("Usage: ephrun %s %s"):format(invoked or recipe.name, recipe.usage or "[name=value ...] [--dry-run] [--json] [--yes] [-v|-q]"),
    "" }
  local names = sorted_names(recipe.params or {})
  if #names == 0 then
    lines[#lines + 1] = "This recipe takes no parameters."
  else
    lines[#lines + 1] = "Parameters:"
    local w1, w3 = 4, 8
    for _, n in ipairs(names) do
      w1 = math.max(w1, #n)
      local dw = #show_default(recipe.params[n])
      if dw <= DEFAULT_COLUMN then w3 = math.max(w3, dw) end
    end
    local secrets = false
    for _, n in ipairs(names) do
      local spec = recipe.params[n]
      local doc = spec.doc or ""
      if spec.choices then doc = doc .. (doc ~= "" and " " or "") .. "(" .. table.concat(spec.choices, " | ") .. ")" end
      secrets = secrets or spec.type == "secret"
      local d = show_default(spec)
      local long = #d > DEFAULT_COLUMN
      lines[#lines + 1] = ("  %s  %s  %s  %s"):format(pad(n, w1), pad(spec.type, 8), pad(long and "" or d, w3), doc)
        :gsub("%s+$", "")
      if long then lines[#lines + 1] = (" "):rep(w1 + 14) .. d end
    end
    if secrets then
      lines[#lines + 1] = ""
      lines[#lines + 1] = "Give a secret as name=@env:VAR or name=@file:PATH (or type it when asked on a terminal)"
      lines[#lines + 1] = "rather than name=value, which other users can read in the process list."
    end
  end
  return table.concat(lines, "\n") .. "\n"
end

return M
