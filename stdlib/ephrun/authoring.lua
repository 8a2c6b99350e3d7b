--- Shared by `ephrun new`, `ephrun check` and `ephrun meta`: the command's
--- words, shipped files, and the provider conformance spec for a team's provider.
local ephrun = require "ephrun"
local core = require "ephrun._core"

local M = {}

--- The words the command line gave a command (host/main.cpp joins them with
--- the unit separator into the `words` parameter).
---@param s string
---@return string[]
function M.words(s)
  local out = {}
  for w in (s .. "\31"):gmatch("(.-)\31") do
    if w ~= "" then out[#out + 1] = w end
  end
  return out
end

--- The text of a file shipped in the binary ("meta/ephrun/fs.lua"); raises
--- when there is none, which is a build mistake.
---@param rel string
---@return string
function M.shipped(rel)
  local text = core.builtin_text(rel)
  if not text then error(("ephrun: %s is not in this binary (a build mistake)"):format(rel), 0) end
  return text
end

--- Paths of the shipped files directly in `dir`, e.g. "meta/ephrun".
---@param dir string
---@return string[]
function M.shipped_files(dir)
  local out = {}
  for _, name in ipairs(core.builtin_files(dir)) do out[#out + 1] = dir .. "/" .. name end
  return out
end

--- A template from stdlib/ephrun/templates/ with each `__KEY__` replaced by vars[KEY].
---@param name string
---@param vars table<string, string>
---@return string
function M.template(name, vars)
  local text = M.shipped("stdlib/ephrun/templates/" .. name)
  return (text:gsub("__([%u_]+)__", function(k) return vars[k] end))
end

--- Writes a new file, refusing to replace one that exists.
---@param path string
---@param text string
function M.create(path, text)
  if ephrun.fs.stat(path) then
    error(("%s already exists; remove it or pick another name"):format(path), 0)
  end
  local dir = path:match("^(.*)/[^/]+$")
  if dir then assert(ephrun.fs.mkdir_p(dir)) end
  assert(ephrun.fs.write(path, text))
end

--- The provider conformance spec (tests/lua/provider_conformance_spec.lua as
--- shipped) as a recipe that checks provider `name` by default. A provider
--- outside this repository gives its launch fixture as `M._conformance`.
---@param name string
---@return ephrun.RecipeSpec
function M.conformance(name)
  local rel = "tests/lua/provider_conformance_spec.lua"
  local chunk = assert(load(M.shipped(rel), "@" .. rel, "t"))
  local recipe = chunk()
  recipe.params.provider.default = name
  return recipe
end

return M
