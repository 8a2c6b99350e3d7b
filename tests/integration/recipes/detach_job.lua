-- A run that starts its job detached and ends: the job prints a line, waits
-- for a `gate` file in its working directory, then prints COMPLETE.
local ephrun = require "ephrun"
local q = ephrun.shell_quote

return ephrun.recipe {
  name = "detach-job",
  params = {
    provider = { default = "local" },
    plan = { default = "", doc = "the provider's plan (local needs none)" },
    region = { default = "", doc = "the provider's region (local needs none)" },
    ttl = { default = "10m", type = "duration" },
    note = { default = "plain", doc = "a non-secret parameter finish gets back" },
    token = { type = "secret", default = "@env:DETACH_TOKEN", doc = "a secret finish asks for again" },
  },
  done = "grep -q COMPLETE LOG",
  run = function(p)
    local box <close> = ephrun.provider(p.provider):launch { plan = p.plan ~= "" and p.plan or nil,
      region = p.region ~= "" and p.region or nil, ttl = p.ttl,
      detach = true }
    local sh <close> = box:ssh()
    local job = sh:run_detached("echo job-started; while [ ! -f gate ]; do sleep 0.1; done; echo COMPLETE; exit 0",
      { log = "job/job.log" })
    local run = box:detach(job)
    print("DETACHED " .. run .. " " .. box.id)
  end,
  finish = function(p, run)
    local r = run:ssh():run("cat " .. q(run.log), { stream = false })
    print(("FINISH-SAW %s note=%s token=%s done=%s"):format(r.stdout:find("COMPLETE", 1, true) and "COMPLETE"
      or "incomplete", p.note, p.token and #p.token or 0, tostring(run:done())))
  end,
}
