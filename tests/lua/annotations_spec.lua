-- Every public Lua function an author can call has a LuaLS annotation, every
-- module is a typed field of `ephrun`, and the shipped Lua is luacheck-clean:
-- `ephrun tests/lua/annotations_spec.lua` (ctest sets EPHRUN_SOURCE_DIR).
local spec = require "ephrun.spec"
local ephrun = require "ephrun"
local it, eq = spec.it, spec.eq

local SRC = os.getenv("EPHRUN_SOURCE_DIR") or "."

local function read(rel)
  return assert(ephrun.fs.read(SRC .. "/" .. rel))
end

local function lua_files(dir)
  local out = {}
  for _, name in ipairs(assert(ephrun.fs.list(SRC .. "/" .. dir))) do
    if name:match("%.lua$") then out[#out + 1] = dir .. "/" .. name end
  end
  table.sort(out)
  return out
end

-- The modules `ephrun.X` resolves lazily, read from init.lua's `modules` table.
local function lazy_modules()
  local text = read("stdlib/ephrun/init.lua")
  local body = assert(text:match("local modules = (%b{})"), "init.lua has no `local modules = {...}`")
  local out = {}
  for field, mod in body:gmatch("([%w_]+) = \"([%w_.]+)\"") do out[field] = mod end
  return out
end

-- Where a module's annotations are: its ---@meta stub, else its Lua source.
local function annotation_file(mod)
  local rel = mod:gsub("%.", "/") .. ".lua"
  if ephrun.fs.stat(SRC .. "/meta/" .. rel) then return "meta/" .. rel end
  local path = (mod == "ephrun") and "stdlib/ephrun/init.lua" or ("stdlib/" .. rel)
  if ephrun.fs.stat(SRC .. "/" .. path) then return path end
end

-- Names declared as functions or fields in `text`, or assigned (`M.x = f`)
-- under a --- comment.
local function declared(text)
  local names = {}
  for name in text:gmatch("\nfunction [%w_.:]-[.:]([%w_]+)%(") do names[name] = true end
  for name in text:gmatch("%-%-%-@field ([%w_]+)") do names[name] = true end
  for name in text:gmatch("\n%-%-%-[^\n]*\n[%w_]+%.([%w_]+) = ") do names[name] = true end
  return names
end

it("every module ephrun.X resolves is a typed field of the ephrun class, and its class exists", function()
  local init = read("stdlib/ephrun/init.lua")
  local missing = {}
  for field, mod in pairs(lazy_modules()) do
    if not init:find("---@field " .. field .. " " .. mod .. "\n", 1, true) then
      missing[#missing + 1] = ("---@field %s %s"):format(field, mod)
    else
      local file = annotation_file(mod)
      local text = file and read(file) or ""
      if not text:find("---@class " .. mod .. "\n", 1, true) then
        missing[#missing + 1] = ("---@class %s (in %s)"):format(mod, file or "no file")
      end
    end
  end
  table.sort(missing)
  eq(missing, {}, "annotations missing from stdlib/ephrun/init.lua and the modules")
end)

it("every public function of ephrun and its modules, native or Lua, is annotated", function()
  local mods = { ephrun = "ephrun" }
  for field, mod in pairs(lazy_modules()) do mods[field] = mod end
  for _, mod in ipairs { "ephrun.errors", "ephrun.spec" } do mods[mod] = mod end
  local missing = {}
  for _, mod in pairs(mods) do
    local file = annotation_file(mod)
    local names = file and declared("\n" .. read(file)) or {}
    local m = require(mod)
    for name, v in pairs(m) do
      if type(v) == "function" and not name:match("^_") and not names[name] then
        missing[#missing + 1] = ("%s.%s (%s)"):format(mod, name, file or "no annotation file")
      end
    end
  end
  table.sort(missing)
  eq(missing, {}, "functions without an annotation")
end)

it("every public function defined in stdlib/ has a doc comment above it", function()
  local files = lua_files("stdlib/ephrun")
  for _, f in ipairs(lua_files("stdlib/ephrun/cmd")) do files[#files + 1] = f end
  local missing = {}
  for _, file in ipairs(files) do
    local prev, n = "", 0
    for line in (read(file) .. "\n"):gmatch("(.-)\n") do
      n = n + 1
      local name = line:match("^function ([%w_.:]+)%(")
      if name and not name:match("[.:]_") and not prev:match("^%-%-%-") then
        missing[#missing + 1] = ("%s:%d: %s"):format(file, n, name)
      end
      prev = line
    end
  end
  eq(missing, {}, "public functions without a --- comment")
end)

it("the shipped recipes, providers and stdlib are luacheck-clean with the repository's config", function()
  local r = assert(ephrun.proc.run({ "luacheck", "--formatter", "plain", "--codes", "stdlib", "providers", "recipes" },
    { cwd = SRC, check = false, stream = false }))
  eq(r.stdout, "", "luacheck warnings")
  eq(r.code, 0, r.stderr)
end)

return spec.recipe("annotations")
