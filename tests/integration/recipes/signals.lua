-- Drives the signal tests: prints READY once it is waiting, then waits in the
-- way `mode` says; its cleanups write markers the test checks.
local ephrun = require "ephrun"
return ephrun.recipe {
  name = "signals",
  params = {
    marker = { type = "path", required = true },
    mode = { default = "sleep", choices = { "sleep", "task", "busy", "slow-cleanup", "proc", "http",
      "print", "log", "exit", "exit-pcall", "exit-task" } },
    url = { default = "" },
  },
  run = function(p)
    local function mark(what)
      local f = assert(io.open(p.marker, "a"))
      f:write(what, "\n")
      f:close()
    end
    ephrun.defer(function() mark("outer cleanup") end, "write outer marker")
    ephrun.defer(function()
      if p.mode == "slow-cleanup" then ephrun.time.sleep(2) end
      mark("inner cleanup")
    end, "slow marker cleanup")
    local _ <close> = setmetatable({}, { __close = function() mark("scope closed") end })
    local function ready() io.stdout:write("READY\n"); io.stdout:flush() end
    if p.mode == "sleep" or p.mode == "slow-cleanup" then
      ready()
      ephrun.time.sleep(60)
    elseif p.mode == "task" then
      local t = ephrun.spawn("sleeper", function()
        local _ <close> = setmetatable({}, { __close = function() mark("task closed") end })
        ephrun.time.sleep(60)
      end)
      ready()
      t:wait()
    elseif p.mode == "busy" then
      ready()
      local x = 0
      while true do x = x + 1 end
    elseif p.mode == "proc" then
      local child = assert(ephrun.proc.spawn({ "sleep", "61.5" }))
      mark("child " .. child:pid())
      ready()
      ephrun.proc.run({ "sleep", "60.25" })
    elseif p.mode == "http" then
      ready()
      ephrun.http.request { url = p.url, timeout = 60 }
    elseif p.mode == "print" or p.mode == "log" then
      -- Output goes on after READY: the test closes the pipe it reads.
      ready()
      for i = 1, 6000 do
        if p.mode == "print" then print("tick " .. i) else ephrun.log.info("tick %d", i) end
        ephrun.time.sleep(0.01)
      end
    elseif p.mode == "exit" then
      os.exit(7)
    elseif p.mode == "exit-pcall" then
      pcall(os.exit, 5)
    elseif p.mode == "exit-task" then
      ephrun.spawn("exiter", function() os.exit(6) end)
      ephrun.time.sleep(60)
    end
    mark("not interrupted")
  end,
}
