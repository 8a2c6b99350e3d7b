-- A recipe that fails in a named phase, with one cleanup that fails too.
local ephrun = require "ephrun"
return ephrun.recipe {
  name = "failing",
  params = { marker = { type = "path", required = true }, fail_cleanup = { default = false } },
  run = function(p)
    local function mark(what)
      local f = assert(io.open(p.marker, "a"))
      f:write(what, "\n")
      f:close()
    end
    ephrun.defer(function() mark("first cleanup") end, "first")
    ephrun.defer(function()
      if p.fail_cleanup then error("cannot remove the thing") end
      mark("second cleanup")
    end, "remove the thing", "thing-cli remove THING-1")
    ephrun.phase("build")
    local function inner() error("the build broke") end
    inner()
  end,
}
