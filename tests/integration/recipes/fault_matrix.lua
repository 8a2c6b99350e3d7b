-- deploy-fast's flow (launch, ssh, sync, build, fetch, destroy) on the local
-- provider, with a fault point for tests/integration/test_fault_matrix.py.
--
-- At `fault_at` the recipe prints `FAULT-POINT <phase> <instance id>` on stdout
-- when the run is in that phase, so the test knows when to inject:
--   launch  after the instance is running, still in phase 'launch'
--           fault=fail: a local command exits 1; otherwise it holds there
--   ssh     while the instance boots (boot_delay=60), i.e. while waiting for its
--           sshd; fault=fail: the launch deadline (1s) runs out first
--   sync    before the sync it waits for the file `go`: the test first freezes the
--           instance's SSH connection (SIGSTOP), so the sync stalls mid-way;
--           fault=fail: the remote working area is read-only, tar -x fails
--   build   the build prints the marker and sleeps; fault=fail: it exits 3
--   fetch   as sync (`go`, frozen connection); fault=fail: a missing artifact
-- `ttl` is the instance's lifetime (the watchdog ends it even after SIGKILL).
-- `ticker=true` prints a line every 50 ms all along, so a closed output pipe is
-- written to (and noticed) whatever the run is waiting on; `exit_file=F` makes a
-- task call os.exit(3) once the file F exists.
local ephrun = require "ephrun"

return ephrun.recipe {
  name = "fault-matrix",
  params = {
    src = { type = "path", required = true, doc = "local tree to sync" },
    out = { type = "path", required = true, doc = "local folder for fetched artifacts" },
    fault_at = { default = "none", choices = { "none", "launch", "ssh", "sync", "build", "fetch" } },
    fault = { default = "none", choices = { "none", "fail", "hold" },
      doc = "fail: a failing step at fault_at; hold: print the marker and block until signalled" },
    go = { default = "", doc = "sync/fetch hold: file the test creates once the connection is frozen" },
    ttl = { type = "duration", default = "10m" },
    ticker = { default = false, doc = "print a line every 50 ms (the closed-pipe fault)" },
    exit_file = { default = "", doc = "call os.exit(3) once this file exists (the os.exit fault)" },
  },
  run = function(p)
    local at, fail, hold = p.fault_at, p.fault == "fail", p.fault == "hold"
    local function say(...)
      io.stdout:write(table.concat({ ... }, " "), "\n")
      io.stdout:flush()
    end
    local function wait_go()
      if p.go == "" then error("fault_at=" .. at .. " fault=hold needs go=<file>") end
      while not ephrun.fs.exists(p.go) do ephrun.time.sleep(0.02) end
    end

    if p.ticker then
      ephrun.spawn("ticker", function()
        for i = 1, math.huge do
          say("tick", i)
          ephrun.time.sleep(0.05)
        end
      end)
    end
    if p.exit_file ~= "" then
      ephrun.spawn("exit", function()
        while not ephrun.fs.exists(p.exit_file) do ephrun.time.sleep(0.02) end
        os.exit(3)
      end)
    end

    local cloud = ephrun.provider("local")
    local spec = { ttl = p.ttl }
    if at == "ssh" then
      spec.boot_delay = 60
      if fail then spec.deadline = 1 end
      if hold then
        -- The main task is blocked in cloud:launch; this one tells the test once the
        -- instance is journalled as live (created, its destroy on the cleanup stack).
        ephrun.spawn("fault-point", function()
          while true do
            local r = ephrun.journal.resources { live = true, run_id = ephrun.run_id() }
            if r[1] and r[1].status == "live" then
              say("FAULT-POINT ssh", r[1].id)
              return
            end
            ephrun.time.sleep(0.02)
          end
        end)
      end
    end

    ephrun.phase("launch")
    local box <close> = cloud:launch(spec)
    say("INSTANCE", box.id)
    if at == "launch" then
      say("FAULT-POINT launch", box.id)
      if fail then ephrun.proc.run({ "sh", "-c", "echo injected launch failure >&2; exit 1" }) end
      if hold then ephrun.time.sleep(3600) end
    end

    local sh <close> = box:ssh()

    ephrun.phase("sync")
    if at == "sync" then
      if fail then sh:run("mkdir -p app && chmod 0555 app") end
      say("FAULT-POINT sync", box.id)
      if hold then wait_go() end
    end
    sh:sync(p.src, "app", { exclude = { "node_modules" } })

    ephrun.phase("build")
    local build = "mkdir -p dist && cp -r src dist/"
    if at == "build" then
      if fail then build = "echo injected build failure >&2; exit 3" end
      if hold then build = "echo FAULT-POINT build " .. box.id .. "; exec sleep 3600" end
    end
    sh:run("cd app && " .. build)

    ephrun.phase("fetch")
    local artifact = "dist"
    if at == "fetch" then
      if fail then artifact = "no-such-artifact" end
      say("FAULT-POINT fetch", box.id)
      if hold then wait_go() end
    end
    sh:fetch("app/" .. artifact, p.out .. "/" .. artifact)

    sh:close()
    ephrun.phase("destroy")
    box:close()
    say("DONE", box.id)
  end,
}
