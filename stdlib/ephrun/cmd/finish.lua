-- `ephrun finish RUN [name=value ...]`: runs the detached run's recipe `finish`
-- step (checks, a final snapshot, fetching results), then destroys the
-- instance, verifies that the provider says it is terminated, marks the run
-- `finished` in the journal and prints what the whole run cost.
local ephrun = require "ephrun"
local common = require "ephrun.cmd.common"
local detach = require "ephrun.detach"

-- What the run left for its instances' sake (AWS: their runs' security groups).
local function release(inst, rows)
  if not inst.cloud.impl.release then return end
  ephrun.effect {
    kind = "delete", what = "what the run's instances needed (" .. inst.cloud.name .. ")", where = inst.cloud.name,
    run = function()
      for _, row in ipairs(rows) do
        local raw = type(row.extra) == "table" and row.extra or {}
        inst.cloud.impl.release({ id = row.id, region = raw.region, tags = row.tags }, inst.cloud.opts)
      end
    end,
  }
end

-- Destroys, then asks the provider again: only `terminated` (or unknown to it) counts.
local function destroy_and_verify(inst, rows)
  inst:destroy()
  ephrun.effect {
    kind = "verify", what = ("%s instance %s is terminated"):format(inst.cloud.name, inst.id), where = inst.cloud.name,
    run = function()
      local ps = detach.provider_state(inst)
      if ps.state ~= "terminated" then
        error(("%s instance %s is %s after its destroy, not terminated; it may still bill. Remove it: %s"):format(
          inst.cloud.name, inst.id, ps.state, inst:destroy_hint()), 0)
      end
      io.stdout:write(("verified: %s instance %s is terminated\n"):format(inst.cloud.name, inst.id))
    end,
  }
  release(inst, rows)
end

return ephrun.recipe {
  name = "finish",
  summary = "Run a detached run's finish step, then destroy its instance, verify it is terminated, print the cost.",
  usage = "RUN [name=value ...] [--yes]",
  params = {
    words = { default = "", doc = "the run id, then the recipe's parameters to change or give again (secrets)" },
  },
  run = function(p)
    local id, _, extra = detach.words(p.words)
    if not id then error("ephrun finish RUN: give the run id (ephrun status lists detached runs)", 0) end
    local r, rec, inst, ps = detach.report(id, { lines = 5 })
    if not rec then
      error(("run %s is known here only by its provider's tags: finishing it needs its key and journal, on the "
        .. "machine that launched it (or copy its runs/%s directory here)"):format(id, id), 0)
    end
    if r.status == "finished" then
      io.stdout:write(("run %s is already finished\n"):format(id))
      return
    end
    local def, params = detach.recipe(rec.info or {}, extra)
    local run = detach.run_object(rec, inst, ps)
    if ps.state ~= "terminated" then
      if r.status == "running" and not ephrun.confirm(("run %s's job is still running (pid %s on %s instance %s); "
        .. "finish it anyway?"):format(id, tostring(r.job and r.job.pid), inst.cloud.name, inst.id)) then
        io.stdout:write("Nothing done; the job keeps running.\n")
        return
      end
      if type(def.finish) == "function" then
        ephrun.phase("finish")
        ephrun.log.info("run %s: running recipe %s's finish step", id, def.name)
        def.finish(params, run)
      end
      ephrun.phase("destroy")
      destroy_and_verify(inst, rec.rows)
    else
      io.stdout:write(("%s instance %s is already gone (%s): nothing to destroy\n"):format(inst.cloud.name, inst.id,
        r.why or r.reason or "terminated"))
      release(inst, rec.rows)
    end
    if rec.row and rec.row.key then ephrun.journal.finished(rec.row.key) end
    local found = detach.find(id)
    ephrun.effect { kind = "remove", what = "run " .. id .. "'s keys", where = "EPHRUN_HOME/runs",
      run = function() detach.forget(found) end }
    io.stdout:write(("run %s finished: %d instance%s, cost of the whole run %s\n"):format(id, #found.rows,
      #found.rows == 1 and "" or "s", common.money(detach.cost(found))))
  end,
}
