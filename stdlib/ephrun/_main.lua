--- Start-up of a run, called by the host: loads the recipe table, binds the
--- command-line parameters, prints --help. Not part of the recipe API.
local ephrun = require "ephrun"
local params = require "ephrun.params"
local core = require "ephrun._core"

local M = {}

--- Returns (run_function, recipe_name) or (exit_code, nil).
---@param chunk function the loaded recipe file
---@param path string
---@param args string[] name=value arguments
---@param help boolean
function M.prepare(chunk, path, args, help)
  local recipe = chunk()
  if not ephrun.is_recipe(recipe) then
    error(path .. ": a recipe file must return ephrun.recipe{ name=..., run=function(p) ... end }", 0)
  end
  if help then
    io.stdout:write(params.help(recipe))
    return 0
  end
  local p, err = params.bind(recipe, args)
  if not p then
    io.stderr:write("ephrun: ", err, "\n", "Run `ephrun ", path, " --help` for the parameters.\n")
    return 2
  end
  rawset(ephrun, "recipe_name", recipe.name)
  return function()
    core.phase("run")
    return recipe.run(p)
  end, recipe.name, M.canonical(p)
end

--- The bound parameters as sorted `name=value` lines; the journal keeps their hash.
---@param p table
---@return string
function M.canonical(p)
  local names = {}
  for k in pairs(p) do names[#names + 1] = tostring(k) end
  table.sort(names)
  local lines = {}
  for _, k in ipairs(names) do
    local v = p[k]
    if type(v) == "table" then
      local parts = {}
      for i, x in ipairs(v) do parts[i] = tostring(x) end
      v = table.concat(parts, ",")
    end
    lines[#lines + 1] = k .. "=" .. tostring(v)
  end
  return table.concat(lines, "\n")
end

return M
