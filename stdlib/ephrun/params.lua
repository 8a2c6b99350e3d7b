--- Recipe parameters: typed `name=value` arguments with defaults and docs.
local time = require "ephrun.time"

local M = {}

local TYPES = { string = true, number = true, bool = true, duration = true, path = true, list = true }

local function infer(spec)
  if spec.type then return spec.type end
  local d = spec.default
  if type(d) == "number" then return "number" end
  if type(d) == "boolean" then return "bool" end
  if type(d) == "table" then return "list" end
  return "string"
end

--- Checks a recipe's `params` table; raises at `level` on a bad spec.
---@param specs table<string, ephrun.ParamSpec>
---@param level? integer
function M.validate_specs(specs, level)
  for name, spec in pairs(specs) do
    if type(name) ~= "string" or not name:match("^[%a_][%w_]*$") then
      error(("parameter name %q must be an identifier"):format(tostring(name)), level)
    end
    if type(spec) ~= "table" then error(("parameter '%s': spec must be a table"):format(name), level) end
    spec.type = infer(spec)
    if not TYPES[spec.type] then
      error(("parameter '%s': unknown type '%s' (string, number, bool, duration, path, list)")
        :format(name, tostring(spec.type)), level)
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
  if t == "string" then
    return raw
  elseif t == "path" then
    if raw == "" then return nil, "a path, not an empty string" end
    return expand_path(raw)
  elseif t == "number" then
    local n = tonumber(raw)
    if not n then return nil, "a number" end
    return n
  elseif t == "bool" then
    local l = raw:lower()
    if l == "true" or l == "yes" or l == "1" or l == "on" then return true end
    if l == "false" or l == "no" or l == "0" or l == "off" then return false end
    return nil, "true or false"
  elseif t == "duration" then
    local s = time.parse_duration(raw)
    if not s then return nil, "a duration such as 90s, 45m or 3h" end
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

local function default_value(spec)
  local d = spec.default
  if d == nil then return nil end
  if type(d) == "string" and spec.type ~= "string" then
    local v, why = M.convert(spec, d)
    if v == nil then error(("default %q is not %s"):format(d, why)) end
    return v
  end
  if type(d) == "table" then
    local copy = {}
    for i, x in ipairs(d) do copy[i] = x end
    return copy
  end
  return d
end

local function sorted_names(specs)
  local names = {}
  for k in pairs(specs) do names[#names + 1] = k end
  table.sort(names)
  return names
end

--- Binds `name=value` arguments to a recipe's params.
--- Returns the params table, or nil and a message naming the parameter and
--- what was expected.
---@param recipe ephrun.RecipeDef
---@param args string[]
---@return table|nil params, string? err
function M.bind(recipe, args)
  local specs = recipe.params or {}
  local out, seen = {}, {}
  for _, arg in ipairs(args) do
    local name, raw = arg:match("^([^=]+)=(.*)$")
    if not name then
      return nil, ("argument '%s' is not name=value (parameters of %s: %s)")
        :format(arg, recipe.name, table.concat(sorted_names(specs), ", "))
    end
    local spec = specs[name]
    if not spec then
      return nil, ("unknown parameter '%s' for recipe %s (known: %s)")
        :format(name, recipe.name, table.concat(sorted_names(specs), ", "))
    end
    local v, why = M.convert(spec, raw)
    if v == nil then
      return nil, ("parameter '%s' expects %s, got %q"):format(name, why, raw)
    end
    if spec.choices then
      local okc = false
      for _, c in ipairs(spec.choices) do if c == v then okc = true end end
      if not okc then
        return nil, ("parameter '%s' must be one of %s, got %q")
          :format(name, table.concat(spec.choices, ", "), raw)
      end
    end
    if seen[name] then return nil, ("parameter '%s' given twice"):format(name) end
    seen[name] = true
    out[name] = v
  end
  for _, name in ipairs(sorted_names(specs)) do
    local spec = specs[name]
    if out[name] == nil then
      local ok, v = pcall(default_value, spec)
      if not ok then return nil, ("parameter '%s': %s"):format(name, v) end
      if v == nil and spec.required then
        return nil, ("missing required parameter '%s' (%s)%s"):format(name, spec.type,
          spec.doc and (": " .. spec.doc) or "")
      end
      out[name] = v
    end
  end
  return out
end

local function show_default(spec)
  local d = spec.default
  if d == nil then return spec.required and "required" or "" end
  if type(d) == "table" then return "default: " .. table.concat(d, ",") end
  return "default: " .. tostring(d)
end

--- The `--help` text for a recipe.
---@param recipe ephrun.RecipeDef
---@return string
function M.help(recipe)
  local lines = { recipe.name .. (recipe.summary and (" — " .. recipe.summary) or ""), "",
    ("Usage: ephrun %s [name=value ...] [--dry-run] [--json] [--yes] [-v|-q]"):format(recipe.name), "" }
  local names = sorted_names(recipe.params or {})
  if #names == 0 then
    lines[#lines + 1] = "This recipe takes no parameters."
  else
    lines[#lines + 1] = "Parameters:"
    local w1, w3 = 4, 8
    for _, n in ipairs(names) do
      w1 = math.max(w1, #n)
      w3 = math.max(w3, #show_default(recipe.params[n]))
    end
    for _, n in ipairs(names) do
      local spec = recipe.params[n]
      local doc = spec.doc or ""
      if spec.choices then doc = doc .. (doc ~= "" and " " or "") .. "(" .. table.concat(spec.choices, " | ") .. ")" end
      lines[#lines + 1] = ("  %-" .. w1 .. "s  %-8s  %-" .. w3 .. "s  %s"):format(n, spec.type, show_default(spec), doc)
    end
  end
  return table.concat(lines, "\n") .. "\n"
end

return M
