--- The user's configuration file, `$XDG_CONFIG_HOME/ephrun/config` (default
--- `~/.config/ephrun/config`): `key = value` lines, `#` comments. It holds
--- defaults below the command line, the environment and the recipe:
---   warn_cost = 5       USD: warn and notify above this worst case
---   max_cost  = 20      USD: refuse a run whose worst case is above it
---   notify    = @env:SLACK_WEBHOOK   (or @file:PATH; never the URL itself)
--- A bad line is an error naming the file and line, raised when a run first
--- needs the file (a launch, a notification), in a --dry-run too.
local ephrun = require "ephrun"

---@class ephrun.config
local M = {}

-- How each key's value is read; nil, why when it is not acceptable.
local function usd(v)
  local n = tonumber((v:gsub("^%$", "")))
  if not n or n ~= n or n < 0 or n == math.huge then
    return nil, "expects an amount of USD such as 5 or 12.50"
  end
  return n
end

local KEYS = {
  warn_cost = usd,
  max_cost = usd,
  -- The webhook's URL is its credential: the file names where it is, never holds it.
  notify = function(v)
    if not v:match("^@env:[%w_]+$") and not v:match("^@file:.+$") then
      return nil, "must name where the webhook is kept, @env:VAR or @file:PATH, never the URL itself "
        .. "(a config file is not a secret store)"
    end
    return v
  end,
}

local cache

--- The file's path (it need not exist).
---@return string
function M.path()
  return require("ephrun.reaper").config_dir() .. "/config"
end

local function known_keys()
  local k = {}
  for name in pairs(KEYS) do k[#k + 1] = name end
  table.sort(k)
  return table.concat(k, ", ")
end

local function parse(path, text)
  local out = {}
  local n = 0
  for line in (text .. "\n"):gmatch("(.-)\r?\n") do
    n = n + 1
    local body = line:gsub("^%s+", ""):gsub("%s+#.*$", ""):gsub("%s+$", "")
    if body ~= "" and not body:match("^#") then
      local key, value = body:match("^([%w_]+)%s*=%s*(.-)$")
      if not key then
        error(("%s:%d: expected `key = value`, got '%s'"):format(path, n, body), 0)
      end
      local check = KEYS[key]
      if not check then
        error(("%s:%d: unknown key '%s' (known: %s)"):format(path, n, key, known_keys()), 0)
      end
      value = value:gsub('^"(.*)"$', "%1"):gsub("^'(.*)'$", "%1")
      local v, why = check(value)
      if v == nil then
        -- a notify value may be the webhook's URL itself: never repeat it
        error(("%s:%d: %s %s%s"):format(path, n, key, why, key == "notify" and "" or (", not '" .. value .. "'")), 0)
      end
      out[key] = { value = v, where = ("%s:%d"):format(path, n) }
    end
  end
  return out
end

--- The value of `key` in the file and where it was set (`FILE:LINE`), or nil
--- when the file or the key is absent. Raises on a bad file, naming its line.
---@param key "warn_cost"|"max_cost"|"notify"
---@return any value, string? where
function M.get(key)
  if not KEYS[key] then error("ephrun.config: unknown key " .. tostring(key), 2) end
  if not cache then
    local path = M.path()
    local st = ephrun.fs.stat(path, { follow = true })
    if not st then
      cache = {}
    elseif st.type ~= "file" then
      error(("%s is not a regular file: the configuration is a plain file of `key = value` lines"):format(path), 0)
    else
      local text, err = ephrun.fs.read(path)
      if not text then error(("cannot read %s: %s"):format(path, tostring(err)), 0) end
      cache = parse(path, text)
    end
  end
  local e = cache[key]
  if not e then return nil end
  return e.value, e.where
end

return M
