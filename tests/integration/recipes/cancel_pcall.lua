-- Drives test_cancellation.py: prints READY while it waits inside a pcall (or
-- an xpcall); a Ctrl-C must stop the run there. Every line after the pcall
-- writes a marker, so the test sees whether anything ran after it.
local ephrun = require "ephrun"
return ephrun.recipe {
  name = "cancel-pcall",
  params = {
    marker = { type = "path", required = true },
    mode = { default = "pcall", choices = { "pcall", "xpcall", "nested" } },
  },
  run = function(p)
    local function mark(what)
      local f = assert(io.open(p.marker, "a"))
      f:write(what, "\n")
      f:close()
    end
    ephrun.defer(function()
      ephrun.time.sleep(0.05) -- a cleanup's own waits work after the cancel
      mark("cleanup ran")
    end, "write the cleanup marker")
    local _ <close> = setmetatable({}, { __close = function()
      ephrun.time.sleep(0.05) -- and so do a closing scope's
      mark("scope closed")
    end })
    local function ready() io.stdout:write("READY\n"); io.stdout:flush() end
    local ok, err
    if p.mode == "pcall" then
      ok, err = pcall(function() ready(); ephrun.time.sleep(60) end)
    elseif p.mode == "xpcall" then
      ok, err = xpcall(function() ready(); ephrun.time.sleep(60) end, debug.traceback)
    else
      ok, err = pcall(pcall, function() ready(); ephrun.proc.run({ "sleep", "60.75" }) end)
    end
    mark("pcall returned " .. tostring(ok) .. ": " .. tostring(err))
    ephrun.proc.run({ "sh", "-c", "echo next native call ran >> " .. ephrun.shell_quote(p.marker) })
  end,
}
