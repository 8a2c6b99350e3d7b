-- `ephrun meta install [DIR]`: the LuaLS stubs of this ephrun (meta/ephrun/*.lua
-- and the annotated stdlib) into DIR/.ephrun/meta, and a .luarc.json in DIR
-- that points the editor at them, so recipes in a team's own repository get
-- completion (`ephrun.fs.`), parameter types and the provider contract.
local ephrun = require "ephrun"
local authoring = require "ephrun.authoring"
local json = require "ephrun.json"

local USAGE = "ephrun meta install [DIR]"
local LIBRARY = ".ephrun/meta"

local function fail(msg)
  error(msg, 0)
end

-- What goes into the library: name in ephrun/ -> shipped path. The stdlib's
-- host-only start-up module is left out; it is not an API.
local function stubs()
  local out = {}
  for _, dir in ipairs { "meta/ephrun", "stdlib/ephrun" } do
    for _, rel in ipairs(authoring.shipped_files(dir)) do
      local name = rel:match("[^/]+$")
      if name ~= "_main.lua" then
        if out[name] then fail(("meta: %s and %s would both be ephrun/%s"):format(out[name], rel, name)) end
        out[name] = rel
      end
    end
  end
  return out
end

-- DIR/.luarc.json with the library added: a new file, or the team's own with
-- its other settings kept.
local function luarc(path)
  local conf = { ["$schema"] = "https://raw.githubusercontent.com/LuaLS/vscode-lua/master/setting/schema.json" }
  local text = ephrun.fs.read(path)
  if text then
    local t, err = json.decode(text)
    if type(t) ~= "table" then
      fail(("meta: %s is not plain JSON (%s); add %q to its workspace.library by hand"):format(path,
        tostring(err or "not an object"), LIBRARY))
    end
    conf = t
  end
  local nested = type(conf.workspace) == "table"
  local lib = nested and conf.workspace.library or conf["workspace.library"] or {}
  local has = false
  for _, l in ipairs(lib) do has = has or l == LIBRARY end
  if not has then lib[#lib + 1] = LIBRARY end
  lib = json.array(lib)
  if nested then conf.workspace.library = lib else conf["workspace.library"] = lib end
  if type(conf.runtime) == "table" then
    conf.runtime.version = conf.runtime.version or "Lua 5.4"
  else
    conf["runtime.version"] = conf["runtime.version"] or "Lua 5.4"
  end
  return json.encode(conf, { pretty = true }) .. "\n", text ~= nil
end

local function install(dir)
  local st = ephrun.fs.stat(dir, { follow = true })
  if not st or st.type ~= "dir" then fail(("meta: %s is not a directory"):format(dir)) end
  local lib = dir .. "/" .. LIBRARY .. "/ephrun"
  assert(ephrun.fs.mkdir_p(lib))
  local n = 0
  for name, rel in pairs(stubs()) do
    assert(ephrun.fs.write(lib .. "/" .. name, authoring.shipped(rel)))
    n = n + 1
  end
  assert(ephrun.fs.write(dir .. "/" .. LIBRARY .. "/README", "Written by `ephrun meta install`: the LuaLS "
    .. "annotations of the ephrun that wrote them. Run it again after upgrading ephrun; do not edit.\n"))
  local text, existed = luarc(dir .. "/.luarc.json")
  assert(ephrun.fs.write(dir .. "/.luarc.json", text))
  if ephrun.dry_run() then return end
  io.stdout:write(("Wrote %d stubs to %s/%s and %s %s/.luarc.json; an editor with the Lua language server "
    .. "(LuaLS) now completes and type-checks recipes there.\n"):format(n, dir, LIBRARY,
    existed and "updated" or "wrote", dir))
end

return ephrun.recipe {
  name = "meta",
  summary = "Write the LuaLS stubs and a .luarc.json into a repository: ephrun meta install [DIR].",
  usage = "install [DIR]",
  params = {
    words = { default = "", doc = "install [DIR] (DIR: default the current directory)" },
  },
  run = function(p)
    local w = authoring.words(p.words)
    if w[1] ~= "install" or #w > 2 then fail("meta: usage: " .. USAGE) end
    install(w[2] or ".")
  end,
}
