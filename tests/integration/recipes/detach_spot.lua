-- A detached job that counts, saving its count as a checkpoint, until a `gate`
-- file appears; on a spot interruption, on_interrupt copies the checkpoint out
-- while the instance still answers, relaunches and resumes from it.
local ephrun = require "ephrun"
local q = ephrun.shell_quote

local JOB = [[mkdir -p work; n=$(cat work/checkpoint 2>/dev/null || echo 0); echo "job-started from $n"
while [ ! -f gate ]; do n=$((n + 1)); echo $n > work/checkpoint.tmp && mv work/checkpoint.tmp work/checkpoint
  sleep 0.1; done; echo "COMPLETE at $n"]]

local function start(p, box, resume)
  local sh <close> = box:ssh()
  if resume then
    sh:mkdir_p("work")
    sh:put_string("work/checkpoint", resume)
  end
  local job = sh:run_detached(JOB, { log = "job/job.log" })
  local run = box:detach(job, { ssh = sh })
  print(("DETACHED %s %s"):format(run, box.id))
  io.stdout:flush()
end

return ephrun.recipe {
  name = "detach-spot",
  params = {
    provider = { default = "aws" },
    plan = { default = "t3.micro" },
    ttl = { default = "30m", type = "duration" },
  },
  done = "grep -q COMPLETE LOG",
  run = function(p)
    start(p, ephrun.provider(p.provider):launch { plan = p.plan, ttl = p.ttl, detach = true })
  end,
  on_interrupt = function(p, run)
    local saved = not run.gone and run:ssh():get_string("work/checkpoint") or nil
    print(("CHECKPOINT %s interruption=%d"):format(tostring(saved and saved:match("%d+")), run.interruptions))
    start(p, ephrun.provider(p.provider):launch { plan = p.plan, ttl = p.ttl, detach = true }, saved)
  end,
  finish = function(_, run)
    print("FINISH " .. run:ssh():run("tail -n 1 " .. q(run.log), { stream = false }).stdout)
  end,
}
