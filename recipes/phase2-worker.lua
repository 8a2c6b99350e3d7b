--- phase2-worker: a temporary worker for a job that runs for days while the
--- launcher disconnects. A c7i.8xlarge spot instance (one-time, MaxPrice
--- `max_price`) with a 100 GB gp3 volume and the tags Name, Phase and
--- Lifecycle=temporary; the init commands run over SSH with the secret in
--- their environment (never in user-data); the job starts detached with its
--- log at ~/phase2/job.log, and the launcher ends printing how to check on it:
---   ephrun status RUN     ephrun attach RUN     ephrun finish RUN
--- `finish` checks the log for COMPLETE, takes a final snapshot if asked,
--- terminates, verifies `terminated` and prints what the whole run cost.
--- On a spot interruption `on_interrupt` copies the job's checkpoint out,
--- relaunches (on demand after `spot_retries` interruptions) and resumes.
--- Runs on the local provider too (provider=local, the default), offline.
local ephrun = require "ephrun"
local q = ephrun.shell_quote

local LOG = "phase2/job.log"

local function cloud_of(p, interruptions)
  if p.provider ~= "aws" then return ephrun.provider(p.provider) end
  local spot = (interruptions or 0) < p.spot_retries
  return ephrun.provider("aws", { spot = spot, max_price = spot and p.max_price or nil, volume_size = p.volume_gb })
end

-- Launches, runs the init commands (the secret in their environment), restores
-- a checkpoint if there is one, starts the job detached and detaches.
local function start(p, interruptions, checkpoint)
  local cloud = cloud_of(p, interruptions)
  local box <close> = cloud:launch { plan = p.plan, ttl = p.ttl, detach = true,
    tags = { Name = p.name, Phase = p.phase, Lifecycle = "temporary" } }
  local sh <close> = box:ssh()
  sh:run("mkdir -p phase2")
  if p.init ~= "" then
    ephrun.phase("init")
    sh:run(p.init, { env = p.token and { PHASE2_TOKEN = p.token } or nil })
  end
  if checkpoint then
    sh:mkdir_p(ephrun.fs.dirname(p.checkpoint))
    sh:put_string(p.checkpoint, checkpoint)
    ephrun.log.info("restored the checkpoint %s (%d bytes) on %s", p.checkpoint, #checkpoint, box.id)
  end
  ephrun.phase("job")
  local job = sh:run_detached(p.job, { log = LOG, env = { PHASE2_CHECKPOINT = p.checkpoint } })
  local run = box:detach(job, { ssh = sh })
  io.stdout:write(("phase2-worker run %s: %s instance %s runs `%s` (log ~/%s).\n"
    .. "  Check on it:   ephrun status %s\n  Follow it:     ephrun attach %s\n  End it:        ephrun finish %s\n")
    :format(run, cloud.name, box.id, p.job, LOG, run, run, run))
  io.stdout:flush()
  return run
end

return ephrun.recipe {
  name = "phase2-worker",
  summary = "A days-long job on a temporary spot worker: launch, init, start detached; status/attach/finish later.",
  params = {
    provider = { default = "local", choices = { "local", "aws" }, doc = "local | aws" },
    plan = { default = "c7i.8xlarge", doc = "instance type (a label on the local provider)" },
    max_price = { default = 1.00, doc = "spot MaxPrice in USD/hour (the worst case the plan shows)" },
    volume_gb = { default = 100, doc = "gp3 root volume in GB" },
    ttl = { default = "3d", type = "duration", doc = "the instance ends itself after this, finished or not" },
    name = { default = "phase2-worker", doc = "the Name tag" },
    phase = { default = "2", doc = "the Phase tag" },
    init = { default = "", doc = "shell commands run once before the job, e.g. clone and install; "
      .. "the secret is in $PHASE2_TOKEN" },
    token = { type = "secret", default = "@env:PHASE2_TOKEN", doc = "a secret for init (a git token...), "
      .. "passed over SSH, never in user-data" },
    job = { default = "python3 worker.py", doc = "the job, started detached; it should print COMPLETE when done "
      .. "and keep its checkpoint at $PHASE2_CHECKPOINT (replaced by a rename, never rewritten in place)" },
    checkpoint = { default = "phase2/checkpoint", doc = "the file the job leaves to resume from" },
    complete = { default = "COMPLETE", doc = "the log line that says the job is done" },
    snapshot = { default = false, doc = "finish takes a final snapshot of the volume first" },
    incomplete_ok = { default = false, doc = "finish even when the log has no COMPLETE line" },
    spot_retries = { default = 3, min = 0, doc = "interruptions after which the relaunch is on demand" },
  },
  done = "grep -q COMPLETE LOG",
  run = function(p)
    start(p, 0, nil)
  end,
  finish = function(p, run)
    local sh = run:ssh()
    local has = sh:run("grep -q -- " .. q(p.complete) .. " " .. q(run.log), { check = false, stream = false })
    if has.code ~= 0 and not p.incomplete_ok then
      error(("the job's log %s has no %s line: it is not done. See it with `ephrun attach %s`; finish anyway with "
        .. "`ephrun finish %s incomplete_ok=true`"):format(run.log, p.complete, run.id, run.id), 0)
    end
    if p.snapshot then
      local id = run.instance:snapshot { description = ("%s phase %s final (run %s)"):format(p.name, p.phase, run.id) }
      io.stdout:write(("final snapshot %s\n"):format(id))
    end
  end,
  on_interrupt = function(p, run)
    local saved
    if not run.gone then
      local sh = run:ssh()
      local ok, data = pcall(sh.get_string, sh, p.checkpoint)
      if ok then saved = data else ephrun.log.warn("no checkpoint to copy out (%s)", tostring(data)) end
    end
    ephrun.log.warn("phase2-worker run %s: interruption %d; relaunching %s%s", run.id, run.interruptions,
      run.interruptions >= p.spot_retries and "on demand" or "on spot",
      saved and (" from its checkpoint (" .. #saved .. " bytes)") or " from the start")
    start(p, run.interruptions, saved)
  end,
}
