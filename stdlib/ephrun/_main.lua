--- Start-up of a run, called by the host: loads the recipe table, binds the
--- command-line parameters, prints --help. Not part of the recipe API.
local ephrun = require "ephrun"
local params = require "ephrun.params"
local core = require "ephrun._core"

local M = {}

local RECIPE_SHAPE = "a recipe file must end with `return ephrun.recipe{ name=..., run=function(p) ... end }`"

-- The first frame above the message handler and `error` that is Lua code.
local function where(level)
  for l = level, level + 8 do
    local info = debug.getinfo(l, "Sl")
    if not info then break end
    if info.what ~= "C" and info.currentline and info.currentline > 0 then
      return info.short_src .. ":" .. info.currentline .. ": "
    end
  end
  return ""
end

-- Load-time errors as one line a person can act on: error({}) has no text of
-- its own, so say what was raised and where.
local function message_of(e)
  if type(e) == "string" then return e end
  local mt = getmetatable(e)
  if mt and mt.__tostring then return tostring(e) end
  if type(e) == "table" and type(e.message) == "string" then return where(4) .. e.message end
  return ("%sthe recipe raised a %s value instead of a message (write error(\"what went wrong\"))")
    :format(where(4), type(e))
end

local function describe(v)
  if v == nil then return "returns nothing" end
  if type(v) == "table" then return "returns a table that is not an ephrun.recipe" end
  return "returns a " .. type(v)
end

--- Runs the recipe file's chunk. Returns the recipe, or nil, message, traceback.
---@param chunk function
---@param path string
local function load_recipe(chunk, path)
  local tb
  local ok, recipe = xpcall(chunk, function(e)
    local msg = message_of(e)
    tb = debug.traceback(msg, 2)
    return msg
  end)
  if not ok then return nil, recipe, tb end
  if not ephrun.is_recipe(recipe) then
    return nil, ("%s %s: %s"):format(path, describe(recipe), RECIPE_SHAPE)
  end
  return recipe
end

local function report_params(err, errs, invoked)
  if core.options().json then
    local json = require "ephrun.json"
    local list = json.array()
    for i, e in ipairs(errs) do list[i] = e end
    io.stdout:write(json.encode({ ok = false, error = err, errors = list }, { pretty = true }), "\n")
    io.stdout:flush()
  end
  for line in (err .. "\n"):gmatch("(.-)\n") do io.stderr:write("ephrun: ", line, "\n") end
  io.stderr:write("Run `ephrun ", invoked, " --help` for the parameters.\n")
end

--- The start-up task. Returns one of
---   "run", run_function, recipe_name, canonical_params
---   "exit", code                       (help printed, or a parameter error)
---   "error", message, traceback        (the file failed to load)
---@param chunk function the loaded recipe file
---@param path string the file's path (the chunk's name)
---@param invoked string the recipe as the user typed it, for hints
---@param args string[] name=value arguments
---@param help boolean
function M.prepare(chunk, path, invoked, args, help)
  local recipe, err, tb = load_recipe(chunk, path)
  if not recipe then return "error", err, tb end
  core.phase("params")
  if help then
    io.stdout:write(params.help(recipe, invoked))
    return "exit", 0
  end
  local p, perr, errs = params.bind(recipe, args)
  if not p then
    report_params(perr, errs, invoked)
    return "exit", 2
  end
  rawset(ephrun, "recipe_name", recipe.name)
  require("ephrun.cost")._set_recipe(recipe, path)
  -- What a detached run journals so that `ephrun finish` can load the recipe again.
  rawset(ephrun, "_recipe", { def = recipe, path = path, invoked = invoked, params = p })
  local is_command = path:find("stdlib/ephrun/cmd/", 1, true) ~= nil
  return "run", function()
    core.phase("run")
    if is_command then return recipe.run(p) end
    local outcome <close> = require("ephrun.notify").run_started(recipe.name) -- luacheck: no unused
    return recipe.run(p)
  end, recipe.name, params.canonical(p, recipe.params)
end

--- After a real run, once its cleanups ran: logs the run summary of every
--- measured command (figures, then warnings) and returns their figures as a
--- JSON array, which `--json` prints.
---@return string json
function M.finish_run()
  local measure = require "ephrun.measure"
  local log = require "ephrun.log"
  local lines = measure.run_summary()
  if #lines > 0 then log.info("run summary: %d measured command(s)", #measure.recorded()) end
  for _, l in ipairs(lines) do log[l.level]("  %s", l.text) end
  local json = require "ephrun.json"
  local list = json.array()
  for i, r in ipairs(measure.recorded()) do
    local warnings = json.array()
    for j, w in ipairs(r.warnings or {}) do warnings[j] = w end
    local copy = {}
    for k, v in pairs(r) do copy[k] = v end
    copy.warnings = warnings
    list[i] = copy
  end
  return json.encode(list)
end

--- For `ephrun --list`: the recipe's name and summary, without running it.
--- Returns name, summary or nil, message.
---@param chunk function
---@param path string
function M.describe(chunk, path)
  local recipe, err = load_recipe(chunk, path)
  if not recipe then return nil, err end
  return recipe.name, recipe.summary or ""
end

--- The bound parameters as sorted `name=value` lines; the journal keeps their hash.
---@param p table
---@param specs? table
---@return string
function M.canonical(p, specs)
  return params.canonical(p, specs)
end

return M
