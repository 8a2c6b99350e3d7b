-- `ephrun new recipe NAME [--provider P]` writes NAME.lua, a commented recipe
-- that passes `ephrun check` and runs as it is; `ephrun new provider NAME`
-- writes providers/NAME.lua, a provider skeleton, and NAME_conformance_spec.lua,
-- which runs ephrun's provider conformance spec against it.
local ephrun = require "ephrun"
local authoring = require "ephrun.authoring"

local USAGE = "ephrun new recipe NAME [--provider P] | ephrun new provider NAME"

local function fail(msg)
  error(msg, 0)
end

-- Default plans of the providers whose launch needs one.
local PLANS = { vultr = "vc2-1c-1gb" }

local function parse(words)
  local o = {}
  for _, w in ipairs(authoring.words(words)) do
    local k, v = w:match("^([%w_]+)=(.*)$")
    if k == "provider" or k == "dir" then
      o[k] = v
    elseif not o.kind then
      o.kind = w
    elseif not o.name then
      o.name = w
    else
      fail(("new: unexpected '%s'; usage: %s"):format(w, USAGE))
    end
  end
  if o.kind ~= "recipe" and o.kind ~= "provider" then
    fail(("new: say what to write: %s"):format(USAGE))
  end
  if not o.name then fail(("new: give the %s a name: %s"):format(o.kind, USAGE)) end
  o.name = o.name:gsub("%.lua$", "")
  if not o.name:match("^[%a][%w_%-]*$") then
    fail(("new: '%s' is not a name: use letters, digits, '-' and '_', starting with a letter"):format(o.name))
  end
  if o.kind == "provider" and o.name:find("-", 1, true) then
    fail(("new: provider names are Lua module names: use '_' instead of '-' in '%s'"):format(o.name))
  end
  if o.provider and o.kind ~= "recipe" then fail("new: --provider only applies to `ephrun new recipe`") end
  return o
end

local function in_dir(o, rel)
  return (o.dir and o.dir ~= "" and o.dir ~= ".") and (o.dir .. "/" .. rel) or rel
end

local function new_recipe(o)
  -- ./check.lua would run instead of `ephrun check` in that directory.
  for _, f in ipairs(require("ephrun._core").builtin_files("stdlib/ephrun/cmd")) do
    if f == o.name .. ".lua" and o.name ~= "common" then
      fail(("new: a recipe file named %s.lua would run instead of `ephrun %s` in its directory; pick another name")
        :format(o.name, o.name))
    end
  end
  local provider = o.provider or "local"
  if not provider:match("^[%w_%-]+$") then fail(("new: --provider %s is not a provider name"):format(provider)) end
  local path = in_dir(o, o.name .. ".lua")
  authoring.create(path, authoring.template("recipe.lua",
    { NAME = o.name, FILE = path, PROVIDER = provider, PLAN = PLANS[provider] or "" }))
  if ephrun.dry_run() then return end
  io.stdout:write(("Wrote %s. Next:\n  ephrun check %s\n  ephrun --dry-run %s\n  ephrun %s\n"):format(
    path, path, path, path))
end

local function new_provider(o)
  local module = in_dir(o, "providers/" .. o.name .. ".lua")
  local spec = in_dir(o, o.name .. "_conformance_spec.lua")
  if ephrun.fs.stat(spec) then fail(("%s already exists; remove it or pick another name"):format(spec)) end
  authoring.create(module, authoring.template("provider.lua", { NAME = o.name }))
  authoring.create(spec, authoring.template("provider_spec.lua", { NAME = o.name }))
  if ephrun.dry_run() then return end
  io.stdout:write(("Wrote %s and %s. It works as it is (it hands every call to the local provider);\n"
    .. "replace each function with your cloud's API and run the conformance spec after each change:\n"
    .. "  ephrun %s\nRecipes use it with provider=%s.\n"):format(module, spec, spec, o.name))
end

return ephrun.recipe {
  name = "new",
  summary = "Write a recipe or a provider to start from: ephrun new recipe NAME [--provider P] | provider NAME.",
  usage = "recipe NAME [--provider P] [dir=DIR] | provider NAME [dir=DIR]",
  params = {
    words = { default = "", doc = "recipe NAME | provider NAME, and provider=P, dir=DIR (where to write)" },
  },
  run = function(p)
    local o = parse(p.words)
    if o.kind == "recipe" then new_recipe(o) else new_provider(o) end
  end,
}
