-- deploy-fast's flow (launch, ssh, build, destroy) on the AWS provider, with a
-- fault point for tests/integration/test_aws_faults.py.
--
-- At `fault_at` the recipe prints `FAULT-POINT <phase> <instance id>` when the
-- run is in that phase, so the test knows when to inject:
--   boot     the instance is created and journalled but still pending (the test
--            makes the stand-in's pending_seconds long); fault=fail: the launch
--            deadline (1s) runs out first
--   launch   after the instance is running, still in phase 'launch';
--            fault=fail: a local command exits 1
--   ssh      waiting for SSH (the test stops the stand-in starting sshds);
--            fault=fail: the SSH deadline (2s) runs out
--   build    the remote command prints the marker and sleeps; fault=fail: it exits 3
--   destroy  the instance is being terminated (the test makes shutting-down long
--            and waits for TerminateInstances); fault=fail is not a row
-- fault=hold blocks at the point until signalled. `region`, `image` and `ttl` go to the launch.
local ephrun = require "ephrun"

return ephrun.recipe {
  name = "aws-faults",
  params = {
    fault_at = { default = "none", choices = { "none", "boot", "launch", "ssh", "build", "destroy" } },
    fault = { default = "none", choices = { "none", "fail", "hold" } },
    region = { default = "eu-west-1" },
    image = { default = "", doc = "an AMI of that region (default: the provider's EPHRUN_AWS_IMAGE)" },
    keep = { default = false, doc = "launch with keep=true (the instance outlives the run)" },
    ttl = { type = "duration", default = "30m" },
  },
  run = function(p)
    local at, fail, hold = p.fault_at, p.fault == "fail", p.fault == "hold"
    local function say(...)
      io.stdout:write(table.concat({ ... }, " "), "\n")
      io.stdout:flush()
    end
    local cloud = ephrun.provider("aws")
    local spec = { plan = "t3.micro", region = p.region, ttl = p.ttl, image = p.image ~= "" and p.image or nil,
      keep = p.keep }
    if at == "boot" then
      if fail then spec.deadline = 1 end
      if hold then
        -- The main task waits in cloud:launch; this one says when the instance is journalled live.
        ephrun.spawn("fault-point", function()
          while true do
            local r = ephrun.journal.resources { live = true, run_id = ephrun.run_id() }
            if r[1] and r[1].status == "live" then
              say("FAULT-POINT boot", r[1].id)
              return
            end
            ephrun.time.sleep(0.05)
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

    if at == "ssh" then
      ephrun.phase("ssh")   -- before the marker: a signal right after it finds the run in 'ssh'
      say("FAULT-POINT ssh", box.id)
    end
    local sh <close> = box:ssh { deadline = (at == "ssh" and fail) and "2s" or "5m" }

    ephrun.phase("build")
    local build = "echo built"
    if at == "build" then
      if fail then build = "echo injected build failure >&2; exit 3" end
      if hold then build = "echo FAULT-POINT build " .. box.id .. "; exec sleep 3600" end
    end
    sh:run(build)
    sh:close()

    ephrun.phase("destroy")
    if at == "destroy" then say("FAULT-POINT destroy", box.id) end
    box:close()
    say("DONE", box.id)
  end,
}
